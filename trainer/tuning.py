"""The default run's hyperparameter search: Optuna over the towers and their
training, on the validation split, within a time budget.

Each trial trains one configuration with early stopping on the validation
split and chooses its popularity prior there (``training.fit_early_stopped``);
its value is the validation ``lift`` over the best baseline. Optuna's TPE
sampler proposes the next configuration from the finished ones, and its median
pruner abandons a trial whose per-epoch lift (excluding seen) trails the
others' at the same epoch. The first trials are the presets of each tower family in the space
(the family asked for first), so a search that only has time for one trial
trains what an untuned run would. Flags given on the command line pin their
fields: the search varies only the others.

The winning trial's early-stopped model is not served: the caller refits its
configuration on all training data (``training.refit``), as an untuned run does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable

import optuna

from settings.flags import replace_nested
from trainer import interrupts
from trainer.config import TrainConfig
from trainer.data import Interactions
from trainer.evaluation.validation import EXCLUDING_SEEN_METRICS, Validation, lift
from trainer.towers.config import HISTORY_TOWERS
from trainer.training import EarlyStopped, fit_early_stopped

# The tower families searched; "features" joins when the data has customer
# features. The sequence tower (a GRU) is left to --tower sequence: on ml-100k it
# took the longest (105 s against the id tower's 60) and scored the lowest.
SEARCHED_TOWERS = ("id", "history")


# The searched fields (besides the tower family) and their ranges, written once:
# ("choices", values) or ("float", low, high) on a log scale.
SPACE: dict[str, tuple] = {
    "towers.embedding_dim": ("choices", (32, 64, 128)),
    "towers.l2": ("float", 1e-4, 0.1),
    "learning_rate": ("float", 0.02, 0.5),
    "temperature": ("float", 0.2, 1.0),
    "batch_size": ("choices", (256, 512, 1024)),
}
HISTORY_SPACE: dict[str, tuple] = {"towers.history_dropout": ("choices", (0.0, 0.1, 0.3, 0.5))}
# Trials in a row failing with one error that end the search (one that fails in 2 ms ran 271 trials in 0.5 s).
SAME_FAILURES_STOP = 3


def _space(kind: str) -> dict[str, tuple]:
    return {**SPACE, **(HISTORY_SPACE if kind in HISTORY_TOWERS else {})}


def _suggest(trial: optuna.Trial, field: str, spec: tuple) -> Any:
    if spec[0] == "choices":
        return trial.suggest_categorical(field, spec[1])
    return trial.suggest_float(field, spec[1], spec[2], log=True)


def _in_space(spec: tuple, value: Any) -> Any:
    """A preset's value as a point of the space: floats clipped into range (a
    preset's L2 of 0 becomes the lowest L2 searched); None where a choice lacks it."""
    if spec[0] == "choices":
        return value if value in spec[1] else None
    return min(max(float(value), spec[1]), spec[2])


@dataclasses.dataclass
class SearchResult:
    """The winning trial (its config and early-stopped run) and every trial's row."""

    config: TrainConfig
    best: EarlyStopped
    trials: list[dict[str, Any]]
    seconds: float

    def describe(self, budget_s: float, trials: int = 0) -> dict[str, Any]:
        """The search as recorded in the metrics and the manifest (a budget only where it bounded the search)."""
        return {"budget_s": None if trials else budget_s, "trials_asked": trials, "seconds": round(self.seconds, 1),
                "objective": "validation lift: the smallest ratio of hit rate @10 and @100 to its bar (excluding "
                "seen: the best baseline; over all candidates: popularity)",
                "best_trial": next(t["number"] for t in self.trials if t.get("best")), "trials": self.trials}


def _flat(changes: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for name, value in changes.items():
        out |= _flat(value, f"{prefix}{name}.") if isinstance(value, dict) else {prefix + name}
    return out


def _nested(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, value in values.items():
        *parents, leaf = path.split(".")
        node = out
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def _values(config: TrainConfig, fields: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for path in fields:
        value: Any = config
        for name in path.split("."):
            value = getattr(value, name)
        out[path] = value
    return out


def search(train_data: Interactions, validation: Validation, preset: Callable[[str], TrainConfig],
           start_tower: str, pinned: dict[str, Any], budget_s: float, has_customer_features: bool,
           log: Callable[[str], None] = lambda msg: None, trials: int = 0) -> SearchResult:
    """Searches configurations for ``budget_s`` seconds, or ``trials`` trials when above 0; returns the best.

    ``preset(kind)`` is a tower family's starting config (the family's preset
    with the command line's flags applied); ``pinned`` are those flags (nested,
    as ``settings.flags.overrides`` gives them), which the search leaves alone.
    The first trial (``start_tower``'s preset) always runs to its early stop;
    later ones start only within the budget and stop at its end (their rows say
    ``cut_by_budget``), unless ``trials`` sets their number instead: then each
    runs to its early stop, and the same data, flags and seed choose the same
    winner on any machine (trial 0 to 12 of two budgeted runs were alike; the
    slower run stopped four trials sooner, and another trial won). A trial that
    raises (out of memory, a diverged run) fails alone, its row saying why;
    ValueError if every trial fails.
    """
    t0 = time.monotonic()
    deadline = None if trials else t0 + budget_s
    fixed = _flat(pinned)
    towers = (start_tower,) if "towers.kind" in fixed else tuple(
        dict.fromkeys((start_tower,) + SEARCHED_TOWERS + (("features",) if has_customer_features else ())))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # This module's warnings are a failed trial's, with its traceback: the trial's own "failed (...)" line says it.
    logging.getLogger("optuna.study._optimize").setLevel(logging.ERROR)
    # Pruning starts at epoch 4 (a step of n_warmup_steps): on ml-100k most trials peak at epochs 5-10, and
    # judged at epoch 2 (the first setting tried) 12 of 16 trials were cut, the
    # slow starters among them.
    base = preset(start_tower)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=base.seed),
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=4))
    for kind in towers:  # each family's preset, as the search's starting points
        space = _space(kind)
        point = {f: _in_space(space[f], v) for f, v in _values(preset(kind), tuple(space)).items() if f not in fixed}
        study.enqueue_trial({"towers.kind": kind, **{f: v for f, v in point.items() if v is not None}})
    runs: dict[int, EarlyStopped] = {}
    rows: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        kind = trial.suggest_categorical("towers.kind", towers)
        params = {f: _suggest(trial, f, spec) for f, spec in _space(kind).items() if f not in fixed}
        config = replace_nested(preset(kind), _nested(params))
        started = time.monotonic()
        row: dict[str, Any] = {"number": trial.number, "params": {"towers.kind": kind, **params}}
        rows.append(row)
        log(f"trial {trial.number}: {row['params']}")

        def report(epoch: int, rates: dict[str, float]) -> None:
            # Per epoch there is no prior yet, and over all candidates a model without
            # one trails popularity: prune on the excluding-seen rates alone.
            interrupts.check()  # a stop that a library turned into its own error, or swallowed
            trial.report(lift(rates, validation.references, EXCLUDING_SEEN_METRICS), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            run = fit_early_stopped(train_data, validation, config, log, on_epoch=report,
                                    deadline=None if trial.number == 0 else deadline)
            if not math.isfinite(run.lift):  # it would never be beaten, and Optuna fails it: no winner kept
                raise FloatingPointError(f"validation lift is {run.lift}: the training diverged")
        except optuna.TrialPruned:
            row.update(state="pruned", seconds=round(time.monotonic() - started, 1))
            log(f"trial {trial.number}: pruned")
            raise
        except Exception as e:  # one configuration's failure (out of memory, divergence) is that trial's alone
            interrupts.check()  # unless it was the stop asked for, in a library's words
            row.update(state="failed", error=f"{type(e).__name__}: {e}", seconds=round(time.monotonic() - started, 1))
            log(f"trial {trial.number}: failed ({row['error']})")
            last = rows[-SAME_FAILURES_STOP:]
            if len(last) == SAME_FAILURES_STOP and all(r.get("error") == row["error"] for r in last):
                # A failure of every configuration (the data, the machine): more trials would fail alike.
                log(f"search: stopped after {SAME_FAILURES_STOP} trials in a row failed alike")
                trial.study.stop()
            raise
        row.update(state="complete", lift=round(run.lift, 4), best_epoch=run.best_epoch,
                   epochs_run=run.epochs_run, cut_by_budget=run.cut_by_deadline, prior_weight=run.prior.weight,
                   prior_grid=run.prior_grid,
                   seconds=round(time.monotonic() - started, 1),
                   validation={k: round(v, 4) for k, v in run.validation_rates.items()})
        best = max(runs.values(), key=lambda r: r.lift, default=None)
        if best is None or run.lift > best.lift:
            runs.clear()  # only the leader's model is kept in memory
            runs[trial.number] = run
        log(f"trial {trial.number}: lift {run.lift:.4f} (best epoch {run.best_epoch}, prior {run.prior.weight})")
        return run.lift

    study.optimize(objective, n_trials=1, catch=(Exception,))
    if trials > 1:
        study.optimize(objective, n_trials=trials - 1, catch=(Exception,))
    elif deadline is not None and deadline > time.monotonic():
        study.optimize(objective, timeout=deadline - time.monotonic(), catch=(Exception,))
    if not runs:
        first = next((row["error"] for row in rows if "error" in row), "no error recorded")
        if budget_s <= 0 and trials <= 1:
            raise ValueError(f"training the preset failed: {first}")
        raise ValueError(f"every trial of the hyperparameter search failed ({len(rows)} trials); the first with "
                         f"{first} (the log above holds each failure's traceback)")
    tried = {row["params"]["towers.kind"] for row in rows if row.get("state") == "complete"}
    untried = [kind for kind in towers if kind not in tried]
    if untried and (trials > 1 if trials else budget_s > 0):  # a search was asked for, not one trial
        # At 1M interactions the first preset took the whole budget: the search was one trial, and said nothing.
        finished = sum(row.get("state") == "complete" for row in rows)
        log(f"warning: the search finished {finished} trial(s); the {', '.join(untried)} family's preset "
            "never ran: raise --tune-budget-s (or give --tune-trials), or pin --tower")
    winner = study.best_trial.number
    for row in rows:
        row["best"] = row["number"] == winner
    params = dict(study.best_trial.params)
    kind = params.pop("towers.kind")
    config = replace_nested(preset(kind), _nested(params))
    log(f"search: {len(rows)} trials in {time.monotonic() - t0:.0f}s; best trial {winner}, "
        f"lift {study.best_value:.4f}: {study.best_trial.params}")
    return SearchResult(config, runs[winner], rows, time.monotonic() - t0)
