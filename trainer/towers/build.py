"""A matching pair of towers for a ``TowerConfig``."""

from __future__ import annotations

import numpy as np

from trainer.towers.blocks import CandidateTower, ItemEncoder
from trainer.towers.config import TowerConfig
from trainer.towers.query import FeatureQueryTower, HistoryQueryTower, IdQueryTower, QueryTower


def build_towers(config: TowerConfig, seed: int, customers: np.ndarray, catalog: np.ndarray,
                 customer_features: dict[str, np.ndarray] | None = None,
                 candidate_features: dict[str, np.ndarray] | None = None,
                 timestamps: np.ndarray | None = None) -> tuple[QueryTower, CandidateTower]:
    """(query tower, candidate tower) of ``config.kind``.

    ``customer_features`` are aligned with ``customers`` (the features tower's
    inputs); ``candidate_features`` with ``catalog``; ``timestamps`` are the
    training events' times (the features tower's time buckets).
    """
    cand_feats = candidate_features if (config.candidate_features or config.kind == "features") else None
    item_encoder = ItemEncoder(catalog, config.embedding_dim, seed + 1, config.l2, cand_feats,
                               name="item_encoder")
    candidate = CandidateTower(item_encoder, config.normalize, name="candidate_tower")
    if config.kind == "id":
        return IdQueryTower(customers, config, seed, name="query_tower"), candidate
    if config.kind == "features":
        query = FeatureQueryTower(customers, customer_features or {}, config, seed, timestamps, name="query_tower")
        return query, candidate
    history_encoder = item_encoder if config.share_item_embeddings else ItemEncoder(
        catalog, config.embedding_dim, seed + 2, config.l2, cand_feats, name="history_encoder")
    return HistoryQueryTower(customers, history_encoder, config, seed, name="query_tower"), candidate
