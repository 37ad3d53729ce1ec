"""``recsys-train``: train a two-tower model, evaluate it, publish it to the registry."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from model_registry import VersionError
from model_registry.registry import check_model_name
from trainer.data import check_movielens_dir
from trainer.datasets import check_options, options_from_args


class _Parser(argparse.ArgumentParser):
    """Reports user errors as one line (no usage dump, no traceback), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from trainer.datasets import DATASET_NAMES, add_dataset_arguments
    from trainer.split import SPLITS

    p = _Parser(
        prog="recsys-train",
        description="Train a TFRS two-tower retrieval model, evaluate it against baselines "
                    "and publish a version (query tower, candidate embeddings, ScaNN index).")
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--data-dir", type=Path, help="the ml-100k folder (movielens-100k only)")
    add_dataset_arguments(p)
    p.add_argument("--split", choices=SPLITS, default="random",
                   help="held-out split: random 80/20 (seeded), temporal (last 20%% by time), "
                        "leave-last-out (each customer's last interaction)")
    p.add_argument("--registry", type=Path, default=os.environ.get("RECSYS_REGISTRY"),
                   help="registry root (default $RECSYS_REGISTRY)")
    p.add_argument("--model", default=os.environ.get("RECSYS_MODEL"), help="model name (default $RECSYS_MODEL)")
    p.add_argument("--tower", choices=("id", "features", "history", "sequence"),
                   help="query/candidate tower family (default: the best config found for the data set: "
                        "movielens-100k uses the recommended tower, other data sets 'id')")
    # Training knobs default to the tower's recommended setting; a flag given overrides it.
    p.add_argument("--epochs", type=int, help="maximum epochs; early stopping may stop sooner")
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--optimizer", choices=("adagrad", "adam"))
    p.add_argument("--temperature", type=float, help="softmax temperature (< 1 with normalised embeddings)")
    p.add_argument("--l2", type=float, help="L2 penalty on embedding tables and dense kernels")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=None,
                   help="L2-normalise the embeddings of both towers")
    p.add_argument("--history-length", type=int, help="history/sequence towers: items in the query history")
    p.add_argument("--no-logq", action="store_true", help="disable the logQ sampling-bias correction")
    p.add_argument("--keep-accidental-hits", action="store_true",
                   help="do not remove in-batch negatives equal to the positive")
    p.add_argument("--time-features", action="store_true",
                   help="features tower: add the request time as an input (bucketised; serving passes the "
                        "current time, clipped to the training period)")
    p.add_argument("--no-refit", action="store_true",
                   help="keep the early-stopped model instead of retraining on all training data "
                        "for the chosen number of epochs (halves training time)")
    p.add_argument("--seed", type=int, default=42, help="split, initialization and synthetic-data seed")
    p.add_argument("--metrics-out", type=Path, help="also write the metrics report (JSON) here")
    p.add_argument("--plot-out", type=Path,
                   help="PNG of hit rate vs k for the model and baselines (default: beside --metrics-out)")
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
    for name in ("epochs", "embedding_dim", "batch_size", "history_length", "synthetic_customers",
                 "synthetic_candidates", "synthetic_interactions", "synthetic_clusters"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    for name in ("learning_rate", "temperature"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.l2 is not None and not args.l2 >= 0:
        parser.error("--l2 must be >= 0")
    if args.dataset == "movielens-100k":
        if args.data_dir is None:
            parser.error("--data-dir is required for --dataset movielens-100k (the ml-100k folder)")
        try:
            check_movielens_dir(args.data_dir)
        except ValueError as e:
            parser.error(str(e))
    dataset_options = options_from_args(args)
    try:
        check_options(args.dataset, dataset_options)
    except ValueError as e:
        parser.error(str(e))
    for flag in ("metrics_out", "plot_out"):
        path = getattr(args, flag)
        if path is not None and not path.parent.is_dir():
            parser.error(f"--{flag.replace('_', '-')}: directory {path.parent} does not exist")
    plot_out = args.plot_out or (args.metrics_out.with_suffix(".png") if args.metrics_out else None)

    # TensorFlow (seconds to import) is imported only after the arguments are known to be usable.
    import json

    from trainer import evaluate
    from trainer.model import recommended_config
    from trainer.plot import plot_hit_rates
    from trainer.pipeline import PipelineConfig, SyntheticConfig, run

    train_config = recommended_config(args.dataset, args.tower)
    overrides = {"max_epochs": args.epochs, "embedding_dim": args.embedding_dim, "batch_size": args.batch_size,
                 "learning_rate": args.learning_rate, "optimizer": args.optimizer,
                 "temperature": args.temperature, "l2": args.l2, "normalize": args.normalize,
                 "history_length": args.history_length}
    train_config = dataclasses.replace(
        train_config, **{k: v for k, v in overrides.items() if v is not None}, seed=args.seed,
        verbose=not args.quiet)
    if args.no_logq:
        train_config.logq_correction = False
    if args.keep_accidental_hits:
        train_config.remove_accidental_hits = False
    if args.time_features:
        if train_config.tower != "features":
            parser.error("--time-features needs --tower features")
        train_config.time_features = True
    if args.no_refit:
        train_config.refit = False
    dataset_options.synthetic = SyntheticConfig(args.synthetic_customers, args.synthetic_candidates,
                                                args.synthetic_interactions, args.synthetic_clusters)
    config = PipelineConfig(
        dataset=args.dataset, registry=args.registry, model=args.model, data=dataset_options,
        train=train_config, split_method=args.split, split_seed=args.seed, make_current=not args.no_promote)
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
    if plot_out is not None:
        plot_hit_rates(metrics, plot_out)
        print(f"plot: {plot_out}")
    version_dir = Path(config.registry) / manifest.model / str(manifest.version)
    print(f"index={manifest.index.kind} candidates={manifest.num_candidates} dim={manifest.embedding_dim} "
          f"total_seconds={time.perf_counter() - start:.1f}")
    print(f"published model={manifest.model} version={manifest.version} dir={version_dir} "
          f"recall@10={manifest.index.recall_at_10:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
