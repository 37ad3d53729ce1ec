"""``recsys-train``: train a two-tower model, evaluate it, publish it to the registry.

Publishing does not make the version live: ``recsys-publish`` rolls it out.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model_registry import Manifest, Registry, VersionError
from model_registry.registry import STAGING_PREFIX
from settings.flags import ConfigError, add_flags, flag_name, from_args, overrides, replace_nested
from settings.output_files import check_outputs
from trainer import interrupts
from trainer.config import PRESETS, PipelineConfig, TrainConfig, recommended_config
from trainer.launcher import STOP_SIGNALS, TF_CONFIG, Cluster, launch

# How long a worker of a multi-worker run may take to end after a stop before its watchdog ends it
# (``interrupts.StopReport``): under the launcher's own grace (10 s), so a launcher still there sees it end.
STOP_GRACE_S = 3.0


class _Parser(argparse.ArgumentParser):
    """Reports user errors as one line (no usage dump, no traceback), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="recsys-train",
        description="Train a TFRS two-tower retrieval model, evaluate it against baselines and publish a "
                    "version (query tower, candidate embeddings, ScaNN index). The version is not made live: "
                    "roll it out with recsys-publish.")
    add_flags(parser, PipelineConfig)
    add_flags(parser.add_argument_group(
        "training (each defaults to the tower family's preset, see trainer/config.py)"),
        TrainConfig, defaults=False, presets=PRESETS)
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--metrics-out", type=Path, help="also write the metrics report (JSON) here")
    outputs.add_argument("--plot-out", type=Path,
                         help="PNG of hit rate vs k for the model and baselines (default: beside --metrics-out)")
    outputs.add_argument("--quiet", action="store_true", help="no per-epoch progress on stderr")
    workers = parser.add_argument_group(
        "multi-worker training (tf.distribute.MultiWorkerMirroredStrategy)",
        f"Each worker runs this same command with ${TF_CONFIG} naming the cluster and its index; on Kubernetes "
        f"each pod of the Job sets it. The workers share each global batch of --batch-size and score it against "
        f"the whole batch's candidates, so a step computes what one worker would; worker 0, the chief, evaluates "
        f"and publishes. "
        f"Needs --tune-budget-s 0 (tune on one worker, then pin the chosen flags).")
    workers.add_argument("--workers", type=int, default=None, metavar="N",
                         help=f"start N worker processes of this command on this machine, on free loopback ports "
                              f"(the local/dev launcher; exits 0 when every worker does). With ${TF_CONFIG} set, "
                              f"this process is one worker and N must match its cluster")
    return parser


def config_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> PipelineConfig:
    """The whole run's config, validated before any data is read; a bad value
    exits with one line naming its flag."""
    try:
        changes = overrides(TrainConfig, args)
        preset = recommended_config(changes.get("towers", {}).get("kind"))
        try:
            train_config = replace_nested(preset, changes)
        except ConfigError as e:
            raise ConfigError(f"train.{e.field}", e.message) from None
        return from_args(PipelineConfig, args, train=train_config, pinned=changes)
    except ConfigError as e:
        field = e.field.removeprefix("train.")
        name = flag_name(TrainConfig, field) if e.field.startswith("train.") else flag_name(PipelineConfig, field)
        parser.error(f"{name} {e.message}")


def cluster_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, config: PipelineConfig) -> Cluster:
    """This process's place in the run (``$TF_CONFIG``), checked against
    ``--workers`` and the config; a mismatch exits with one line."""
    try:
        cluster = Cluster.from_env()
    except ValueError as e:
        parser.error(str(e))
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be a positive integer")
    if args.workers is not None and cluster.workers > 1 and args.workers != cluster.workers:
        parser.error(f"--workers {args.workers} but ${TF_CONFIG} names {cluster.workers} workers")
    searched = config.tune_trials > 1 if config.tune_trials else config.tune_budget_s > 0
    if max(cluster.workers, args.workers or 1) > 1 and searched:
        # The search's budget is wall-clock time: workers would disagree on whether another trial fits, and one
        # would wait forever in a step the others skip. Its pruning reads the baselines' bars, which only the chief
        # computes, so a number of trials would not keep them in step either.
        parser.error("--tune-budget-s must be 0 with more than one worker, and --tune-trials at most 1 (a search's "
                     "trials would not stay in step across workers): tune on one worker, then pin the chosen flags")
    return cluster


def _os_error(error: OSError, config: PipelineConfig) -> str:
    """The one line an OSError of the run reports: one in the registry names the model's directory there (the
    OS names only a staging folder of the publish)."""
    registry = os.path.abspath(config.registry)
    failed = os.path.abspath(error.filename) if error.filename else ""
    if failed == registry or failed.startswith(registry + os.sep):
        return f"cannot publish into the registry directory {Path(config.registry) / config.model}: {error}"
    if error.errno == errno.ENOSPC and not failed:  # a write that ran out of space names no file
        return (f"{error}: the run writes the version into {Path(config.registry) / config.model} (and TensorFlow's "
                "temporary files into $TMPDIR); free space there and run again")
    return str(error)


def _check_registry(config: PipelineConfig) -> list[Path]:
    """Raises OSError unless a version could be published into the model's folder: creates it (publishing
    would) and a staging folder in it, then removes that. The registry's own prefix: were this process killed
    in between, the registry would sweep the folder as a publish's leftover. Returns the folders it created,
    deepest first, for ``_remove_if_empty``."""
    model_dir = Path(config.registry) / config.model
    created, path = [], model_dir
    while not path.exists():
        created.append(path)
        path = path.parent
    model_dir.mkdir(parents=True, exist_ok=True)
    os.rmdir(tempfile.mkdtemp(dir=model_dir, prefix=STAGING_PREFIX))
    return created


def _remove_if_empty(folders: list[Path]) -> None:
    """Removes the folders ``_check_registry`` created (deepest first) where the run left them empty: a refused
    run leaves no model behind for ``recsys-publish`` or a service to find with no version in it."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # a version (or another run's staging folder) is in it
            return


def _stop_on_signals(report: interrupts.StopReport, fresh: bool = True) -> dict[int, Any]:
    """Makes SIGINT and SIGTERM stop the run (``interrupts.stop``: at once, or at the next check while TensorFlow
    runs), the first one only: later ones end a single process at once and are ignored by a multi-worker worker
    (``report.again``). The stop arms ``report``'s watchdog. ``fresh`` forgets a stop recorded before (a new run);
    installed again later in a run, the handlers keep it. Returns the handlers it replaced."""
    def stop(signum, frame):
        for name in STOP_SIGNALS:
            signal.signal(name, report.again)
        report.arm(signum)
        # The run only unwinds from here (or from its next check): the warnings it would log on the way (Optuna's
        # of the trial cut off, with a traceback) would bury the one line that says what was published.
        logging.disable(logging.WARNING)
        interrupts.stop(signum)

    if fresh:
        interrupts.clear()
    interrupts.quiet_where_dropped()
    return {name: signal.signal(name, stop) for name in STOP_SIGNALS}


def _report(manifest: Manifest, metrics: dict[str, Any], config: PipelineConfig, metrics_out: Path | None,
            plot_out: Path | None, seconds: float) -> int:
    """Prints the chief's report and what it published, then writes the report files; returns the exit status."""
    from trainer.evaluation.plot import plot_hit_rates
    from trainer.evaluation.report import print_table

    print_table(metrics)
    version_dir = Path(config.registry) / manifest.model / str(manifest.version)
    print(f"index={manifest.index.kind} candidates={manifest.num_candidates} dim={manifest.embedding_dim} "
          f"total_seconds={seconds:.1f}")
    # Before CURRENT exists no query replica can start, and recsys-publish without --initial asks for them.
    try:
        first = Registry(config.registry, manifest.model).current_version() is None
    except VersionError:  # a broken CURRENT is still not a first rollout; the version is published either way
        first = False
    rollout = (f"recsys-publish --initial --version {manifest.version}, the registry's first rollout" if first
               else f"recsys-publish --version {manifest.version}")
    print(f"published model={manifest.model} version={manifest.version} dir={version_dir} "
          f"recall@10={manifest.index.recall_at_10:.2f} (not live: roll it out with {rollout})", flush=True)
    # The report files come last: a failure to write one cannot hide what was published, nor stop the other.
    status = 0
    for path, write in ((metrics_out, lambda: metrics_out.write_text(json.dumps(metrics, indent=2, sort_keys=True))),
                        (plot_out, lambda: print(f"plot: {plot_hit_rates(metrics, plot_out)}"))):
        try:
            if path is not None:
                write()
        except OSError as e:
            print(f"recsys-train: error: cannot write {path}: {e.strerror or e}; version {manifest.version} of "
                  f"{manifest.model} is published all the same", file=sys.stderr)
            status = 1
    return status


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(parser, args)
    cluster = cluster_from_args(parser, args, config)
    plot_out, created = args.plot_out, []
    if cluster.is_chief:  # the chief writes these; checked before any work, and before the launcher's workers
        if plot_out is None and args.metrics_out is not None and args.metrics_out.name:  # "": refused below
            plot_out = args.metrics_out.with_suffix(".png")
            if plot_out == args.metrics_out:  # the plot would overwrite the metrics
                parser.error(f"--metrics-out {args.metrics_out} is where the plot goes by default (the metrics' "
                             f"name with .png): name the metrics' file .json, or give --plot-out")
        try:
            plot_out = check_outputs(args.metrics_out, plot_out, "--metrics-out", "--plot-out")
        except ValueError as e:
            parser.error(str(e))
        try:
            created = _check_registry(config)
        except OSError as e:
            print(f"recsys-train: error: {_os_error(e, config)}", file=sys.stderr)
            return 1
    try:
        return _run(args, argv, config, cluster, plot_out)
    finally:
        _remove_if_empty(created)


def _run(args: argparse.Namespace, argv: list[str] | None, config: PipelineConfig, cluster: Cluster,
         plot_out: Path | None) -> int:
    """``main`` once its arguments are checked: the launcher of ``--workers N``, or one worker's training run."""
    if cluster.workers == 1 and (args.workers or 1) > 1:
        return launch(sys.argv[1:] if argv is None else list(argv), args.workers)

    published_before = set(Registry(config.registry, config.model).versions())

    def stopped() -> str:
        # Read from the registry: the stop may have come after the publish, before ``run`` returned.
        made = sorted(set(Registry(config.registry, config.model).versions()) - published_before)
        return "recsys-train: interrupted; " + (f"version {made[-1]} of {config.model} was published (not live)"
                                                if made else "nothing was published")

    report = interrupts.StopReport(stopped, STOP_GRACE_S if cluster.workers > 1 else None)
    manifest, previous, disabled = None, _stop_on_signals(report), logging.root.manager.disable
    try:
        # TensorFlow (seconds to import) loads only once the arguments are known to be usable; a stop while it
        # loads and starts is raised once it has (``interrupts.deferred``).
        with interrupts.deferred():
            import tensorflow as tf

            from trainer.distribute import strategy_for
            from trainer.pipeline import run

            strategy = strategy_for(cluster)  # before any other TensorFlow op
        # Again: a multi-worker strategy's preemption handling took SIGTERM, and ignores it.
        _stop_on_signals(report, fresh=False)
        prefix = f"[worker {cluster.index}] " if cluster.workers > 1 else ""
        log = (lambda msg: None) if args.quiet else (lambda msg: print(prefix + msg, file=sys.stderr, flush=True))
        start = time.perf_counter()
        try:
            manifest, metrics = run(config, log=log, strategy=strategy)
        except OSError as e:  # a failure at run time, not a usage error
            print(f"recsys-train: error: {_os_error(e, config)}", file=sys.stderr)
            return 1
        except (MemoryError, tf.errors.ResourceExhaustedError) as e:  # the data, a table or a batch past the memory
            print(f"recsys-train: error: out of memory ({type(e).__name__}): lower --embedding-dim or --batch-size, "
                  f"or train on less data", file=sys.stderr)
            return 1
        except (ValueError, VersionError, FloatingPointError) as e:
            print(f"recsys-train: error: {e}", file=sys.stderr)
            return 2
        interrupts.check()  # a stop Python dropped as ``run``'s TensorFlow objects were freed, after its last check
        if manifest is None:
            print(f"recsys-train: worker {cluster.index} of {cluster.workers}: trained in sync with the chief "
                  f"(worker 0), which evaluates and publishes", file=sys.stderr)
            return 0
        return _report(manifest, metrics, config, args.metrics_out, plot_out, time.perf_counter() - start)
    except KeyboardInterrupt as e:
        report.print()
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        for name, handler in previous.items():
            signal.signal(name, handler)
        # A later run in this process (a test's, a notebook's) starts unstopped, its warnings logged.
        interrupts.clear()
        logging.disable(disabled)


if __name__ == "__main__":
    sys.exit(main())
