"""``recsys-train``: train a two-tower model, evaluate it, publish it to the registry."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from model_registry import VersionError
from model_registry.registry import check_model_name
from trainer.data import check_movielens_dir


class _Parser(argparse.ArgumentParser):
    """Reports user errors as one line (no usage dump, no traceback), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from trainer.data import DATASETS

    p = _Parser(
        prog="recsys-train",
        description="Train a TFRS two-tower retrieval model, evaluate it against baselines "
                    "and publish a version (query tower, candidate embeddings, ScaNN index).")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--data-dir", type=Path, help="the ml-100k folder (movielens-100k only)")
    p.add_argument("--registry", type=Path, default=os.environ.get("RECSYS_REGISTRY"),
                   help="registry root (default $RECSYS_REGISTRY)")
    p.add_argument("--model", default=os.environ.get("RECSYS_MODEL"), help="model name (default $RECSYS_MODEL)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs; early stopping may stop sooner")
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--optimizer", choices=("adagrad", "adam"), default="adagrad")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--no-logq", action="store_true", help="disable the logQ sampling-bias correction")
    p.add_argument("--seed", type=int, default=42, help="split, initialization and synthetic-data seed")
    p.add_argument("--metrics-out", type=Path, help="also write the metrics report (JSON) here")
    p.add_argument("--synthetic-customers", type=int, default=2_000)
    p.add_argument("--synthetic-candidates", type=int, default=1_000)
    p.add_argument("--synthetic-interactions", type=int, default=60_000)
    p.add_argument("--synthetic-clusters", type=int, default=20)
    p.add_argument("--no-promote", action="store_true", help="publish without moving CURRENT")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.registry is None:
        parser.error("--registry (or $RECSYS_REGISTRY) is required")
    if not args.model:
        parser.error("--model (or $RECSYS_MODEL) is required")
    try:
        check_model_name(args.model)
    except ValueError as e:
        parser.error(str(e))
    for name in ("epochs", "embedding_dim", "batch_size", "synthetic_customers", "synthetic_candidates",
                 "synthetic_interactions", "synthetic_clusters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if args.dataset == "movielens-100k":
        if args.data_dir is None:
            parser.error("--data-dir is required for --dataset movielens-100k (the ml-100k folder)")
        try:
            check_movielens_dir(args.data_dir)
        except ValueError as e:
            parser.error(str(e))
    if args.metrics_out is not None and not args.metrics_out.parent.is_dir():
        parser.error(f"--metrics-out: directory {args.metrics_out.parent} does not exist")

    # TensorFlow (seconds to import) is imported only after the arguments are known to be usable.
    import json

    from trainer import evaluate
    from trainer.model import TrainConfig
    from trainer.pipeline import PipelineConfig, SyntheticConfig, run

    config = PipelineConfig(
        dataset=args.dataset, registry=args.registry, model=args.model, data_dir=args.data_dir,
        synthetic=SyntheticConfig(args.synthetic_customers, args.synthetic_candidates,
                                  args.synthetic_interactions, args.synthetic_clusters),
        train=TrainConfig(embedding_dim=args.embedding_dim, max_epochs=args.epochs, batch_size=args.batch_size,
                          optimizer=args.optimizer, learning_rate=args.learning_rate,
                          temperature=args.temperature, logq_correction=not args.no_logq, seed=args.seed,
                          verbose=not args.quiet),
        split_seed=args.seed, make_current=not args.no_promote)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    start = time.perf_counter()
    try:
        manifest, metrics = run(config, log=log)
    except (ValueError, VersionError, OSError) as e:
        print(f"recsys-train: error: {e}", file=sys.stderr)
        return 2
    if args.metrics_out is not None:
        args.metrics_out.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    evaluate.print_table(metrics)
    version_dir = Path(config.registry) / manifest.model / str(manifest.version)
    print(f"index={manifest.index.kind} candidates={manifest.num_candidates} dim={manifest.embedding_dim} "
          f"total_seconds={time.perf_counter() - start:.1f}")
    print(f"published model={manifest.model} version={manifest.version} dir={version_dir} "
          f"recall@10={manifest.index.recall_at_10:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
