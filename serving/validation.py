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
