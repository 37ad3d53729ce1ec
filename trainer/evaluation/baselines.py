"""Baselines every model is compared with, on the same split: popularity and
item-item cosine."""

from __future__ import annotations

from typing import Any

import numpy as np

from model_registry.ids import index_of
from trainer.data import Interactions
from trainer.evaluation.metrics import DEFAULT_KS, EvalSet, ScoreFn, csr, gather_seen, hit_rates

# Item-item cosine needs an N x N similarity matrix (4 N^2 bytes); above this many
# candidates it is skipped and the report says so.
ITEM_ITEM_MAX_CANDIDATES = 20_000


def popularity_scores(es: EvalSet) -> ScoreFn:
    """Baseline: every customer gets the training interaction counts."""
    counts = es.train_counts.astype(np.float32)
    return lambda rows: np.broadcast_to(counts, (len(rows), len(counts)))


def item_item_cosine_scores(train: Interactions, es: EvalSet, chunk_rows: int = 4096) -> ScoreFn:
    """Baseline: score(u, j) = sum over u's training items i of cos(i, j), with
    cosine on the binary customer x item training matrix (computed in customer
    chunks so the matrix is never materialized whole)."""
    n = len(es.catalog)
    cust, rows = np.unique(train.customer_ids, return_inverse=True)
    cols = index_of(es.catalog, train.candidate_ids)
    m = cols >= 0
    indptr, indices = csr(rows[m], cols[m], len(cust))
    co = np.zeros((n, n), dtype=np.float32)
    for a in range(0, len(cust), chunk_rows):
        b = min(a + chunk_rows, len(cust))
        x = np.zeros((b - a, n), dtype=np.float32)
        lengths = np.diff(indptr[a:b + 1])
        x[np.repeat(np.arange(b - a), lengths), indices[indptr[a]:indptr[b]]] = 1.0
        co += x.T @ x
    norm = np.sqrt(np.diag(co))
    norm[norm == 0] = 1.0
    sim = co / norm[:, None] / norm[None, :]
    del co

    def score(rows_: np.ndarray) -> np.ndarray:
        local, seen = gather_seen(es, rows_)
        x = np.zeros((len(rows_), n), dtype=np.float32)
        x[local, seen] = 1.0
        return x @ sim

    return score


def baselines(train: Interactions, es: EvalSet, ks: tuple[int, ...] = DEFAULT_KS,
              item_item_max_candidates: int = ITEM_ITEM_MAX_CANDIDATES) -> dict[str, Any]:
    """Popularity and item-item cosine hit rates on the same split."""
    out: dict[str, Any] = {"popularity": hit_rates(popularity_scores(es), es, ks)}
    if len(es.catalog) <= item_item_max_candidates:
        out["item_item_cosine"] = hit_rates(item_item_cosine_scores(train, es), es, ks)
    else:
        out["item_item_cosine"] = {
            "skipped": f"{len(es.catalog)} candidates > {item_item_max_candidates}: "
                       "the dense item x item similarity would not fit"}
    return out
