"""Implicit-feedback interactions, the one data type every loader returns.

Plain numpy (pandas is not a dependency), columnar, so that the loaders and
the trainer scale to tens of millions of events.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from model_registry.customers import feature_at
from model_registry.ids import index_of


@dataclasses.dataclass
class Interactions:
    """Implicit-feedback events: customer ``customer_ids[i]`` interacted with
    candidate ``candidate_ids[i]`` at ``timestamps[i]``.

    ``catalog`` is the full candidate universe (sorted, unique); it can be larger
    than the set of candidates that occur in the interactions (MovieLens lists
    items in u.item).

    Feature tables are optional, columnar (``column -> np.ndarray``) and aligned
    with a sorted unique id array:

    * ``candidate_features[col][j]`` describes candidate ``catalog[j]`` (every
      array has ``len(catalog)`` rows; candidates without a record get "" / NaN).
    * ``customer_features[col][r]`` describes customer ``customer_feature_ids[r]``
      (sorted unique; need not cover every customer of the interactions, e.g. a
      customer seen only in test). Look rows up with :meth:`customer_feature_rows`.

    String columns are numpy unicode arrays, numeric ones float32 (NaN = missing).
    ``take`` shares the tables (they describe ids, not events).
    """

    customer_ids: np.ndarray  # unicode [n]
    candidate_ids: np.ndarray  # unicode [n]
    timestamps: np.ndarray  # epoch seconds [n]: int64, float64 for sessions (fractions order a second)
    catalog: np.ndarray | None = None  # unicode [N], sorted unique
    customer_features: dict[str, np.ndarray] | None = None  # column -> [len(customer_feature_ids)]
    name: str = "interactions"
    customer_feature_ids: np.ndarray | None = None  # unicode [M], sorted unique
    candidate_features: dict[str, np.ndarray] | None = None  # column -> [len(catalog)]
    # What a loader read, dropped and how fast (counts, rows_per_second); shared by take().
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.customer_ids)
        if len(self.candidate_ids) != n or len(self.timestamps) != n:
            raise ValueError(
                f"customer_ids ({n}), candidate_ids ({len(self.candidate_ids)}) and "
                f"timestamps ({len(self.timestamps)}) must have the same length"
            )
        if self.catalog is None:
            self.catalog = np.unique(self.candidate_ids)
        if self.candidate_features is not None:
            for col, values in self.candidate_features.items():
                if len(values) != len(self.catalog):
                    raise ValueError(f"candidate feature {col!r} has {len(values)} rows, "
                                     f"catalog has {len(self.catalog)}")
        if self.customer_features is not None:
            if self.customer_feature_ids is None:
                raise ValueError("customer_features needs customer_feature_ids (sorted unique ids)")
            for col, values in self.customer_features.items():
                if len(values) != len(self.customer_feature_ids):
                    raise ValueError(f"customer feature {col!r} has {len(values)} rows, "
                                     f"customer_feature_ids has {len(self.customer_feature_ids)}")

    def __len__(self) -> int:
        return len(self.customer_ids)

    def take(self, index: np.ndarray) -> "Interactions":
        """A subset of the events (by integer index); catalog and features are shared."""
        return dataclasses.replace(
            self,
            customer_ids=self.customer_ids[index],
            candidate_ids=self.candidate_ids[index],
            timestamps=self.timestamps[index],
        )

    @property
    def num_customers(self) -> int:
        return len(np.unique(self.customer_ids))

    def candidate_feature_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` in the candidate feature table (= catalog positions); -1 where absent."""
        return index_of(self.catalog, np.asarray(ids))

    def customer_feature_rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids`` in the customer feature table; -1 where absent (or no table)."""
        ids = np.asarray(ids)
        if self.customer_feature_ids is None or len(self.customer_feature_ids) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        return index_of(self.customer_feature_ids, ids)


def align_features(table_ids: np.ndarray, columns: dict[str, np.ndarray],
                   target_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Reorders columnar features keyed by ``table_ids`` onto sorted ``target_ids``.

    Rows of ``target_ids`` missing from the table get the missing marker (``feature_at``: "" in string columns, NaN
    in numeric ones, which become float32). Duplicate table ids: the last wins.
    """
    table_ids = np.asarray(table_ids).astype(str)
    target_ids = np.asarray(target_ids)
    order = np.argsort(table_ids, kind="stable")
    sorted_ids = table_ids[order]
    # keep the last of equal ids
    last = np.ones(len(sorted_ids), dtype=bool)
    last[:-1] = sorted_ids[1:] != sorted_ids[:-1]
    order, sorted_ids = order[last], sorted_ids[last]
    rows = index_of(sorted_ids, target_ids)
    source = np.where(rows >= 0, order[np.maximum(rows, 0)], -1) if len(order) else rows
    return {col: feature_at(values, source) for col, values in columns.items()}
