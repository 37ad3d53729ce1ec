"""Request checks shared by both services. Limits are documented in the proto."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from serving.errors import InvalidArgument

MAX_ID_BYTES = 256
DEFAULT_MAX_K = 1000
MAX_EXCLUSIONS = 10_000
MAX_RECENT = 1000
# A batch search's work and answer grow with queries x k: 10,000 queries at
# k = 1000 took 30 s and 2.5 GB of an index process before these bounds.
DEFAULT_MAX_BATCH_QUERIES = 1024
DEFAULT_MAX_BATCH_RESULTS = 100_000


def check_id(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty: pass a non-empty id")
    size = len(value.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"{what} is {size} bytes; ids are at most {MAX_ID_BYTES} bytes")
    return value


def check_k(k: int, max_k: int) -> int:
    if k < 1 or k > max_k:
        raise InvalidArgument(f"k={k} is out of range: ask for 1 to {max_k} candidates")
    return k


def check_id_list(ids: Iterable[str], field: str, limit: int) -> tuple[str, ...]:
    ids = tuple(ids)
    if len(ids) > limit:
        raise InvalidArgument(f"{field} has {len(ids)} ids; at most {limit} are allowed per request")
    for i, value in enumerate(ids):
        check_id(value, f"{field}[{i}]")
    return ids


def check_exclusions(ids: Iterable[str]) -> frozenset[str]:
    return frozenset(check_id_list(ids, "exclude_candidate_ids", MAX_EXCLUSIONS))


def check_batch(ks: Sequence[int], max_queries: int, max_results: int) -> None:
    """Bounds a batch search before any work: its size, and queries x the largest k
    (what the search computes and the answer holds)."""
    if not ks:
        raise InvalidArgument("no queries: send at least one")
    if len(ks) > max_queries:
        raise InvalidArgument(f"{len(ks)} queries in one batch; at most {max_queries} are allowed: split the batch")
    work = len(ks) * max(ks)
    if work > max_results:
        raise InvalidArgument(f"{len(ks)} queries x k={max(ks)} = {work} results; at most {max_results} per call: "
                              f"split the batch or lower k")


def check_vector(values: Sequence[float], dim: int, version: int) -> np.ndarray:
    if len(values) != dim:
        raise InvalidArgument(
            f"query vector has {len(values)} dimensions; model version {version} embeds into {dim}"
        )
    vector = np.asarray(values, dtype=np.float32)
    if not np.isfinite(vector).all():
        bad = next(i for i, v in enumerate(values) if not math.isfinite(v))
        raise InvalidArgument(f"query vector has a non-finite value ({values[bad]}) at position {bad}")
    return vector
