"""Training throughput (examples/s) of ``recsys-train`` per tower family.

    .venv/bin/python -m bench.training                 # ml-100k + synthetic 10M (about 15 min on 2 cores)
    .venv/bin/python -m bench.training --quick         # seconds (smoke test)

The tower families are read from ``recsys-train``'s own argument parser
(``trainer.cli.build_parser()``, the ``--tower`` choices), so a family added
there is benchmarked without touching this file; without a ``--tower`` flag the
trainer's default is the only one.

Two measurements, both through the real ``recsys-train`` entry point
(``trainer.cli.main``, in a child process per run):

* ``full`` (ml-100k): a complete ``recsys-train`` run (load, split, train with
  per-epoch validation, evaluate, publish) capped at ``--ml100k-epochs``;
  ``examples_per_second`` is the trainer's own figure from ``--metrics-out``
  (examples / seconds inside ``model.fit``, tracing of the first epoch included).
* ``steps`` (ml-100k and the synthetic 10M-interaction set): the same entry point,
  but every ``model.fit`` gets a callback that times ``--steps`` gradient steps
  after ``--warmup`` steps (tracing, shuffle-buffer fill) and then ends the run.
  Examples are counted inside ``train_step`` (the rows of each batch actually
  fed). A full epoch of the 10M set takes tens of minutes on 2 cores, so only
  this mode runs there; the epoch time is extrapolated and marked so.

With ``--workers 1,2`` a third measurement runs: ``full`` ``recsys-train``
runs on the synthetic ``--workers-sizes`` set, one per worker count, the
multi-worker ones through ``recsys-train --workers N`` (MultiWorkerMirroredStrategy
on loopback, the same global batch); ``examples_per_second`` is then the run's
global rate (the workers share each batch), the first epoch's tracing included.

    .venv/bin/python -m bench.training --workers 1,2 --no-ml100k --no-synthetic

JSON goes to stdout (and ``--out``); a table goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/training.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, log, machine_info, mib, peak_rss_bytes, run_child, table, write_json

ML100K_DIR = Path(os.environ.get("RECSYS_ML100K_DIR", REPO.parent / "shared" / "data" / "ml-100k"))
SYNTHETIC_10M = {"customers": 1_000_000, "candidates": 200_000, "interactions": 10_000_000}
# Its first epoch (~28 batches of 512) holds the quick warm-up and timed steps (13), and the baselines the trainer
# computes before fitting take seconds on it (on 5k x 2k x 50k, tens of seconds: most of the smoke test's time).
SYNTHETIC_QUICK = {"customers": 1_000, "candidates": 500, "interactions": 20_000}
SYNTHETIC_WORKERS = {"customers": 50_000, "candidates": 5_000, "interactions": 500_000}


def tower_choices() -> list[str | None]:
    """``recsys-train --tower`` choices as the CLI declares them; [None] if it has no such flag."""
    from trainer.cli import build_parser

    for action in build_parser()._actions:
        if "--tower" in action.option_strings:
            return list(action.choices) if action.choices else [action.default]
    return [None]


# ------------------------------------------------------------ child: steps mode


class _Done(BaseException):
    """Raised from the callback once the timed steps are done: ends the run. Not an Exception: the trainer's
    search fails a trial that raises one and goes on to the next (trainer.tuning), which would run out its
    whole budget here."""


def _steps_child(train_argv: list[str], steps: int, warmup: int) -> dict[str, Any]:
    start = time.perf_counter()
    import settings.tf_env  # noqa: F401  (legacy Keras, as the trainer)
    import tensorflow as tf

    from trainer import cli

    Model = tf.keras.Model
    real_fit = Model.fit
    state: dict[str, Any] = {"fit_calls": 0, "marks": []}
    import_seconds = time.perf_counter() - start

    class StepTimer(tf.keras.callbacks.Callback):
        def __init__(self, counter: tf.Variable):
            super().__init__()
            self.counter = counter

        def on_train_batch_end(self, batch, logs=None):
            step = batch + 1
            if step == 1:
                state["first_step_at"] = time.perf_counter() - start
            if step in (warmup, warmup + steps):
                state["marks"].append((step, time.perf_counter(), int(self.counter.numpy())))
            if step == warmup + steps:
                raise _Done()

        def on_train_end(self, logs=None):  # epoch shorter than warmup + steps
            state["marks"].append(("end", time.perf_counter(), int(self.counter.numpy())))
            state["steps_in_epoch"] = True

    def fit(self, *args, **kwargs):
        state["fit_calls"] += 1
        if state["fit_calls"] > 1:  # the first epoch was shorter than the steps asked for
            raise _Done()
        counter = tf.Variable(0, dtype=tf.int64, trainable=False)
        inner = self.train_step

        def counted_step(data):
            flat = [t for t in tf.nest.flatten(data) if isinstance(t, (tf.Tensor, tf.RaggedTensor))]
            rows = flat[0].nrows() if isinstance(flat[0], tf.RaggedTensor) else tf.shape(flat[0])[0]
            counter.assign_add(tf.cast(rows, tf.int64))
            return inner(data)

        self.train_step = counted_step
        self.train_function = None
        kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [StepTimer(counter)]
        return real_fit(self, *args, **kwargs)

    Model.fit = fit
    error = None
    try:
        rc = cli.main(train_argv)
        error = f"recsys-train exited {rc} before the timed steps ended"
    except _Done:
        pass
    except SystemExit as e:
        error = f"recsys-train exited {e.code}"
    out: dict[str, Any] = {"import_seconds": round(import_seconds, 2), "peak_rss_mib": mib(peak_rss_bytes()),
                           "time_to_first_step_seconds": round(state.get("first_step_at", float("nan")), 2)}
    marks = state["marks"]
    if len(marks) >= 2:  # warm-up mark -> end of the timed steps (or of a shorter epoch)
        (s0, t0, n0), (s1, t1, n1) = marks[0], marks[-1]
        out.update(timed_examples=n1 - n0, timed_seconds=round(t1 - t0, 3),
                   examples_per_second=round((n1 - n0) / max(t1 - t0, 1e-9), 1),
                   batch_size=round(n0 / s0) if isinstance(s0, int) and s0 else None,
                   warmup_steps=s0, timed_steps=(s1 - s0) if isinstance(s1, int) else "to the end of epoch 1")
        error = None
    elif error is None:
        error = "the first epoch was shorter than the warm-up steps"
    if error:
        out["error"] = error
    return out


# ------------------------------------------------------------ parent


def _dataset_args(name: str, sizes: dict[str, int] | None) -> list[str]:
    if name == "movielens-100k":
        return ["--dataset", "movielens-100k", "--data-dir", str(ML100K_DIR)]
    return ["--dataset", "synthetic", "--synthetic-customers", str(sizes["customers"]),
            "--synthetic-candidates", str(sizes["candidates"]),
            "--synthetic-interactions", str(sizes["interactions"])]


def _tower_args(tower: str | None) -> list[str]:
    return ["--tower", tower] if tower else []


def run_full(tower: str | None, dataset_args: list[str], epochs: int | None, work: Path,
             extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One complete ``recsys-train`` run (with ``extra`` flags); the trainer's own examples/s."""
    import subprocess

    name = tower or "default"
    metrics = work / f"metrics-{name}.json"
    metrics.unlink(missing_ok=True)
    cmd = [str(Path(sys.executable).parent / "recsys-train"), *dataset_args, *_tower_args(tower),
           "--registry", str(work / "registry"), "--model", f"bench-{name}", "--metrics-out", str(metrics),
           "--tune-budget-s", "0", "--quiet", *extra] + (["--epochs", str(epochs)] if epochs else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not metrics.is_file():
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}",
                "wall_seconds": round(wall, 1)}
    m = json.loads(metrics.read_text())
    return {"examples_per_second": m.get("examples_per_second"), "train_seconds": m.get("train_seconds"),
            "epochs_run": m.get("epochs_run"), "num_train": (m.get("split") or {}).get("num_train"),
            "wall_seconds": round(wall, 1), "hit_rate_excluding_seen@100": m.get("hit_rate_excluding_seen@100"),
            "hit_rate_excluding_seen@10": m.get("hit_rate_excluding_seen@10"), "workers": m.get("workers", 1),
            "command": " ".join(["recsys-train", *cmd[1:]])}


def run_steps(tower: str | None, dataset_args: list[str], steps: int, warmup: int, work: Path) -> dict[str, Any]:
    name = tower or "default"
    train_argv = [*dataset_args, *_tower_args(tower), "--registry", str(work / "registry"),
                  "--model", f"bench-steps-{name}", "--quiet"]
    t0 = time.perf_counter()
    try:
        out = run_child("bench.training", ["--child", "steps", "--steps", str(steps), "--warmup", str(warmup),
                                           "--train-args", json.dumps(train_argv)])
    except RuntimeError as e:
        tail = [l for l in getattr(e, "stderr", "").splitlines() if re.match(r"^[\w.]+(Error|Exception)\b", l)]
        out = {"error": str(e).splitlines()[0][:300] + (f"; {tail[-1][:200]}" if tail else "")}
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="first tower only, tiny synthetic set only, 10 steps (smoke test)")
    p.add_argument("--towers", help="comma-separated subset of recsys-train --tower choices (default: all)")
    p.add_argument("--steps", type=int, default=300, help="timed gradient steps (steps mode)")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (tracing, shuffle buffer)")
    p.add_argument("--ml100k-epochs", type=int, default=3, help="epoch cap of the full ml-100k runs")
    p.add_argument("--no-ml100k", action="store_true")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--workers", help="comma-separated worker counts (e.g. 1,2): full runs on the --workers-sizes "
                                     "synthetic set, each through recsys-train --workers N (first tower only)")
    p.add_argument("--workers-sizes", default="{customers},{candidates},{interactions}".format(**SYNTHETIC_WORKERS),
                   help="customers,candidates,interactions of the --workers runs' synthetic set")
    p.add_argument("--workers-epochs", type=int, default=2, help="epochs of each --workers run (no refit)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--train-args", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child == "steps":
        print(json.dumps(_steps_child(json.loads(args.train_args), args.steps, args.warmup)))
        return 0
    towers = tower_choices()
    if args.towers:
        wanted = args.towers.split(",")
        unknown = [t for t in wanted if t not in towers]
        if unknown:
            raise SystemExit(f"unknown towers {unknown}; recsys-train offers {towers}")
        towers = wanted
    synth = SYNTHETIC_10M
    if args.quick:
        towers = towers[:1]
        args.steps, args.warmup = 10, 3
        synth = SYNTHETIC_QUICK
        args.no_ml100k = True  # one child process (TensorFlow's import alone is ~10 s here)
    have_ml = (ML100K_DIR / "u.data").is_file() and not args.no_ml100k
    result: dict[str, Any] = {
        "benchmark": "training",
        "command": " ".join([Path(sys.executable).name, "-m", "bench.training", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "towers": towers,
        "params": {"steps": args.steps, "warmup": args.warmup, "ml100k_epochs": args.ml100k_epochs,
                   "workers": args.workers, "workers_sizes": args.workers_sizes if args.workers else None,
                   "workers_epochs": args.workers_epochs if args.workers else None,
                   "quick": args.quick},
        "runs": [],
    }
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        for tower in towers:
            if have_ml:
                if not args.quick:
                    log(f"ml-100k tower={tower}: full recsys-train run (<= {args.ml100k_epochs} epochs)")
                    r = run_full(tower, _dataset_args("movielens-100k", None), args.ml100k_epochs, work)
                    result["runs"].append({"dataset": "movielens-100k", "tower": tower, "mode": "full", **r})
                log(f"ml-100k tower={tower}: {args.steps} timed steps")
                r = run_steps(tower, _dataset_args("movielens-100k", None), args.steps, args.warmup, work)
                result["runs"].append({"dataset": "movielens-100k", "tower": tower, "mode": "steps", **r})
            if not args.no_synthetic:
                label = "synthetic-{customers}x{candidates}x{interactions}".format(**synth)
                log(f"{label} tower={tower}: {args.steps} timed steps")
                r = run_steps(tower, _dataset_args("synthetic", synth), args.steps, args.warmup, work)
                fit_examples = int(synth["interactions"] * 0.8 * 0.9)  # 80/20 split, 10% validation
                if r.get("examples_per_second"):
                    r["extrapolated_epoch_seconds"] = round(fit_examples / r["examples_per_second"], 0)
                result["runs"].append({"dataset": label, "tower": tower, "mode": "steps", **r,
                                       "epoch_examples": fit_examples})
        if args.workers:
            sizes = dict(zip(("customers", "candidates", "interactions"), map(int, args.workers_sizes.split(","))))
            label = "synthetic-{customers}x{candidates}x{interactions}".format(**sizes)
            for n in map(int, args.workers.split(",")):
                log(f"{label} tower={towers[0]}: full recsys-train run, {n} worker(s), {args.workers_epochs} epochs")
                r = run_full(towers[0], _dataset_args("synthetic", sizes), args.workers_epochs, work,
                             ("--workers", str(n), "--no-refit"))
                result["runs"].append({"dataset": label, "tower": towers[0], "mode": "full", **r})
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [[r["dataset"], r["tower"], r["mode"], r.get("examples_per_second"), r.get("batch_size"),
             r.get("time_to_first_step_seconds"), r.get("extrapolated_epoch_seconds"), r.get("wall_seconds"),
             r.get("workers", 1), r.get("error", "")] for r in result["runs"]]
    print(table(rows, ["dataset", "tower", "mode", "examples/s", "batch", "1st step s", "epoch s (extrap.)",
                       "wall s", "workers", "error"]), file=sys.stderr)
    print(write_json(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
