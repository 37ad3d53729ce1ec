"""The towers' architecture knobs (each a ``recsys-train`` flag)."""

from __future__ import annotations

import dataclasses

import numpy as np

from model_registry.customers import DEFAULT_HISTORY_LENGTH
from settings.flags import comma_list, option, require

TOWERS = ("id", "features", "history", "sequence")
HISTORY_TOWERS = ("history", "sequence")
POOLINGS = ("mean", "sqrtn", "sum")
# recsys-train's history length when none is given (``covering_history_length``): the
# fewest most recent items that hold this share of the training interactions, within
# these bounds, and no longer than keeps the customer store (customers x length, dense)
# within HISTORY_STORE_CELLS: the default length at 100k customers.
HISTORY_COVERAGE = 0.9
MAX_COVERING_HISTORY = 200
HISTORY_STORE_CELLS = DEFAULT_HISTORY_LENGTH * 100_000


def _ints(text: str) -> tuple[int, ...]:
    return tuple(map(int, comma_list(text)))


@dataclasses.dataclass(frozen=True)
class TowerConfig:
    """Architecture knobs; ``kind`` picks the family (``TOWERS``)."""

    kind: str = option("id", "query/candidate tower family", flag="tower", choices=TOWERS)
    embedding_dim: int = option(64, "embedding dimension of both towers")
    history_length: int = option(DEFAULT_HISTORY_LENGTH, "history/sequence towers: items in the query history. "
                                                         "recsys-train, when not given, uses the fewest recent items "
                                                         "that hold 90% of the training interactions (50-200) "
                                                         "instead of the default")
    pooling: str = option("mean", "history towers: how the history's item embeddings are pooled", choices=POOLINGS)
    sequence_length: int = option(20, "sequence tower: the GRU reads this many most recent items")
    history_dropout: float = option(0.0, "history towers: share of history items dropped per training query")
    share_item_embeddings: bool = option(True, "history towers: one item table for history and candidates")
    use_customer_id: bool = option(False, "history towers: add the customer id embedding")
    projection: bool = option(True, "history towers: residual dense layer after pooling")
    deep_layers: tuple[int, ...] = option((), "hidden ReLU layer sizes before the final projection, e.g. 128,64",
                                          parse=_ints)
    candidate_features: bool = option(
        False, "candidate tower: add the catalogue's columns (free text as words, categories, numbers); the "
               "version then publishes its candidate tower, so catalogue upserts can give features")
    time_features: bool = option(
        False, "features tower: take the request time (bucketised; serving passes the current time, clipped to "
               "the training period)")
    normalize: bool = option(False, "L2-normalise both towers' outputs (pair with a temperature < 1)")
    l2: float = option(0.0, "L2 penalty on embedding tables and dense kernels")

    def __post_init__(self) -> None:
        require(self.kind in TOWERS, "kind", f"must be one of {', '.join(TOWERS)}, got {self.kind!r}")
        require(self.pooling in POOLINGS, "pooling", f"must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        for name in ("embedding_dim", "history_length", "sequence_length"):
            require(getattr(self, name) >= 1, name, "must be a positive integer")
        require(all(units >= 1 for units in self.deep_layers), "deep_layers", "layer sizes must be positive")
        require(0.0 <= self.history_dropout < 1.0, "history_dropout", "must be in [0, 1)")
        require(bool(np.isfinite(self.l2)) and self.l2 >= 0, "l2", "must be a finite number >= 0")
        require(not self.time_features or self.kind == "features", "time_features", "needs --tower features")
        # The id tower is an embedding table alone: given layers, it trained without them and reported them used.
        require(not self.deep_layers or self.kind != "id", "deep_layers",
                "needs --tower features, history or sequence (the id tower has no hidden layers)")


def covering_history_length(customer_ids: np.ndarray) -> int:
    """The history length recsys-train gives history towers unless told: the
    fewest most recent items per customer that hold ``HISTORY_COVERAGE`` of the
    training interactions, at least ``DEFAULT_HISTORY_LENGTH``, at most
    ``MAX_COVERING_HISTORY``, and short enough that the customer store stays
    within ``HISTORY_STORE_CELLS``.

    EASE, the baseline a model is held to, scores a customer from every item they
    have. On ml-100k 50 items hold half of the training interactions and 200 hold
    94%; over four seeds 200 raised every mean hit rate of the history tower
    (excluding seen @10 by 0.0035, @100 by 0.011) for 1.2-2.8x its training time
    (docs/RESULTS.md). Where customers are many and histories short, it stays at
    the default."""
    counts = np.sort(np.unique(np.asarray(customer_ids), return_counts=True)[1])
    high = min(MAX_COVERING_HISTORY, max(DEFAULT_HISTORY_LENGTH, HISTORY_STORE_CELLS // max(len(counts), 1)))
    lengths = np.arange(DEFAULT_HISTORY_LENGTH, high + 1)
    shorter = np.searchsorted(counts, lengths)  # per length, the customers with fewer interactions
    held = np.concatenate([[0], np.cumsum(counts)])[shorter] + lengths * (len(counts) - shorter)
    enough = held >= HISTORY_COVERAGE * counts.sum()
    return int(lengths[np.argmax(enough)]) if enough.any() else high
