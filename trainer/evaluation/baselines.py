"""Baselines every model is compared with, on the same split: popularity,
item-item cosine, EASE and iALS.

EASE (Steck, 2019: a closed-form item-item model) and iALS (the ``implicit``
library) are the strong ones: a two-tower model that does not beat them has
not earned its serving stack. Each has settings that matter (EASE's L2, iALS's
factors, regularisation and confidence weight); they are chosen on the run's
validation split by ``lift`` over popularity excluding seen (the metrics they
are compared on: over all candidates, the popularity prior of a larger L2
would flatter EASE's and cost it the personal part), then the chosen setting is fit on
all training data and evaluated on the test split like the model, so neither
side sees the test split while choosing. The chosen settings are in the report.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from typing import Any, Callable

import numpy as np
import scipy.linalg
import scipy.sparse
import threadpoolctl

from model_registry.ids import index_of
from trainer.data import Interactions
from trainer.evaluation.metrics import DEFAULT_KS, EvalSet, ScoreFn, gather_seen, hit_rates, popularity_scores
from trainer.evaluation.validation import EXCLUDING_SEEN_METRICS, TARGET_KS, Validation, lift

# Item-item cosine and EASE hold N x N float32 matrices (4 N^2 bytes, a few of
# them) and EASE factorises one per L2 (N^3); above this many candidates they are
# skipped and the report says so.
DENSE_MAX_CANDIDATES = 10_000
# EASE's L2 grid (absolute; Steck reports optima from ~100 to a few thousand), climbed from its
# middle (``_climb``): each value scored costs an N^3 inverse, 12-26 s at 9,700 candidates on 2 cores,
# and validation lift over L2 had one peak, inside the grid, on each of the 7 data sets read
# (docs/RESULTS.md). The report's grid lists the values scored.
EASE_L2_GRID = (30.0, 100.0, 300.0, 1_000.0, 3_000.0)
# iALS settings searched on validation: factors x regularisation x alpha (implicit weighs an interaction alpha, an
# unobserved pair 1).
# implicit's regularisation is absolute (not scaled by counts), so it spans 100x.
IALS_GRID = {"factors": (64, 128), "regularization": (1.0, 10.0, 100.0), "alpha": (3.0, 30.0)}
IALS_ITERATIONS = 15


def _binary_matrix(train: Interactions, catalog: np.ndarray) -> tuple[np.ndarray, scipy.sparse.csr_matrix]:
    """(customers, binary customer x catalogue CSR of the training interactions)."""
    customers, rows = np.unique(train.customer_ids, return_inverse=True)
    cols = index_of(catalog, train.candidate_ids)
    m = cols >= 0
    x = scipy.sparse.csr_matrix((np.ones(int(m.sum()), np.float32), (rows[m], cols[m])),
                                shape=(len(customers), len(catalog)))
    x.data[:] = 1.0  # repeated interactions count once
    return customers, x


def _seen_rows(es: EvalSet, rows: np.ndarray) -> np.ndarray:
    """Dense binary [len(rows), N] of the customers' training items."""
    local, seen = gather_seen(es, rows)
    x = np.zeros((len(rows), len(es.catalog)), dtype=np.float32)
    x[local, seen] = 1.0
    return x


def item_item_cosine_scores(train: Interactions, es: EvalSet) -> ScoreFn:
    """Baseline: score(u, j) = sum over u's training items i of cos(i, j), with
    cosine on the binary customer x item training matrix."""
    x = _binary_matrix(train, es.catalog)[1]
    co = (x.T @ x).toarray()
    norm = np.sqrt(np.diag(co))
    norm[norm == 0] = 1.0
    sim = co / norm[:, None] / norm[None, :]
    del co
    return lambda rows: _seen_rows(es, rows) @ sim


class Ease:
    """EASE on a training set: ``B = I - P / diag(P)`` with zero diagonal, where
    ``P = (G + l2 I)^-1`` and ``G`` is the item Gram matrix; score(u) = x_u B.
    Each L2 costs one Cholesky inverse of the N x N matrix (~12 s at N = 6,900
    on 2 cores; an eigendecomposition shared by the grid measured 4x that)."""

    def __init__(self, train: Interactions, catalog: np.ndarray):
        x = _binary_matrix(train, catalog)[1]
        self.gram = (x.T @ x).toarray().astype(np.float32)

    def weights(self, l2: float) -> np.ndarray:
        """float32 [N, N]: B at ``l2``."""
        a = self.gram.copy()
        a[np.diag_indices_from(a)] += l2
        factor, info = scipy.linalg.lapack.spotrf(a, lower=False, overwrite_a=True)
        p, info2 = scipy.linalg.lapack.spotri(factor, lower=False, overwrite_c=True)
        if info or info2:
            raise np.linalg.LinAlgError(f"EASE: Gram + {l2} I is not positive definite")
        p = np.triu(p) + np.triu(p, 1).T  # spotri fills the upper triangle only
        b = p / -np.diag(p)[None, :]
        np.fill_diagonal(b, 0.0)
        return b

    def scores(self, es: EvalSet, l2: float) -> ScoreFn:
        """The scores of ``es``'s customers from their training items, at ``l2``."""
        b = self.weights(l2)
        return lambda rows: _seen_rows(es, rows) @ b


def ials_scores(train: Interactions, es: EvalSet, factors: int, regularization: float, alpha: float,
                seed: int) -> ScoreFn:
    """Baseline: implicit's iALS on the binary training matrix; a customer absent
    from training scores 0 everywhere here (``hit_rates`` scores such a customer by popularity)."""
    from implicit.cpu.als import AlternatingLeastSquares  # heavy import, only where used

    customers, x = _binary_matrix(train, es.catalog)
    with threadpoolctl.threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS's would contend
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                        iterations=IALS_ITERATIONS, random_state=seed)
        model.fit(x, show_progress=False)
    users = np.asarray(model.user_factors, np.float32)
    items = np.asarray(model.item_factors, np.float32)
    rows = index_of(customers, es.customers)
    queries = np.where((rows >= 0)[:, None], users[np.maximum(rows, 0)], 0.0).astype(np.float32)
    return lambda r: queries[r] @ items.T


@dataclasses.dataclass
class _Choice:
    """The settings a baseline uses, and their validation figures."""

    setting: dict[str, Any]
    validation: dict[str, float]
    grid: list[dict[str, Any]]
    seconds: float


def _scored(setting: dict[str, Any], score_fn: Callable[..., ScoreFn], validation: Validation) -> dict[str, Any]:
    """``setting`` with its validation rates and lift over popularity excluding seen."""
    rates = hit_rates(score_fn(**setting), validation.eval_set, TARGET_KS)
    return {**setting, "lift_over_popularity": round(lift(rates, validation.popularity, EXCLUDING_SEEN_METRICS), 4),
            "rates": rates}


def _climb(settings: list[dict[str, Any]], score: Callable[[dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows ``score`` gives the settings of an ordered one-dimensional grid that a
    climb from the middle setting visits: it moves to a neighbour with a higher lift
    until neither neighbour has one. Where lift rises to one peak and falls after it,
    the climb ends there: in a grid of 5 it scores 3 settings when the peak is the
    middle one and 4 otherwise. In the grid's order."""
    rows: dict[int, dict[str, Any]] = {}

    def lift_at(i: int) -> float:
        if i not in rows:
            rows[i] = score(settings[i])
        return rows[i]["lift_over_popularity"]

    at = len(settings) // 2
    while True:
        better = max((j for j in (at - 1, at + 1) if 0 <= j < len(settings)), key=lift_at, default=at)
        if lift_at(better) <= lift_at(at):
            return [rows[i] for i in sorted(rows)]
        at = better


def _choose(settings: list[dict[str, Any]], score_fn: Callable[..., ScoreFn], validation: Validation,
            climb: bool = False) -> _Choice:
    """The setting of ``settings`` whose ``score_fn(**setting)`` has the highest
    lift over popularity excluding seen on ``validation``: of every setting, or,
    with ``climb``, of those a climb over the ordered grid visits (``_climb``)."""
    t0 = time.perf_counter()
    if climb:
        grid = _climb(settings, lambda setting: _scored(setting, score_fn, validation))
    else:
        grid = [_scored(setting, score_fn, validation) for setting in settings]
    best = max(grid, key=lambda row: row["lift_over_popularity"])
    return _Choice({k: best[k] for k in settings[0]}, best["rates"], grid, time.perf_counter() - t0)


def baselines(train: Interactions, es: EvalSet, validation: Validation | None = None,
              ks: tuple[int, ...] = DEFAULT_KS, seed: int = 42,
              dense_max_candidates: int = DENSE_MAX_CANDIDATES,
              log: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Hit rates of every baseline on ``es`` (trained on ``train``).

    With a ``validation`` split, EASE's and iALS's settings are chosen on it, and
    their and item-item cosine's validation rates raise ``validation.references``
    (what the model's search and prior are scored against); without one EASE and
    iALS use their grid's middle settings. ``log`` gets a line per tuned baseline with its times (at 1M
    interactions iALS alone took 311 s of a run's 300 s budget, and nothing said so for minutes).
    """
    out: dict[str, Any] = {"popularity": hit_rates(popularity_scores(es), es, ks)}
    n = len(es.catalog)
    too_big = {"skipped": f"{n} candidates > {dense_max_candidates}: dense item x item matrices (and EASE's "
                          "N^3 inverse per L2) cost too much memory and time"}

    def tuned(name: str, grid: dict[str, tuple], make: Callable[[Interactions, EvalSet], Callable[..., ScoreFn]],
              climb: bool = False) -> None:
        settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        # Without a validation split there is nothing to choose on: each axis's middle value (the middle of the
        # flattened grid is a corner of it).
        chosen = {field: values[len(values) // 2] for field, values in grid.items()}
        report: dict[str, Any] = {}
        if validation is not None:
            choice = _choose(settings, make(validation.fit, validation.eval_set), validation, climb)
            validation.note_reference(choice.validation)
            chosen = choice.setting
            report = {"validation": choice.validation, "grid": [{k: v for k, v in row.items() if k != "rates"}
                                                                for row in choice.grid],
                      "choose_seconds": round(choice.seconds, 2)}
        t0 = time.perf_counter()  # the fit and its evaluation on ``es``
        out[name] = {**hit_rates(make(train, es)(**chosen), es, ks), "setting": chosen, **report,
                     "fit_seconds": round(time.perf_counter() - t0, 2)}
        chose = f"chose {chosen} of {len(settings)} settings in {report['choose_seconds']:.0f}s, " if report else ""
        log(f"baseline {name}: {chose}fit and test {out[name]['fit_seconds']:.0f}s")

    if n <= dense_max_candidates:
        out["item_item_cosine"] = hit_rates(item_item_cosine_scores(train, es), es, ks)
        if validation is not None:  # a bar too, as EASE and iALS are
            rates = hit_rates(item_item_cosine_scores(validation.fit, validation.eval_set), validation.eval_set,
                              TARGET_KS)
            validation.note_reference(rates)
            out["item_item_cosine"]["validation"] = rates
        tuned("ease", {"l2": EASE_L2_GRID}, _ease_family, climb=True)
    else:
        out["item_item_cosine"] = out["ease"] = too_big
    tuned("ials", IALS_GRID, lambda data, eval_set: lambda **setting: ials_scores(data, eval_set, seed=seed, **setting))
    return out


def _ease_family(train: Interactions, es: EvalSet) -> Callable[..., ScoreFn]:
    """l2 -> EASE scores on ``es``, from ``train``'s Gram matrix built once (one inverse per l2)."""
    ease = Ease(train, es.catalog)
    return lambda l2: ease.scores(es, l2)
