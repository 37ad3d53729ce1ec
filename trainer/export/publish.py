"""Turns a trained model into a published registry version.

Writes the query tower SavedModel (``saved_model``; and the candidate tower's
when it takes catalogue features), the customer store, the
candidate embeddings and ids, their attributes (the catalogue's columns, what
filters select on), the ScaNN searcher (``index``), the popularity
fallback, probe queries and the metrics report, then publishes atomically
through ``Registry.publish``. Publishing does not make the version live: that
is the rollout's job (``recsys-publish``).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import numpy as np

from model_registry import IndexSpec, Manifest, Registry
from model_registry import manifest as mf
from model_registry.attributes import from_catalogue
from model_registry.customers import CustomerStore, feature_at
from model_registry.ids import index_of
from trainer import interrupts
from trainer.data import Interactions
from trainer.export import index as index_builder
from trainer.export.saved_model import save_candidate_tower, save_query_tower
from trainer.model import TwoTowerModel, embed, query_embeddings
from trainer.towers.prior import PopularityPrior, training_counts

MAX_POPULAR = 1000
MAX_PROBE_QUERIES = 1000


def popular_candidates(train: Interactions, limit: int = MAX_POPULAR) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``limit`` most interacted training candidates (most popular first,
    ties by id) and their share of training interactions."""
    ids, counts = np.unique(train.candidate_ids, return_counts=True)
    order = np.lexsort((ids, -counts))[:limit]  # np.unique sorts ids, so ties go by id
    return ids[order].astype(str), (counts[order] / max(len(train), 1)).astype(np.float32)


def probe_customers(test: Interactions, known: np.ndarray, limit: int = MAX_PROBE_QUERIES,
                    seed: int = 42) -> np.ndarray:
    """A seeded sample of up to ``limit`` distinct held-out customers of ``known``
    (sorted: the customers trained on); of ``known`` itself if none is held out.

    The query service searches with a known customer's vector only (an unknown
    one gets the popular list): the unknown vector, one for every cold
    customer, would weigh the recall and the index tuning towards one query
    nobody searches with (64% of the probes of MovieLens 100K split by time)."""
    customers = np.unique(test.customer_ids)
    customers = customers[index_of(known, customers) >= 0]
    if len(customers) == 0:
        customers = np.asarray(known)
    if len(customers) > limit:
        customers = np.sort(np.random.default_rng(seed).choice(customers, limit, replace=False))
    return customers


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to publish and how."""

    dataset: str
    tower: str
    seed: int
    index: index_builder.IndexConfig = dataclasses.field(default_factory=index_builder.IndexConfig)
    shards: int = 1  # above 1: the candidates split by id (``manifest.shard_of``), a searcher per shard


def publish(registry: Registry, model: TwoTowerModel, store: CustomerStore, catalog: np.ndarray,
            train: Interactions, test: Interactions, metrics: dict[str, Any],
            config: ExportConfig, prior: PopularityPrior = PopularityPrior()) -> Manifest:
    """Builds every artifact of a version and publishes it; returns the manifest.

    ``catalog`` (sorted unique candidate ids) defines the index order; ``store``
    holds the served customers' inputs, built from ``train`` and ``test`` alike
    (written as the customer store; probe queries, of held-out customers
    trained on, are embedded from it). ``prior`` goes into the vectors
    (one more dimension, see ``trainer.towers.prior``). The ScaNN recall is
    measured on the probe queries before anything is written; below what the
    index service loads (``IndexConfig.min_recall``) it raises ValueError.
    """
    catalog = np.asarray(catalog).astype(str)
    cand_emb = prior.candidates(embed(model.candidate_tower, catalog), training_counts(catalog, train))
    trained_on = np.unique(train.customer_ids).astype(str)  # an id tower knows no other customer
    probes = prior.queries(query_embeddings(model, store, probe_customers(test, trained_on, seed=config.seed)))
    shards, spec = index_builder.build_shards(cand_emb, probes, catalog, config.shards, config.index)
    pop_ids, pop_scores = popular_candidates(train)
    dim = int(cand_emb.shape[1])
    attributes = None
    if train.candidate_features:  # the catalogue's columns become filterable attributes, in index order
        rows = index_of(train.catalog, catalog)
        attributes = from_catalogue({col: feature_at(values, rows) for col, values in train.candidate_features.items()})

    def write(staging: Path):
        save_query_tower(model.query_tower, staging / mf.QUERY_TOWER_DIR,
                         prior.query_constant if prior.weight else None)
        if model.candidate_tower.encoder.has_features:
            save_candidate_tower(model.candidate_tower, staging / mf.CANDIDATE_TOWER_DIR, bool(prior.weight))
        store.save(staging / mf.CUSTOMER_STORE_FILE)
        shard_specs = index_builder.save_candidates(staging, catalog, cand_emb, shards, attributes)
        mf.write_popular(staging, pop_ids, pop_scores)
        np.save(staging / mf.PROBE_QUERIES_FILE, probes, allow_pickle=False)
        (staging / mf.METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True,
                                                          default=_json_default))
        # A stop that came while the towers were saved and the index built: the registry removes the staging
        # folder and nothing is published (the few steps after this, once begun, complete the publish).
        interrupts.check()

        def build_manifest(version: int, files: dict[str, str]) -> Manifest:
            return Manifest(
                model=registry.model,
                version=version,
                embedding_dim=dim,
                num_candidates=len(catalog),
                tower=config.tower,
                dataset=config.dataset,
                created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                index=IndexSpec(**dataclasses.asdict(spec)),
                files=files,
                shards=shard_specs,
                metrics=json.loads(json.dumps(metrics, default=_json_default)),
            )

        return build_manifest

    return registry.publish(write)
