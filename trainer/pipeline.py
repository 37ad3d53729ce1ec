"""End to end: load -> split -> train -> evaluate -> publish."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from model_registry import Manifest, Registry
from trainer import evaluate, export
from trainer.datasets import DatasetOptions, load_dataset
from trainer.model import TrainConfig, customer_data, embed, query_embeddings, train
from trainer.split import make_split

@dataclasses.dataclass
class SyntheticConfig:
    """Sizes of the synthetic data set (default: the demo size)."""

    num_customers: int = 2_000
    num_candidates: int = 1_000
    num_interactions: int = 60_000
    num_clusters: int = 20


@dataclasses.dataclass
class PipelineConfig:
    """One training run and its publication."""

    dataset: str  # one of trainer.datasets.DATASET_NAMES
    registry: Path
    model: str
    data: DatasetOptions = dataclasses.field(default_factory=DatasetOptions)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    split_method: str = "random"  # one of trainer.split.SPLITS
    test_fraction: float = 0.2
    split_seed: int = 42
    max_test_interactions: int | None = 100_000  # sample beyond this (large synthetic runs)
    make_current: bool = True


def run(config: PipelineConfig, log: Callable[[str], None] | None = None) -> tuple[Manifest, dict[str, Any]]:
    """Trains, evaluates and publishes one version; returns (manifest, metrics)."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    registry = Registry(config.registry, config.model)  # validates the model name before any work
    data = load_dataset(config.dataset, dataclasses.replace(config.data, seed=config.split_seed))
    train_data, test_data = make_split(data, config.split_method, config.test_fraction, config.split_seed)
    log(f"{data.name}: {len(data)} interactions, {data.num_customers} customers, "
        f"{len(data.catalog)} candidates; train {len(train_data)} / test {len(test_data)}")

    result = train(train_data, config.train, log=log)
    t0 = time.perf_counter()
    es = evaluate.prepare(train_data, test_data, data.catalog, config.max_test_interactions, config.split_seed)
    model = result.model
    store = customer_data(model, train_data)
    metrics: dict[str, Any] = evaluate.hit_rates(
        evaluate.embedding_scores(query_embeddings(model, store, es.customers),
                                  embed(model.candidate_tower, es.catalog)),
        es)
    metrics["baselines"] = evaluate.baselines(train_data, es)
    metrics.update({
        "dataset": data.name,
        "tower": config.train.tower,
        "data": data.info,
        "split": {"method": config.split_method, "test_fraction": config.test_fraction, "seed": config.split_seed,
                  "num_train": len(train_data), "num_test": len(test_data)},
        "num_test_interactions": es.num_test_interactions,
        "num_test_interactions_evaluated": len(es.rows),
        "train_seconds": round(result.train_seconds, 3),
        "examples_per_second": round(result.examples_per_second, 1),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "refit_epochs": result.refit_epochs,
        "eval_seconds": round(time.perf_counter() - t0, 3),
        "config": {k: v for k, v in dataclasses.asdict(config.train).items() if k != "verbose"},
        "validation_history": result.history,
    })
    manifest = export.publish(
        registry, model, store, data.catalog, train_data, test_data, metrics,
        export.ExportConfig(dataset=data.name, tower=config.train.tower, make_current=config.make_current,
                            seed=config.split_seed))
    return manifest, metrics
