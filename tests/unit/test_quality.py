"""The quality machinery: EASE and iALS baselines chosen on validation, the
popularity prior, the model-vs-baseline margins and the hyperparameter search
(real numpy/scipy/implicit/TensorFlow/Optuna on tiny data)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from settings.flags import replace_nested
from trainer.config import TrainConfig, recommended_config
from trainer.data.split import random_split
from trainer.data.synthetic import synthetic
from trainer.evaluation import baselines, metrics, report
from trainer.evaluation.validation import EXCLUDING_SEEN_METRICS, TARGET_METRICS, Validation, lift
from trainer.towers.prior import PRIOR_WEIGHTS, PopularityPrior, choose_prior, training_counts


def _split(seed: int = 3, interactions: int = 6_000):
    data = synthetic(300, 120, interactions, num_clusters=6, seed=seed)
    train, test = random_split(data, 0.2, seed)
    return data, train, test


def test_ease_matches_its_closed_form():
    data, train, test = _split()
    es = metrics.prepare(train, test, data.catalog)
    rows = np.arange(min(40, len(es.customers)))
    got = baselines.Ease(train, data.catalog).scores(es, 50.0)(rows)
    # The textbook form: B = I - P diagMat(1/diag(P)), P = (X'X + l2 I)^-1, zero diagonal.
    x = baselines._binary_matrix(train, data.catalog)[1].toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 50.0 * np.eye(x.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    seen = baselines._seen_rows(es, rows).astype(np.float64)
    np.testing.assert_allclose(got, seen @ b, atol=2e-3 * np.abs(seen @ b).max())


@pytest.mark.parametrize("lifts, visited", [
    ((1.0, 2.0, 3.0, 2.5, 2.0), [1, 2, 3]),  # a peak at the middle: its neighbours only
    ((1.0, 2.0, 2.5, 3.0, 4.0), [1, 2, 3, 4]),  # rising to the grid's edge
    ((4.0, 3.0, 2.5, 2.0, 1.0), [0, 1, 2, 3]),
    ((3.0, 1.0, 2.0, 1.5, 2.5), [1, 2, 3]),  # a local peak in the middle: the climb stops there, short of 3.0
])
def test_the_climb_scores_a_setting_once_and_stops_where_no_neighbour_is_better(lifts, visited):
    settings = [{"l2": float(i)} for i in range(len(lifts))]
    calls = []

    def score(setting):
        calls.append(int(setting["l2"]))
        return {**setting, "lift_over_popularity": lifts[int(setting["l2"])]}

    rows = baselines._climb(settings, score)
    assert sorted(calls) == visited and [int(row["l2"]) for row in rows] == visited
    peak = max(rows, key=lambda row: row["lift_over_popularity"])
    assert peak["lift_over_popularity"] == max(lifts[i] for i in visited)


def test_without_a_validation_split_each_baseline_takes_the_middle_value_of_each_axis():
    data, train, test = _split()
    out = baselines.baselines(train, metrics.prepare(train, test, data.catalog), None, seed=42)
    assert out["ease"]["setting"] == {"l2": 300.0}
    assert out["ials"]["setting"] == {"factors": 128, "regularization": 10.0, "alpha": 30.0}  # not a corner


def test_strong_baselines_are_chosen_on_validation_and_raise_the_references():
    data, train, test = _split()
    es = metrics.prepare(train, test, data.catalog)
    validation = Validation.carve(train, 0.1, 42, 20_000)
    popularity_on_validation = dict(validation.references)
    out = baselines.baselines(train, es, validation, seed=42)
    assert set(out) == {"popularity", "item_item_cosine", "ease", "ials"}
    assert out["ease"]["setting"]["l2"] in baselines.EASE_L2_GRID
    # EASE's L2 is climbed, not swept: the chosen value's neighbours in the grid were scored and are no better.
    scored = {row["l2"]: row["lift_over_popularity"] for row in out["ease"]["grid"]}
    assert len(scored) < len(baselines.EASE_L2_GRID)
    chosen = baselines.EASE_L2_GRID.index(out["ease"]["setting"]["l2"])
    for neighbour in baselines.EASE_L2_GRID[max(chosen - 1, 0):chosen + 2]:
        assert scored[neighbour] <= scored[baselines.EASE_L2_GRID[chosen]]
    assert len(out["ials"]["grid"]) == np.prod([len(v) for v in baselines.IALS_GRID.values()])
    best = max(out["ials"]["grid"], key=lambda row: row["lift_over_popularity"])
    assert out["ials"]["setting"] == {k: best[k] for k in baselines.IALS_GRID}
    for key in EXCLUDING_SEEN_METRICS:  # the strongest baseline's bar
        assert validation.references[key] == max(popularity_on_validation[key], out["ease"]["validation"][key],
                                                 out["ials"]["validation"][key],
                                                 out["item_item_cosine"]["validation"][key])
    # On these planted clusters item-item cosine is the strongest @10, so it sets that bar.
    cosine_at_10 = out["item_item_cosine"]["validation"]["hit_rate_excluding_seen@10"]
    assert validation.references["hit_rate_excluding_seen@10"] == cosine_at_10 > out["ials"]["validation"][
        "hit_rate_excluding_seen@10"]
    for key in set(TARGET_METRICS) - set(EXCLUDING_SEEN_METRICS):  # over all candidates: popularity's
        assert validation.references[key] == popularity_on_validation[key]
    # Planted taste clusters: the personal baselines find them, popularity cannot.
    for name in ("ease", "ials", "item_item_cosine"):
        assert out[name]["hit_rate_excluding_seen@10"] > out["popularity"]["hit_rate_excluding_seen@10"], name
    assert "skipped" in baselines.baselines(train, es, validation, dense_max_candidates=50)["ease"]


def test_popularity_prior_rides_in_one_extra_dimension():
    data, train, _ = _split()
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(len(data.catalog), 4)).astype(np.float32)
    prior = PopularityPrior(weight=0.5, temperature=0.4)
    counts = np.array([(train.candidate_ids == cid).sum() for cid in data.catalog])
    served = prior.queries(q) @ prior.candidates(c, training_counts(data.catalog, train)).T
    # Ranking by served scores = ranking by logits q.c / T + weight * log(1 + count).
    np.testing.assert_allclose(served / 0.4, q @ c.T / 0.4 + 0.5 * np.log1p(counts)[None, :], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.log1p(training_counts(data.catalog, train)), np.log1p(counts), rtol=1e-6)
    none = PopularityPrior(0.0, 0.4)
    assert none.queries(q) is q and none.candidates(c, counts) is c
    assert prior.describe() == {"weight": 0.5, "query_constant": pytest.approx(0.2), "extra_dimension": True}


def test_prior_weight_is_chosen_on_validation():
    data, train, _ = _split()
    validation = Validation.carve(train, 0.2, 42, 20_000)
    n = len(validation.eval_set.customers)
    # Queries that know nothing: only the prior can rank, so a positive weight must win.
    prior, rates, grid = choose_prior(np.zeros((n, 4), np.float32), np.zeros((len(data.catalog), 4), np.float32),
                                      1.0, validation)
    assert prior.weight > 0 and len(grid) > 2
    assert rates["hit_rate@10"] == pytest.approx(validation.popularity["hit_rate@10"])
    assert lift(rates, validation.references) == max(row["lift"] for row in grid) == pytest.approx(1.0)


def test_a_model_whose_scores_are_nan_hits_nothing():
    data, train, test = _split()
    # Customers with training items only: the others are scored by popularity, whatever the model.
    test = test.take(np.flatnonzero(np.isin(test.customer_ids, train.customer_ids)))
    es = metrics.prepare(train, test, data.catalog)
    # A diverged model: NaN compares false with every score, which used to rank each target first.
    q = np.full((len(es.customers), 4), np.nan, np.float32)
    c = np.ones((len(es.catalog), 4), np.float32)
    rates = metrics.hit_rates(metrics.embedding_scores(q, c), es, (1, 10, 1_000))
    assert set(rates.values()) == {0.0}


def test_margins_and_table_say_by_how_much_the_model_wins_or_loses():
    rates = {key: 0.2 for key in TARGET_METRICS}
    result = {**rates, "baselines": {"popularity": {key: 0.1 for key in TARGET_METRICS},
                                     "ease": {key: 0.25 for key in TARGET_METRICS},
                                     "item_item_cosine": {"skipped": "too big"}}}
    result["margins"] = report.margins(result)
    assert result["margins"] == {"popularity": {key: 1.0 for key in TARGET_METRICS},
                                 "ease": {key: -0.2 for key in TARGET_METRICS}}
    table = report.format_table(result, ks=(10, 100))
    assert "model vs baseline" in table and "+1.000" in table and "-0.200" in table and "excl@100" in table


def test_search_starts_at_the_presets_and_leaves_pinned_flags_alone():
    from trainer.training import refit
    from trainer.tuning import search

    data, train, test = _split(interactions=4_000)
    validation = Validation.carve(train, 0.1, 42, 20_000)
    pinned = {"max_epochs": 2, "towers": {"embedding_dim": 8}}

    def preset(kind: str) -> TrainConfig:
        return replace_nested(recommended_config(kind), pinned)

    found = search(train, validation, preset, "id", pinned, budget_s=20.0, has_customer_features=False)
    trials = found.trials
    assert len(trials) >= 2  # the id preset, then the history preset
    # The id preset (its L2 of 0 clipped into the searched range), then the history preset.
    assert trials[0]["params"] == {"towers.kind": "id", "towers.l2": 1e-4, "learning_rate": 0.1, "temperature": 1.0,
                                   "batch_size": 512}
    assert trials[1]["params"]["towers.kind"] == "history"
    assert all("towers.embedding_dim" not in t["params"] for t in trials)  # pinned
    assert sum(t.get("best", False) for t in trials) == 1
    best = next(t for t in trials if t["best"])
    assert round(found.best.lift, 4) == best["lift"] == max(t["lift"] for t in trials if t["state"] == "complete")
    assert found.config.towers.kind == best["params"]["towers.kind"] and found.config.towers.embedding_dim == 8
    result = refit(train, found.config, found.best)
    assert result.prior == found.best.prior and result.refit_epochs == found.best.best_epoch + 1
    assert [row["weight"] for row in best["prior_grid"]] == list(PRIOR_WEIGHTS)
    described = found.describe(20.0)
    assert described["best_trial"] == best["number"] and described["trials"] is trials


def test_a_pinned_prior_weight_is_served_without_a_validation_split():
    from trainer.towers.config import TowerConfig
    from trainer.training import train

    _, train_set, _ = _split(interactions=2_000)
    # No validation split: nothing to choose the weight on, but --prior-weight needs no choosing.
    config = TrainConfig(towers=TowerConfig(embedding_dim=8), max_epochs=1, validation_fraction=0.0,
                         prior_weight=0.5, temperature=0.5)
    result = train(train_set, config)
    assert result.prior == PopularityPrior(0.5, 0.5)


def test_lift_leaves_out_a_metric_every_model_hits_every_time():
    # 60 candidates: at @100 the model and every baseline hit every time, a ratio of 1 whatever the model.
    refs = {"hit_rate@10": 0.25, "hit_rate@100": 1.0, "hit_rate_excluding_seen@10": 0.3,
            "hit_rate_excluding_seen@100": 1.0}
    rates = {"hit_rate@10": 0.3, "hit_rate@100": 1.0, "hit_rate_excluding_seen@10": 0.36,
             "hit_rate_excluding_seen@100": 1.0}
    assert lift(rates, refs) == pytest.approx(1.2)  # not capped at 1: the search can rank models that win
    assert lift({**rates, "hit_rate@10": 0.2}, refs) == pytest.approx(0.8)
    assert lift({key: 1.0 for key in rates}, {key: 1.0 for key in refs}) == 1.0  # nothing but saturated ones
    assert lift({**rates, "hit_rate@100": 1.0}, {**refs, "hit_rate@100": 0.9}) == pytest.approx(1.111, abs=1e-3)


def test_early_stopping_over_a_small_catalogue_watches_a_rate_that_can_move():
    from trainer.config import informative_monitor
    from trainer.towers.config import TowerConfig
    from trainer.training import fit_early_stopped

    assert informative_monitor("hit_rate_excluding_seen@100", 1682) == "hit_rate_excluding_seen@100"
    assert informative_monitor("hit_rate_excluding_seen@100", 100) == "hit_rate_excluding_seen@10"
    assert informative_monitor("hit_rate@100", 60) == "hit_rate@10"
    assert informative_monitor("hit_rate@10", 8) == "hit_rate@10"  # nothing smaller to watch
    data = synthetic(300, 60, 4_000, num_clusters=6, seed=5)
    train, _ = random_split(data, 0.2, 5)
    validation = Validation.carve(train, 0.1, 5, 10_000)
    lines: list[str] = []
    config = TrainConfig(towers=TowerConfig(embedding_dim=8), max_epochs=4, patience=4, prior_weight=0.0)
    stopped = fit_early_stopped(train, validation, config, lines.append)
    # @100 over 60 candidates is 1 at every epoch: watched, it kept the first epoch whatever came after.
    assert {row["hit_rate_excluding_seen@100"] for row in stopped.history} == {1.0}
    at_10 = [row["hit_rate_excluding_seen@10"] for row in stopped.history]
    assert stopped.best_epoch == 1 + int(np.argmax(at_10)) and any("watches hit_rate_excluding_seen@10" in line
                                                                      for line in lines)


def _fake_run(lift_value: float):
    from types import SimpleNamespace

    return SimpleNamespace(lift=lift_value, best_epoch=1, epochs_run=2, prior=PopularityPrior(), prior_grid=[],
                           validation_rates={}, cut_by_deadline=False)


def test_a_search_of_a_number_of_trials_runs_that_many_each_to_its_early_stop(monkeypatch):
    """A search in time depends on the machine's speed: two runs alike up to trial 12, the slower one stopped four
    trials sooner and another trial won. A number of trials (--tune-trials) chooses alike on any machine."""
    from trainer import tuning

    deadlines = []

    def fit(train_data, validation, config, log, on_epoch=None, deadline=None):
        deadlines.append(deadline)
        return _fake_run(1.0 + config.learning_rate)

    monkeypatch.setattr(tuning, "fit_early_stopped", fit)
    _, train, _ = _split(interactions=500)
    found = tuning.search(train, None, recommended_config, "id", {}, budget_s=0, has_customer_features=False,
                          trials=5)
    assert len(found.trials) == 5 and deadlines == [None] * 5
    assert found.describe(0, 5)["trials_asked"] == 5
    assert [t["cut_by_budget"] for t in found.trials] == [False] * 5


def test_a_search_whose_budget_one_preset_spent_says_which_presets_never_ran(monkeypatch):
    # At 1M interactions the id preset took the whole budget: the search was one trial, and nothing said so.
    from trainer import tuning

    monkeypatch.setattr(tuning, "fit_early_stopped", lambda *a, **k: time.sleep(0.05) or _fake_run(1.0))
    _, train, _ = _split(interactions=500)
    lines: list[str] = []
    found = tuning.search(train, None, recommended_config, "id", {}, budget_s=0.01, has_customer_features=False,
                          log=lines.append)
    assert len(found.trials) == 1
    assert ("warning: the search finished 1 trial(s); the history family's preset never ran: raise --tune-budget-s "
            "(or give --tune-trials), or pin --tower") in lines
    lines.clear()
    tuning.search(train, None, recommended_config, "id", {}, budget_s=0, has_customer_features=False, log=lines.append)
    tuning.search(train, None, recommended_config, "id", {}, budget_s=300, has_customer_features=False,
                  log=lines.append, trials=1)
    assert not [line for line in lines if line.startswith("warning")]  # no search was asked for


def test_a_run_the_search_s_budget_cut_says_so():
    from trainer.towers.config import TowerConfig
    from trainer.training import fit_early_stopped

    data = synthetic(300, 60, 4_000, num_clusters=6, seed=5)
    train, _ = random_split(data, 0.2, 5)
    validation = Validation.carve(train, 0.1, 5, 10_000)
    config = TrainConfig(towers=TowerConfig(embedding_dim=8), max_epochs=3, patience=3, prior_weight=0.0)
    cut = fit_early_stopped(train, validation, config, deadline=time.monotonic() - 1)
    assert (cut.epochs_run, cut.cut_by_deadline) == (1, True)
    assert not fit_early_stopped(train, validation, config).cut_by_deadline


def test_a_trial_that_fails_fails_alone_and_the_search_goes_on(monkeypatch):
    """One configuration out of memory, or diverging to NaN, must not end the default run (a search of many)."""
    from trainer import tuning

    outcomes = iter([float("nan"), MemoryError("out of memory for batch 1024")])

    def fit(train_data, validation, config, log, on_epoch=None, deadline=None):
        outcome = next(outcomes, 1.0 + config.learning_rate)
        if isinstance(outcome, Exception):
            raise outcome
        return _fake_run(outcome)

    monkeypatch.setattr(tuning, "fit_early_stopped", fit)
    _, train, _ = _split(interactions=500)

    found = tuning.search(train, None, recommended_config, "id", {}, budget_s=0.5, has_customer_features=False)
    trials = found.trials
    assert [t["state"] for t in trials[:2]] == ["failed", "failed"] and len(trials) > 2
    assert trials[0]["error"] == "FloatingPointError: validation lift is nan: the training diverged"
    assert trials[1]["error"] == "MemoryError: out of memory for batch 1024"
    best = next(t for t in trials if t["best"])
    assert round(found.best.lift, 4) == max(t["lift"] for t in trials if t["state"] == "complete") == best["lift"]

    def failing(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(tuning, "fit_early_stopped", failing)
    # Three trials in a row failing alike end the search (it ran hundreds in the budget), and the message sends the
    # reader to the log's tracebacks, not to a run without a search, which prints the same line.
    with pytest.raises(ValueError, match=r"^every trial of the hyperparameter search failed \(3 trials\); the "
                                         r"first with MemoryError: out of memory \(the log above holds each "
                                         r"failure's traceback\)$"):
        tuning.search(train, None, recommended_config, "id", {}, budget_s=30, has_customer_features=False)
    # Without a search (--tune-budget-s 0) the preset's one trial failed: its error, without advice to do what was done.
    with pytest.raises(ValueError, match=r"^training the preset failed: MemoryError: out of memory$"):
        tuning.search(train, None, recommended_config, "id", {}, budget_s=0, has_customer_features=False)


def test_a_stop_that_a_library_turned_into_its_own_error_still_stops_the_search(monkeypatch):
    """SIGINT's exception raised inside a library's call can come out as the library's error, which fails the trial
    alone: the search would then run on (and publish) with later signals ignored. The stop asked for ends it."""
    from trainer import interrupts, tuning

    def fit(train_data, validation, config, log, on_epoch=None, deadline=None):
        interrupts.request(signal.SIGINT)  # as the handler does, before it raises
        raise RuntimeError("Cancelled: the op was interrupted")  # what reached the search instead

    monkeypatch.setattr(tuning, "fit_early_stopped", fit)
    _, train, _ = _split(interactions=500)
    try:
        with pytest.raises(interrupts.Interrupted):
            tuning.search(train, None, recommended_config, "id", {}, budget_s=5.0,
                          has_customer_features=False)
    finally:
        interrupts.clear()
