"""Ids: how long one may be, and lookup in sorted unique id arrays (catalogues, customer stores, feature tables)."""

from __future__ import annotations

import numpy as np

# The longest id (UTF-8 bytes) the services accept in a request. The trainer drops longer ones: a customer over it
# could never be asked for, a candidate over it would be answered but could never be sent back.
MAX_ID_BYTES = 256


def first_unusable(ids: np.ndarray, *, padding_allowed: bool = False) -> int | None:
    """The position of the first of ``ids`` a request could not name (empty, over ``MAX_ID_BYTES`` of UTF-8, holding
    a NUL, whitespace at its start or end unless ``padding_allowed``); None if every one is usable."""
    return next((i for i, value in enumerate(ids.tolist()) if not value or "\x00" in value
                 or len(value.encode("utf-8")) > MAX_ID_BYTES or (not padding_allowed and value != value.strip())),
                None)


def index_of(sorted_ids: np.ndarray, ids) -> np.ndarray:
    """Positions (int64) of ``ids`` in the sorted unique array ``sorted_ids``; -1 where absent.

    ``ids`` keep their full length: numpy's fixed-width unicode would cut a
    longer id down to the width of ``sorted_ids`` and match another id.
    """
    ids = np.asarray(ids, dtype=str) if not isinstance(ids, np.ndarray) or ids.dtype.kind not in "US" else ids
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1).astype(np.int64)
