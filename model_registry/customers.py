"""The customer store of a model version (``customer_store.npz``): every
customer's recent items (the input of history-aware towers), all their items (for
exclude_seen) and their feature columns (the input of the features tower) in the
data the version was trained from, its held-out test split included (the trainer
evaluates with a store of the training split, then publishes this one).

It travels inside the version, not in a separate database, so a tower always
reads the history and features it was trained with: the same one-version
invariant as tower and index. The trainer builds and writes it; the query
service loads it; both read it through this class. Read-only after
construction, so safe for concurrent readers.

Missing values have one meaning on both sides: a customer the store does not
know, or a feature the data lacks for a customer, is ``""`` in a string column
and NaN in a numeric one, which is what the features tower was trained on
(it embeds "missing" as such).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from model_registry.ids import index_of
from model_registry.manifest import UNREADABLE_NPZ, VersionError

FEATURE_PREFIX = "feature__"  # npz key of a feature column: feature__<name>
DEFAULT_HISTORY_LENGTH = 50  # items stored per customer when the tower reads no history


def recency_groups(customer_ids: np.ndarray, candidate_ids: np.ndarray,
                   timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events grouped by customer, most recent first inside a group (ties by
    candidate id): (customers sorted [C], group bounds int64 [C + 1], event order [n])."""
    order = np.lexsort((candidate_ids, -np.asarray(timestamps), customer_ids))
    customers, starts = np.unique(np.asarray(customer_ids)[order], return_index=True)
    return customers, np.append(starts, len(order)).astype(np.int64), order


def missing_value(column: np.ndarray):
    """The missing marker of a feature column: "" (strings) or NaN (numbers)."""
    return "" if column.dtype.kind in "US" else np.float32(np.nan)


def feature_at(column, rows: np.ndarray) -> np.ndarray:
    """Feature ``column``'s values at ``rows`` (-1: no row), its missing marker where there is none: str for a
    string column, float32 for a numeric one. Every feature table (customers', the catalogue's) is aligned so."""
    column = np.asarray(column)
    column = column.astype(str) if column.dtype.kind in "US" else column.astype(np.float32)
    if len(column) == 0:
        return np.full(len(rows), missing_value(column), dtype=column.dtype)
    return np.where(rows >= 0, column[np.maximum(rows, 0)], missing_value(column)).astype(column.dtype)


@dataclasses.dataclass(frozen=True)
class CustomerStore:
    """Per-customer serving inputs of one version.

    ``ids`` str [C] sorted; ``history`` str [C, L], most recent first, "" padded;
    ``seen_offsets`` int64 [C + 1] and ``seen_items`` str [S]: a CSR of each
    customer's distinct training items; ``features`` name -> [C] (str or float32).
    """

    ids: np.ndarray
    history: np.ndarray
    seen_offsets: np.ndarray
    seen_items: np.ndarray
    features: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        c = len(self.ids)
        if self.history.ndim != 2 or len(self.history) != c or len(self.seen_offsets) != c + 1:
            raise VersionError(f"customer store arrays disagree: {c} ids, history {self.history.shape}, "
                               f"{len(self.seen_offsets) - 1} seen rows")
        for name, column in self.features.items():
            if len(column) != c:
                raise VersionError(f"customer store feature {name!r} has {len(column)} rows for {c} customers")

    # ------------------------------------------------------------------ building and files

    @classmethod
    def build(cls, customer_ids: np.ndarray, candidate_ids: np.ndarray, timestamps: np.ndarray,
              history_length: int = DEFAULT_HISTORY_LENGTH, feature_ids: np.ndarray | None = None,
              feature_columns: dict[str, np.ndarray] | None = None) -> "CustomerStore":
        """The store of the events (customer_ids[i], candidate_ids[i], timestamps[i]).

        ``feature_columns`` are aligned with ``feature_ids`` (sorted unique); a
        customer without a row there gets the missing marker.
        """
        customers, bounds, order = recency_groups(customer_ids, candidate_ids, timestamps)
        items = np.asarray(candidate_ids)[order].astype(str)
        lengths = np.diff(bounds)
        history = np.full((len(customers), history_length), "", dtype=items.dtype if len(items) else "<U1")
        take = np.minimum(lengths, history_length)
        rows = np.repeat(np.arange(len(customers)), take)
        cols = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
        history[rows, cols] = items[bounds[:-1][rows] + cols]
        # Seen: every distinct training item of each customer, sorted.
        seen_rows = np.repeat(np.arange(len(customers)), lengths)
        key = np.lexsort((items, seen_rows))
        sr, si = seen_rows[key], items[key]
        first = np.ones(len(sr), dtype=bool)
        first[1:] = (sr[1:] != sr[:-1]) | (si[1:] != si[:-1])
        sr, si = sr[first], si[first]
        offsets = np.zeros(len(customers) + 1, dtype=np.int64)
        np.cumsum(np.bincount(sr, minlength=len(customers)), out=offsets[1:])
        features = {}
        if feature_columns:
            feature_rows = index_of(np.asarray(feature_ids), customers)
            for name, column in feature_columns.items():
                features[name] = feature_at(column, feature_rows)
        return cls(customers.astype(str), history.astype(str), offsets, si.astype(str), features)

    def only_features(self, names: tuple[str, ...]) -> "CustomerStore":
        """The same store keeping only the named feature columns (what a tower takes)."""
        return dataclasses.replace(self, features={k: v for k, v in self.features.items() if k in names})

    def save(self, path: Path) -> None:
        """Writes the store as an uncompressed npz (keys: ids, history, seen_offsets,
        seen_items, feature__<name>)."""
        arrays = {"ids": self.ids, "history": self.history, "seen_offsets": self.seen_offsets,
                  "seen_items": self.seen_items}
        arrays.update({FEATURE_PREFIX + name: column for name, column in self.features.items()})
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> "CustomerStore":
        """Reads a store written by ``save``; raises VersionError if it is unreadable."""
        try:
            with np.load(path, allow_pickle=False) as data:
                features = {k[len(FEATURE_PREFIX):]: data[k] for k in data.files if k.startswith(FEATURE_PREFIX)}
                return cls(data["ids"], data["history"], data["seen_offsets"], data["seen_items"], features)
        except UNREADABLE_NPZ as e:
            raise VersionError(f"customer store {path} is unreadable: {e}") from e

    # ------------------------------------------------------------------ reading

    @property
    def history_length(self) -> int:
        return self.history.shape[1]

    def rows(self, customer_ids) -> np.ndarray:
        """Row of each customer, -1 for customers the store does not hold."""
        return index_of(self.ids, customer_ids)

    def seen(self, customer_id: str) -> frozenset[str]:
        """The customer's distinct training items (empty for an unknown customer)."""
        row = self.rows([customer_id])[0]
        if row < 0:
            return frozenset()
        return frozenset(self.seen_items[self.seen_offsets[row]:self.seen_offsets[row + 1]].tolist())

    def histories(self, rows: np.ndarray, length: int) -> np.ndarray:
        """Stored histories of ``rows`` (object dtype, [n, length]): "" padded or
        cut to ``length``, all "" for row -1."""
        stored = self.history[np.maximum(rows, 0), :length].astype(object)
        stored[rows < 0] = ""
        if stored.shape[1] < length:
            stored = np.concatenate([stored, np.full((len(rows), length - stored.shape[1]), "", object)], axis=1)
        return stored

    def feature(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Feature ``name`` of ``rows``, the missing marker for row -1."""
        column = self.features[name]
        return np.where(rows >= 0, column[np.maximum(rows, 0)], missing_value(column)).astype(column.dtype)
