"""End to end: load -> split -> train -> evaluate -> publish."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from model_registry import Manifest, Registry, signing
from trainer.config import PipelineConfig
from trainer.data import load_dataset, make_split
from trainer.evaluation import baselines, metrics
from trainer.export import publish
from trainer.model import customer_store, embed, query_embeddings
from trainer.training import train


def run(config: PipelineConfig, log: Callable[[str], None] = lambda msg: None) -> tuple[Manifest, dict[str, Any]]:
    """Trains, evaluates and publishes one version; returns (manifest, metrics)."""
    registry = Registry(config.registry, config.model,
                        signing.private_key(config.signing_key) if config.signing_key else None)
    seed = config.train.seed
    data = load_dataset(config.dataset, config.data, seed)
    train_data, test_data = make_split(data, config.split, config.test_fraction, seed)
    log(f"{data.name}: {len(data)} interactions, {data.num_customers} customers, "
        f"{len(data.catalog)} candidates; train {len(train_data)} / test {len(test_data)}")

    result = train(train_data, config.train, log=log)
    t0 = time.perf_counter()
    es = metrics.prepare(train_data, test_data, data.catalog, config.max_test_interactions, seed)
    model = result.model
    store = customer_store(model.query_tower, train_data)
    report: dict[str, Any] = metrics.hit_rates(
        metrics.embedding_scores(query_embeddings(model, store, es.customers),
                                 embed(model.candidate_tower, es.catalog)),
        es)
    report["baselines"] = baselines.baselines(train_data, es)
    report.update({
        "dataset": data.name,
        "tower": config.train.towers.kind,
        "data": data.info,
        "split": {"method": config.split, "test_fraction": config.test_fraction, "seed": seed,
                  "num_train": len(train_data), "num_test": len(test_data)},
        "num_test_interactions": es.num_test_interactions,
        "num_test_interactions_evaluated": len(es.rows),
        "train_seconds": round(result.train_seconds, 3),
        "examples_per_second": round(result.examples_per_second, 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "refit_epochs": result.refit_epochs,
        "eval_seconds": round(time.perf_counter() - t0, 3),
        "config": dataclasses.asdict(config.train),
        "validation_history": result.history,
    })
    manifest = publish.publish(registry, model, store, data.catalog, train_data, test_data, report,
                               publish.ExportConfig(dataset=data.name, tower=config.train.towers.kind, seed=seed))
    return manifest, report
