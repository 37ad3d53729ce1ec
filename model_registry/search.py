"""Exact dot-product search and recall@k: the reference every ScaNN index is
measured against, at publish (the trainer's index builder) and at load (the
index service's self-test)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

# Candidate rows scored per block: bounds the score matrix (queries x block, in float64
# and again in float32, and argpartition's int64 copy of it) and, for a database read
# from a file, the memory the read takes. At 16k rows and a load's 300 probes that is ~70 MB
# (tracemalloc's peak), well under the 30% over one version's memory an index slot may take
# while it loads.
ROW_BLOCK = 16_384
# The recall@10 against exact search, on a version's probe queries, below which an index service refuses to load the
# version (its --min-recall) and the trainer refuses to publish it.
MIN_RECALL = 0.9


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) from an open ``.npy`` file, left at its data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"{getattr(f, 'name', 'file')}: .npy format {version} is not supported")


def iter_npy_rows(path: Path, block: int = ROW_BLOCK) -> Iterator[np.ndarray]:
    """Blocks of rows of a 2-D ``.npy`` file, read into one reused buffer.

    Never memory-maps the whole file: a mapping's pages stay resident once
    touched, so an exact search over a 1M x 64 file would add its 256 MB to the
    reader's peak memory (an index replica self-testing a version it loads).
    """
    with open(path, "rb") as f:
        shape, fortran, dtype = _read_header(f)
        if len(shape) != 2 or fortran:
            raise ValueError(f"{path}: expected a C-ordered 2-D array, got shape {shape}")
        rows, dim = shape
        buffer = np.empty((min(block, rows), dim), dtype=dtype)
        for start in range(0, rows, block):
            n = min(block, rows - start)
            view = buffer[:n]
            if f.readinto(memoryview(view).cast("B")) != view.nbytes:
                raise ValueError(f"{path} is truncated at row {start}")
            yield view


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape recorded in a ``.npy`` file's header (nothing else is read)."""
    with open(path, "rb") as f:
        return _read_header(f)[0]


def exact_top_k(queries: np.ndarray, database: np.ndarray | Path, k: int,
                query_chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact dot-product top-k per query: (indices int64 [Q, k], scores float32 [Q, k]), best first.

    ``database`` is an array [N, D] or the path of a ``.npy`` file holding one
    (read in blocks, see ``iter_npy_rows``). Work is done in blocks of rows and
    chunks of queries, so memory stays bounded at any catalogue size. Ties are
    broken by row number.

    Scores are summed in float64 and rounded to float32: in float32, BLAS sums a
    column differently by where it falls in its kernel's tile (OpenBLAS 0.3.31,
    numpy 2.4), so repeats of one vector scored a few ulps apart, their tie was
    broken by those ulps rather than by row, and an exact searcher over them
    measured a recall below 1. Rounded from float64, repeats score alike.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float64)
    blocks = iter_npy_rows(database) if isinstance(database, (str, Path)) else (
        database[a:a + ROW_BLOCK] for a in range(0, len(database), ROW_BLOCK))
    best_idx = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    offset = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float64)
        idx_parts, score_parts = [], []
        for a in range(0, len(queries), query_chunk):
            scores = (queries[a:a + query_chunk] @ block.T).astype(np.float32)
            part = _top_columns(scores, min(k, scores.shape[1]))
            idx_parts.append(part + offset)
            score_parts.append(np.take_along_axis(scores, part, axis=1))
        offset += len(block)
        if not idx_parts:
            continue
        cand_idx = np.concatenate([best_idx, np.concatenate(idx_parts)], axis=1)
        cand_scores = np.concatenate([best_scores, np.concatenate(score_parts)], axis=1)
        best_idx, best_scores = _keep_top(cand_idx, cand_scores, k)
    order = np.lexsort((best_idx, -best_scores), axis=1) if best_idx.size else best_idx
    return np.take_along_axis(best_idx, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of each row's k best scores; of a tie at the k-th place, the lowest columns.

    argpartition picks among scores equal to the k-th arbitrarily, where ScaNN's
    brute force keeps the lowest rows: recall against it would count the
    repeats of one vector as misses of an exact searcher."""
    part = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]  # no negated copy
    kth = np.take_along_axis(scores, part[:, :1], axis=1)  # argpartition puts the k-th best first
    tied = np.flatnonzero(np.count_nonzero(scores == kth, axis=1)
                          > np.count_nonzero(np.take_along_axis(scores, part, axis=1) == kth, axis=1))
    if len(tied):
        rows, kth = scores[tied], kth[tied]
        above = ~(rows <= kth)  # NaN ranks above, as argpartition has it
        equal = rows == kth
        need = k - above.sum(axis=1, keepdims=True)
        part[tied] = np.nonzero(above | (equal & (np.cumsum(equal, axis=1) <= need)))[1].reshape(len(tied), k)
    return part


def _keep_top(idx: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if idx.shape[1] <= k:
        return idx, scores
    by_row = np.argsort(idx, axis=1)  # so that _top_columns's lowest columns are the lowest rows
    idx, scores = np.take_along_axis(idx, by_row, axis=1), np.take_along_axis(scores, by_row, axis=1)
    keep = _top_columns(scores, k)
    return np.take_along_axis(idx, keep, axis=1), np.take_along_axis(scores, keep, axis=1)


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k (rows of indices) found in the approximate
    top-k; negative entries of ``approx`` (padding) match nothing."""
    exact = np.asarray(exact)
    if exact.size == 0:
        return 1.0
    hits = [len(np.intersect1d(np.asarray(a)[np.asarray(a) >= 0], e)) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / exact.size)
