"""Per-customer data stored with a model version: recent history (the input of
history-aware towers), every training-time item (for exclude_seen) and feature
columns (the input of feature towers).

It lives in the version directory, not in a separate database, so a tower
always reads the history and features it was trained with: the same
one-version invariant as tower and index. Lookups are a binary search over the
sorted ids; everything is read-only after load, so it is thread-safe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_registry import VersionError
from model_registry.manifest import CUSTOMER_FEATURE_PREFIX as FEATURE_PREFIX


class CustomerStore:
    """Read-only per-customer arrays of one version."""

    def __init__(self, ids: np.ndarray, history: np.ndarray, seen_offsets: np.ndarray, seen_items: np.ndarray,
                 features: dict[str, np.ndarray]):
        if not (len(ids) == len(history) == len(seen_offsets) - 1):
            raise VersionError(f"customer store arrays disagree: {len(ids)} ids, {len(history)} history rows, "
                               f"{len(seen_offsets) - 1} seen rows")
        self.ids = ids
        self.history = history
        self._seen_offsets = seen_offsets
        self._seen_items = seen_items
        self.features = features
        # An unknown customer gets each feature's most typical value: the median
        # of a numeric column, the most frequent value of a string column.
        self.defaults = {name: _typical(column) for name, column in features.items()}

    @property
    def history_length(self) -> int:
        return self.history.shape[1]

    @classmethod
    def load(cls, path: Path) -> "CustomerStore":
        try:
            with np.load(path, allow_pickle=False) as data:
                features = {k[len(FEATURE_PREFIX):]: data[k] for k in data.files if k.startswith(FEATURE_PREFIX)}
                return cls(data["ids"], data["history"], data["seen_offsets"], data["seen_items"], features)
        except (OSError, KeyError, ValueError) as e:
            raise VersionError(f"customer store {path} is unreadable: {e}") from e

    def rows(self, customer_ids: list[str]) -> np.ndarray:
        """Row of each customer, -1 for customers not in the store."""
        if len(self.ids) == 0:
            return np.full(len(customer_ids), -1)
        # dtype=str keeps each id whole: the store's fixed width would truncate a
        # longer request id into a different customer's id.
        query = np.asarray(customer_ids, dtype=str)
        pos = np.minimum(np.searchsorted(self.ids, query), len(self.ids) - 1)
        return np.where(self.ids[pos] == query, pos, -1)

    def seen(self, customer_id: str) -> frozenset[str]:
        row = self.rows([customer_id])[0]
        if row < 0:
            return frozenset()
        return frozenset(self._seen_items[self._seen_offsets[row]:self._seen_offsets[row + 1]].tolist())

    def feature(self, name: str, rows: np.ndarray) -> np.ndarray:
        column = self.features[name]
        return np.where(rows >= 0, column[np.maximum(rows, 0)], self.defaults[name])


def _typical(column: np.ndarray):
    if column.dtype.kind in "fiu":
        finite = column[np.isfinite(column)] if column.dtype.kind == "f" else column
        return np.median(finite).astype(column.dtype) if len(finite) else np.zeros((), column.dtype)
    values, counts = np.unique(column, return_counts=True)
    return values[np.argmax(counts)] if len(values) else ""
