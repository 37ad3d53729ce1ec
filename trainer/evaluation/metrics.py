"""Offline evaluation: exact top-K hit rates over the whole catalogue.

For every test interaction (u, j) the scores of *all* catalog candidates for
customer u are computed exactly (dense numpy, chunked), and the interaction is a
hit at K when j ranks among the top K. Each metric is reported twice: over all
candidates, and "excluding seen", where the customer's training items are
masked out, which is how a serving system that filters already-consumed items
behaves. That one is a rate over the test interactions whose item is new to the
customer: a repeat of a training item (re-buying, a session's revisit) is one
such a system never recommends, and scored against the new items alone it was
all but a hit for any model that ranks a customer's own items first (on the
synthetic data, 60% repeats, EASE "excluding seen" @10 read 0.68 where 0.32 of
the new items were hits: docs/RESULTS.md). Ties are broken by catalog position,
like a stable sort, so constant-score baselines are not credited for ties.

A customer without training items is scored by popularity, whatever the system:
the query service answers a customer its tower does not know with the popular
list, and a baseline that scored such a customer all zeros ranked by catalogue
position instead (on the yelp shape, 3.9% of test interactions: EASE 0.019 @10
on them against popularity's 0.257).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from model_registry.ids import index_of
from trainer.data import Interactions

DEFAULT_KS = (1, 5, 10, 50, 100)
# (interactions x candidates) score cells a chunk scores: about four arrays of that many (scores, their customers'
# rows, the masked copy and its rows) are held at once.
_CELLS_PER_CHUNK = 8_000_000

ScoreFn = Callable[[np.ndarray], np.ndarray]  # customer rows -> float32 [rows, N]


@dataclasses.dataclass
class EvalSet:
    """A test set prepared against a catalog.

    ``customers`` are the distinct customers of the test interactions; ``rows``
    and ``cols`` index the test interactions into ``customers`` and ``catalog``.
    ``seen_indptr``/``seen_indices`` are a CSR of each customer's training items;
    ``repeats`` marks the test interactions whose item is one of them.
    """

    catalog: np.ndarray
    customers: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    train_counts: np.ndarray  # float64 [N], training interactions per candidate
    num_test_interactions: int  # before any sampling
    repeats: np.ndarray  # bool [len(rows)]: the item is one of the customer's training items


def csr(rows: np.ndarray, cols: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    keep = np.ones(len(rows), dtype=bool)
    keep[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])  # de-duplicate pairs
    rows, cols = rows[keep], cols[keep]
    indptr = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    return indptr, cols.astype(np.int64)


def prepare(train: Interactions, test: Interactions, catalog: np.ndarray | None = None,
            max_test_interactions: int | None = None, seed: int = 0) -> EvalSet:
    """Indexes a train/test pair for evaluation.

    Test interactions whose candidate is not in the catalog are dropped. When
    ``max_test_interactions`` is set and exceeded, a seeded uniform sample is
    evaluated (large synthetic runs); ``num_test_interactions`` keeps the total.
    """
    catalog = np.asarray(catalog if catalog is not None else train.catalog)
    cols = index_of(catalog, test.candidate_ids)
    keep = np.flatnonzero(cols >= 0)
    total = len(keep)
    if max_test_interactions is not None and len(keep) > max_test_interactions:
        keep = np.sort(np.random.default_rng(seed).choice(keep, max_test_interactions, replace=False))
    customers, rows = np.unique(test.customer_ids[keep], return_inverse=True)
    cols = cols[keep]

    train_cols = index_of(catalog, train.candidate_ids)
    train_rows = index_of(customers, train.customer_ids)
    m = (train_rows >= 0) & (train_cols >= 0)
    indptr, indices = csr(train_rows[m], train_cols[m], len(customers))
    counts = np.bincount(train_cols[train_cols >= 0], minlength=len(catalog)).astype(np.float64)
    seen_pairs = np.repeat(np.arange(len(customers), dtype=np.int64), np.diff(indptr)) * len(catalog) + indices
    repeats = np.isin(rows.astype(np.int64) * len(catalog) + cols, seen_pairs)
    return EvalSet(catalog, customers, rows.astype(np.int64), cols.astype(np.int64),
                   indptr, indices, counts, total, repeats)


def gather_seen(es: EvalSet, unique_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(local row, candidate) pairs of the training items of ``unique_rows``."""
    starts, ends = es.seen_indptr[unique_rows], es.seen_indptr[unique_rows + 1]
    lengths = ends - starts
    local = np.repeat(np.arange(len(unique_rows)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return local, es.seen_indices[np.repeat(starts, lengths) + offsets]


def _ranks(scores: np.ndarray, cols: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of each row's target under stable tie-breaking by position."""
    above = (scores > target[:, None]).sum(axis=1)
    ties_before = ((scores == target[:, None]) & (np.arange(scores.shape[1]) < cols[:, None])).sum(axis=1)
    # A NaN target compares false with everything, so it would rank first: a diverged model would score 1.0.
    return np.where(np.isnan(target), np.iinfo(np.int64).max, above + ties_before)


def hit_rates(score_fn: ScoreFn, es: EvalSet, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Hit rates @K over all candidates and excluding each customer's training items
    (over the test interactions whose item is new to the customer: module docstring).

    ``score_fn(rows)`` returns the scores of every catalog candidate for the
    customers ``es.customers[rows]``. Returns keys ``hit_rate@K`` and
    ``hit_rate_excluding_seen@K``.
    """
    n = len(es.catalog)
    order = np.argsort(es.rows, kind="stable")
    rows, cols = es.rows[order], es.cols[order]
    chunk = max(1, _CELLS_PER_CHUNK // max(n, 1))
    rank_all = np.empty(len(rows), dtype=np.int64)
    rank_new = np.empty(len(rows), dtype=np.int64)
    for a in range(0, len(rows), chunk):
        r, c = rows[a:a + chunk], cols[a:a + chunk]
        unique_rows, inv = np.unique(r, return_inverse=True)
        scores = np.asarray(score_fn(unique_rows), dtype=np.float32)
        cold = es.seen_indptr[unique_rows + 1] == es.seen_indptr[unique_rows]
        if cold.any():  # module docstring: what the query service answers a customer it does not know
            scores = np.where(cold[:, None], es.train_counts.astype(np.float32)[None, :], scores)
        target = scores[inv, c]
        rank_all[a:a + chunk] = _ranks(scores[inv], c, target)
        local, seen = gather_seen(es, unique_rows)
        masked = scores.copy()
        masked[local, seen] = -np.inf  # a repeat's own item too: it is left out of these rates below
        rank_new[a:a + chunk] = _ranks(masked[inv], c, target)
    new = ~es.repeats[order]
    out: dict[str, float] = {}
    for k in ks:
        out[f"hit_rate@{k}"] = float(np.mean(rank_all < k)) if len(rows) else 0.0
    for k in ks:
        out[f"hit_rate_excluding_seen@{k}"] = float(np.mean(rank_new[new] < k)) if new.any() else 0.0
    return out


def popularity_scores(es: EvalSet) -> ScoreFn:
    """The popularity baseline: every customer gets the training interaction counts."""
    counts = es.train_counts.astype(np.float32)
    return lambda rows: np.broadcast_to(counts, (len(rows), len(counts)))


def embedding_scores(query_embeddings: np.ndarray, candidate_embeddings: np.ndarray) -> ScoreFn:
    """Model scores: dot products of per-customer query vectors (aligned with
    ``EvalSet.customers``) with the candidate embeddings (aligned with the catalog)."""
    q = np.asarray(query_embeddings, dtype=np.float32)
    c = np.asarray(candidate_embeddings, dtype=np.float32)
    return lambda rows: q[rows] @ c.T
