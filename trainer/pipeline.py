"""End to end: load -> split -> baselines -> search -> refit -> evaluate -> publish."""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np

from model_registry import Manifest, Registry, signing
from settings.flags import replace_nested
from trainer import distribute, interrupts
from trainer.config import PipelineConfig, TrainConfig, recommended_config
from trainer.data import Interactions, load_dataset, make_split
from trainer.evaluation import baselines, metrics
from trainer.evaluation.report import margins
from trainer.evaluation.validation import Validation
from trainer.export import publish
from trainer.model import customer_store, embed, query_embeddings
from trainer.provenance import provenance
from trainer.towers.config import covering_history_length
from trainer.training import refit, train
from trainer.tuning import search

# Below this share of test interactions whose customer was trained on, the run warns (see ``_share_known``): most of
# every system's hit rate is then its cold-start guess. A temporal split of ml-100k is at 14.8%.
WARM_SHARE_WARNING = 0.5


def _share_known(train_data: Interactions, test_data: Interactions) -> float:
    """The share of ``test_data``'s interactions whose customer has interactions in ``train_data``: the others'
    hit rates measure cold-start guesses, not what the model learned of the customer."""
    if not len(test_data):
        return 0.0
    return float(np.isin(test_data.customer_ids, np.unique(train_data.customer_ids)).mean())


def run(config: PipelineConfig, log: Callable[[str], None] = lambda msg: None,
        strategy: distribute.Strategy | None = None) -> tuple[Manifest | None, dict[str, Any]]:
    """Trains, evaluates and publishes one version; returns (manifest, metrics).

    Under a multi-worker ``strategy`` (``trainer.distribute``) every worker
    trains in lockstep and only the chief evaluates and publishes: the others
    return (None, {}) once training is done."""
    registry = Registry(config.registry, config.model,
                        signing.private_key(config.signing_key) if config.signing_key else None)
    seed = config.train.seed
    started = time.perf_counter()
    data = load_dataset(config.dataset, config.data, seed)
    made_from = provenance(config)  # the files as read, before hours of training
    train_data, test_data = make_split(data, config.split, config.test_fraction, seed)
    dropped = "".join(f", {key} {count}" for key, count in data.info.items() if key.startswith("dropped_"))
    # How a file's times were read: a unit misjudged is a model that learnt another period than serving's now.
    times = (f"; times in {data.info['time_unit']}, {data.info['time_range']}" if data.info.get("time_range")
             else "")
    log(f"{data.name}: {len(data)} interactions, {data.num_customers} customers, "
        f"{len(data.catalog)} candidates{dropped}; train {len(train_data)} / test {len(test_data)}{times}")
    known = _share_known(train_data, test_data)
    log(f"test interactions whose customer has training interactions: {known:.1%}")
    if known < WARM_SHARE_WARNING:
        log(f"warning: only {known:.1%} of the test interactions are of customers with training interactions: the "
            f"hit rates mostly compare cold-start guesses (customers with one interaction are in train or test, "
            f"never both; under --split temporal, customers who arrived after the cut are in test alone)")

    t0 = time.perf_counter()
    phases = {"load_and_split": t0 - started}
    es = metrics.prepare(train_data, test_data, data.catalog, config.max_test_interactions, seed)
    validation = Validation.carve(train_data, config.train.validation_fraction, seed,
                                  config.train.max_validation_interactions)
    # The baselines feed the report and the bars the chief's prior is chosen against;
    # another worker's prior is never published, and its baselines would only take
    # CPU from the chief where workers share a machine.
    baseline_report = {}
    if distribute.is_chief(strategy):
        baseline_report = baselines.baselines(train_data, es, validation, seed=seed, log=log)
        log(f"baselines in {time.perf_counter() - t0:.0f}s")
    phases["baselines"] = time.perf_counter() - t0

    # Defaults that follow the data, unless the command line set them.
    from_data = {} if "history_length" in config.pinned.get("towers", {}) else {
        "towers": {"history_length": covering_history_length(train_data.customer_ids)}}
    chosen, tuning = replace_nested(config.train, from_data), None
    t_train = time.perf_counter()
    # From here TensorFlow runs in this thread: a stop waits for the next batch's end or check (see ``interrupts``);
    # one in the publish's last steps (after its files are written) lets it finish.
    with interrupts.deferred():
        with distribute.scope(strategy):
            if validation is None:
                if config.tune_budget_s > 0 or config.tune_trials > 0:  # else a search asked for is skipped unsaid
                    log(f"no validation split (--validation-fraction {config.train.validation_fraction:g} of "
                        f"{len(train_data)} training interactions holds none): no search, no prior chosen; the "
                        f"preset is trained as given")
                result = train(train_data, chosen, log=log)
            else:
                def preset(kind: str) -> TrainConfig:
                    return replace_nested(replace_nested(recommended_config(kind), from_data),
                                          config.pinned)

                found = search(train_data, validation, preset, config.train.towers.kind, config.pinned,
                               config.tune_budget_s, bool(train_data.customer_features), log, config.tune_trials)
                chosen, tuning = found.config, found.describe(config.tune_budget_s, config.tune_trials)
                result = refit(train_data, chosen, found.best, log)
        if strategy is not None:
            distribute.check_exportable(result.model)
            if not distribute.is_chief(strategy):
                return None, {}

        t1 = time.perf_counter()
        phases["search_and_refit"] = t1 - t_train
        model, prior = result.model, result.prior
        # The evaluation's queries read the training split only: the test interactions are what they are judged on.
        store = customer_store(model.query_tower, train_data)
        report: dict[str, Any] = metrics.hit_rates(
            metrics.embedding_scores(prior.queries(query_embeddings(model, store, es.customers)),
                                     prior.candidates(embed(model.candidate_tower, es.catalog), es.train_counts)),
            es)
        interrupts.check()  # a stop during the evaluation: the publish is not begun
        t_publish = time.perf_counter()
        phases["evaluation"] = t_publish - t1
        report["baselines"] = baseline_report
        report["margins"] = margins(report)
        report.update({
            "dataset": data.name,
            "tower": chosen.towers.kind,
            "data": {**data.info, "test_share_customer_in_train": round(known, 4)},
            "split": {"method": config.split, "test_fraction": config.test_fraction, "seed": seed,
                      "num_train": len(train_data), "num_test": len(test_data)},
            "num_test_interactions": es.num_test_interactions,
            "num_test_interactions_evaluated": len(es.rows),
            # What the "excluding seen" rates are over: the evaluated interactions whose item is new to the customer.
            "num_test_interactions_new_to_customer": int((~es.repeats).sum()),
            "train_seconds": round(result.train_seconds, 3),
            "examples_per_second": round(result.examples_per_second, 1),
            "workers": result.workers,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "refit_epochs": result.refit_epochs,
            "eval_seconds": round(phases["evaluation"], 3),
            "config": dataclasses.asdict(chosen),
            "popularity_prior": prior.describe(),
            "tuning": tuning,
            "validation_history": result.history,
            "provenance": made_from,
            # Where a run's time went: --tune-budget-s bounds the search's later trials only (at 1M interactions the
            # baselines took 333 s and the whole run 2.9 times the budget, and nothing said so). The publish, which
            # writes this report into the version, is on the run's last line alone.
            "run_seconds": {phase: round(seconds, 1) for phase, seconds in phases.items()},
        })
        # Serving knows every interaction of the data, the newest (held out above) most of all: the published store
        # (histories, exclude_seen's items, the customers) is built from train + test, once evaluated. The towers are
        # the evaluated ones: a customer only in the test split is unknown to an id tower, so it is served the
        # popular list, less its stored items under exclude_seen.
        served = customer_store(model.query_tower, data)
        report["customer_store"] = {"customers": len(served.ids), "interactions": len(data),
                                    "customers_only_in_test": len(served.ids) - len(store.ids)}
        log(f"customer store: {len(served.ids)} customers, {len(data)} interactions (train + test; evaluated with "
            f"the train split's {len(store.ids)} customers)")
        interrupts.check()  # a stop a library swallowed since the search: nothing is published after it
        manifest = publish.publish(registry, model, served, data.catalog, train_data, test_data, report,
                                   publish.ExportConfig(dataset=data.name, tower=chosen.towers.kind, seed=seed,
                                                        shards=config.index_shards),
                                   prior)
        phases["publish"] = time.perf_counter() - t_publish
        trials = f" ({len(tuning['trials'])} search trials)" if tuning else ""
        log(f"run: {time.perf_counter() - started:.0f}s against --tune-budget-s {config.tune_budget_s:g}"
            f"{trials}: " + ", ".join(f"{phase.replace('_', ' ')} {seconds:.0f}s" for phase, seconds in phases.items()))
        return manifest, report
