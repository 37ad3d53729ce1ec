"""The one rule that turns a customer into query-tower inputs.

A query tower takes named inputs: ``customer_id`` always, ``history`` (the
latest items, most recent first) for history-aware towers, one column per
customer feature for the features tower, and ``request_time`` for towers that
take the time. ``TowerInputs`` says which (the trainer reads it off its tower,
the query service off the SavedModel's signature) and ``tower_inputs`` fills
them from the version's customer store: the trainer to evaluate and export,
the query service to serve. So a served customer gets exactly the inputs the
model was evaluated with.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from model_registry.customers import CustomerStore

CUSTOMER_ID = "customer_id"
# The candidate tower SavedModel's id input, beside one input per catalogue column.
CANDIDATE_ID = "candidate_id"
HISTORY = "history"
# Float64 unix seconds. Serving passes the current time, the trainer the event's
# time (training) or the end of the training period (evaluation); the tower clips
# it to the training period, so any later serving time reads as its last moments.
REQUEST_TIME = "request_time"
STRING, FLOAT = "string", "float"
# The towers' SavedModel signature and its outputs: the query tower gives both, the candidate tower EMBEDDING.
SIGNATURE = "serving_default"
EMBEDDING = "embedding"  # float32 [None, D]
# bool [None]: the customer id is in the tower's vocabulary, or (history towers) its history holds a known item
KNOWN = "known"


@dataclasses.dataclass(frozen=True)
class TowerInputs:
    """Which inputs a query tower takes.

    ``history_length`` 0: no history input; ``features``: (name, STRING or FLOAT)
    pairs, in the tower's order; ``request_time``: whether it takes the time.
    """

    history_length: int = 0
    features: tuple[tuple[str, str], ...] = ()
    request_time: bool = False

    @classmethod
    def from_signature(cls, inputs: dict[str, tuple[tuple, str]]) -> "TowerInputs":
        """From a signature's ``{name: (shape, dtype name)}``; raises ValueError
        for an input this rule cannot fill."""
        if CUSTOMER_ID not in inputs:
            raise ValueError("the query tower takes no customer_id input")
        history_length, features, request_time = 0, [], False
        for name, (shape, dtype) in inputs.items():
            if name == CUSTOMER_ID:
                continue
            if name == HISTORY:
                if len(shape) != 2 or shape[1] is None:
                    raise ValueError(f"the history input has shape {shape}; expected [batch, length]")
                history_length = int(shape[1])
            elif name == REQUEST_TIME:
                request_time = True
            elif dtype == "string":
                features.append((name, STRING))
            elif dtype.startswith("float"):
                features.append((name, FLOAT))
            else:
                raise ValueError(f"input {name!r} has dtype {dtype}, which no customer feature has")
        return cls(history_length, tuple(sorted(features)), request_time)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.features)


def check_store(spec: TowerInputs, store: CustomerStore | None) -> None:
    """Raises ValueError unless ``store`` holds what ``spec`` needs."""
    if store is None:
        if spec.history_length or spec.features:
            raise ValueError("the query tower takes a history or features but the version has no customer store")
        return
    for name, kind in spec.features:
        if name not in store.features:
            raise ValueError(f"the query tower needs feature {name!r}, which the customer store does not hold")
        if (store.features[name].dtype.kind in "US") != (kind == STRING):
            raise ValueError(f"feature {name!r} is {kind} in the tower but {store.features[name].dtype} in the store")


def tower_inputs(spec: TowerInputs, store: CustomerStore | None, customer_ids, *,
                 recent: list[tuple[str, ...]] | None = None, request_time: float | np.ndarray | None = None,
                 with_history: bool = True) -> dict[str, np.ndarray]:
    """The inputs of ``spec`` for ``customer_ids`` (numpy, one row per id).

    * ``history``: the stored history (most recent first, "" padded to the
      tower's length; all "" for a customer the store does not know), replaced
      by ``recent[i]`` where that is non-empty. ``with_history=False`` leaves it
      out (training builds each event's history per batch instead).
    * features: the stored value, or the missing marker ("" / NaN) for an
      unknown customer.
    * ``request_time``: ``request_time`` (a scalar for every row, or one per row).

    A list of ids becomes an object array and histories are object arrays: a
    fixed-width unicode array made from them would cut a long id to the width
    of the others. A numpy array of ids (the trainer's millions of events) is
    used as it is.
    """
    ids = customer_ids if isinstance(customer_ids, np.ndarray) else np.asarray(customer_ids, dtype=object)
    rows = store.rows(ids) if store is not None else np.full(len(ids), -1)
    out: dict[str, np.ndarray] = {CUSTOMER_ID: ids}
    if spec.history_length and with_history:
        history = (store.histories(rows, spec.history_length) if store is not None
                   else np.full((len(ids), spec.history_length), "", dtype=object))
        if recent is not None:
            for i, items in enumerate(recent):
                if items:
                    history[i] = (list(items[:spec.history_length]) + [""] * spec.history_length)[
                        :spec.history_length]
        out[HISTORY] = history
    for name, _ in spec.features:
        out[name] = store.feature(name, rows)
    if spec.request_time:
        if request_time is None:
            raise ValueError("the query tower takes the request time: pass request_time")
        out[REQUEST_TIME] = np.broadcast_to(np.asarray(request_time, dtype=np.float64), (len(ids),)).copy()
    return out
