"""Every tower family: train one epoch on a tiny synthetic set, export, reload the
SavedModel with plain TensorFlow, call its signature with the documented raw
inputs, serve it through the query service's QueryModel, and check the
customer store layout (real TensorFlow, no mocks)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import settings.tf_env  # noqa: F401
import tensorflow as tf

from model_registry import IndexSpec, Manifest
from model_registry.customers import DEFAULT_HISTORY_LENGTH
from model_registry.manifest import (CANDIDATE_IDS_FILE, CUSTOMER_STORE_FILE, MANIFEST_FILE, QUERY_TOWER_DIR,
                                     checksum_tree, write_popular)
from model_registry.tower_inputs import REQUEST_TIME, tower_inputs
from query_service.tower import QueryModel
from settings.flags import replace_nested
from trainer.config import TrainConfig
from trainer.data import Interactions
from trainer.data.synthetic import synthetic
from trainer.export.saved_model import save_query_tower
from trainer.model import call_query_tower, customer_store, query_embeddings
from trainer.towers.config import TOWERS, TowerConfig
from trainer.training import TrainingHistories, _new_model, train

HISTORY_LENGTH = 7


@pytest.fixture(scope="module")
def data() -> Interactions:
    d = synthetic(120, 60, 2500, num_clusters=4, seed=3)
    ids = np.unique(d.customer_ids)[:-5]  # a few customers have no feature record
    rng = np.random.default_rng(0)
    age = rng.integers(18, 70, len(ids)).astype(np.float32)
    age[0] = np.nan
    return dataclasses.replace(d, customer_feature_ids=ids, customer_features={
        "age": age, "gender": rng.choice(np.array(["M", "F"]), len(ids)),
        "zip": rng.choice(np.array(["12345", "55455", "K1A0B"]), len(ids))})


def _config(tower: str) -> TrainConfig:
    return TrainConfig(towers=TowerConfig(kind=tower, embedding_dim=8, history_length=HISTORY_LENGTH),
                       max_epochs=1, batch_size=256)


def _served(tower, store, path) -> QueryModel:
    """The tower and store published as a version directory, loaded as the query service does."""
    save_query_tower(tower, path / QUERY_TOWER_DIR)
    store.save(path / CUSTOMER_STORE_FILE)
    write_popular(path, np.array(["i000001"]), np.array([1.0]))
    np.save(path / CANDIDATE_IDS_FILE, np.array(["i000001"]))
    manifest = Manifest(model="m", version=1, embedding_dim=8, num_candidates=1, tower=tower.kind, dataset="test",
                        created_at="2026-01-01T00:00:00Z", index=IndexSpec(kind="brute_force"),
                        files=checksum_tree(path))
    (path / MANIFEST_FILE).write_text(manifest.to_json())
    return QueryModel.load(path, manifest)


@pytest.mark.parametrize("tower", TOWERS)
def test_tower_trains_exports_and_serves(tower, data, tmp_path):
    result = train(data, _config(tower))
    model = result.model
    store = customer_store(model.query_tower, data)
    served = _served(model.query_tower, store, tmp_path)

    signature = tf.saved_model.load(str(tmp_path / "query_tower")).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    expected = {"customer_id"}
    if tower in ("history", "sequence"):
        expected.add("history")
        assert specs["history"].shape.as_list() == [None, HISTORY_LENGTH] and specs["history"].dtype == tf.string
    if tower == "features":
        expected |= {"age", "gender", "zip"}
        assert specs["age"].dtype == tf.float32 and specs["gender"].dtype == tf.string
        assert specs["zip"].dtype == tf.string
    assert set(specs) == expected
    assert specs["customer_id"].dtype == tf.string and specs["customer_id"].shape.as_list() == [None]

    known_id = store.ids[0]
    item = str(data.catalog[0])
    inputs = {"customer_id": tf.constant([known_id, "nobody", "nobody"])}
    if "history" in expected:
        hist = np.full((3, HISTORY_LENGTH), "", dtype=object)
        hist[0] = store.history[0][:HISTORY_LENGTH]
        hist[2, 0], hist[2, 1] = item, "not-an-item"
        inputs["history"] = tf.constant(hist.astype(str))
    if tower == "features":
        inputs["age"] = tf.constant([31.0, np.nan, 80.0], tf.float32)
        inputs["gender"] = tf.constant(["M", "", "X"])
        inputs["zip"] = tf.constant(["12345", "", "99999"])
    out = signature(**inputs)
    assert out["embedding"].dtype == tf.float32 and out["embedding"].shape == (3, 8)
    assert np.isfinite(out["embedding"].numpy()).all()
    assert out["known"].dtype == tf.bool
    known = out["known"].numpy().tolist()
    assert known[0] is True and known[1] is False  # unknown id, empty history
    assert known[2] is (tower in ("history", "sequence"))  # unknown id, one known history item
    if tower in ("history", "sequence"):
        emb = out["embedding"].numpy()
        assert not np.allclose(emb[2], emb[1])  # the history makes it personal

    # One rule for the inputs: the query service serves every customer, stored or
    # unknown (empty history, missing features), with the embedding the trainer
    # evaluated it with.
    customers = np.concatenate([store.ids[:5], ["nobody", "c999999"]])
    np.testing.assert_allclose(served.embed(customers.tolist())[0], query_embeddings(model, store, customers),
                               rtol=1e-4, atol=1e-5)
    local = call_query_tower(model.query_tower, tower_inputs(model.query_tower.takes, store, store.ids[:5]))[0]
    served_inputs = {k: tf.constant(v) for k, v in tower_inputs(model.query_tower.takes, store,
                                                                 store.ids[:5]).items()}
    np.testing.assert_allclose(signature(**served_inputs)["embedding"].numpy(), local, rtol=1e-4, atol=1e-5)

    _check_store(tmp_path / CUSTOMER_STORE_FILE, data, tower)


def _check_store(path, data: Interactions, tower: str) -> None:
    with np.load(path, allow_pickle=False) as z:
        files = set(z.files)
        base = {"ids", "history", "seen_offsets", "seen_items"}
        feats = {"feature__age", "feature__gender", "feature__zip"} if tower == "features" else set()
        assert files == base | feats
        ids, history, offsets, seen = z["ids"], z["history"], z["seen_offsets"], z["seen_items"]
        assert ids.dtype.kind == "U" and np.array_equal(ids, np.unique(data.customer_ids))
        length = HISTORY_LENGTH if tower in ("history", "sequence") else DEFAULT_HISTORY_LENGTH
        assert history.dtype.kind == "U" and history.shape == (len(ids), length)
        assert offsets.dtype == np.int64 and offsets.shape == (len(ids) + 1,) and offsets[0] == 0
        assert seen.dtype.kind == "U" and offsets[-1] == len(seen)
        for r in (0, len(ids) // 2, len(ids) - 1):
            mask = data.customer_ids == ids[r]
            assert set(seen[offsets[r]:offsets[r + 1]].tolist()) == set(data.candidate_ids[mask].tolist())
            # Most recent first by timestamp, "" padded.
            order = np.lexsort((data.candidate_ids[mask], -data.timestamps[mask]))
            expect = data.candidate_ids[mask][order][:length].tolist()
            assert history[r].tolist() == expect + [""] * (length - len(expect))
        if tower == "features":
            assert z["feature__age"].dtype == np.float32 and z["feature__gender"].dtype.kind == "U"
            assert z["feature__zip"].shape == (len(ids),)
            assert np.isnan(z["feature__age"][0])  # the missing value stays missing; the tower imputes


def test_training_histories_exclude_the_target():
    d = Interactions(np.array(["u", "u", "u", "v"]), np.array(["a", "b", "c", "a"]),
                     np.array([1, 3, 2, 5], np.int64))
    h = TrainingHistories.build(d, 3).lookup(tf.range(len(d), dtype=tf.int64)).numpy().astype(str)
    # u's items by recency: b (3), c (2), a (1).
    assert h.tolist() == [["b", "c", ""], ["c", "a", ""], ["b", "a", ""], ["", "", ""]]


def test_unknown_tower_is_rejected():
    with pytest.raises(ValueError, match="kind: must be one of id, features"):
        TowerConfig(kind="nope")


def test_features_tower_time_input_is_clipped_to_the_training_period(data, tmp_path):
    """With time features the tower takes ``request_time``; a serving time after the
    training period embeds like the period's last moment, an earlier one differently."""
    result = train(data, replace_nested(_config("features"), {"towers": {"time_features": True}}))
    tower = result.model.query_tower
    first, last = tower.time_range
    assert (first, last) == (float(data.timestamps.min()), float(data.timestamps.max()))
    save_query_tower(tower, tmp_path / "query_tower")
    signature = tf.saved_model.load(str(tmp_path / "query_tower")).signatures["serving_default"]
    spec = signature.structured_input_signature[1][REQUEST_TIME]
    assert spec.dtype == tf.float64 and spec.shape.as_list() == [None]

    def embed(t: float) -> np.ndarray:
        inputs = tower_inputs(tower.takes, customer_store(tower, data), [str(data.customer_ids[0])], request_time=t)
        return signature(**{k: tf.constant(v) for k, v in inputs.items()})["embedding"].numpy()

    np.testing.assert_allclose(embed(last + 10 * 365 * 86_400), embed(last), rtol=1e-6)
    assert not np.allclose(embed(first), embed(last))


def test_refit_trains_on_the_validation_share_too(data):
    """Without refit, a candidate whose only events fall in the validation share keeps its
    initial embedding; the refit model has trained on every training event."""
    config = dataclasses.replace(_config("id"), max_epochs=2, validation_fraction=0.2)
    perm = np.random.default_rng(config.seed).permutation(len(data))
    held_out = data.take(np.sort(perm[:int(len(data) * config.validation_fraction)]))
    fitted = data.take(np.sort(perm[int(len(data) * config.validation_fraction):]))
    # Relabel one validation event's candidate as a catalog item no fitted event has.
    lonely = "only-in-validation"
    candidate_ids = data.candidate_ids.astype(object)
    candidate_ids[perm[0]] = lonely
    relabelled = dataclasses.replace(data, candidate_ids=candidate_ids.astype(str),
                                     catalog=np.sort(np.append(data.catalog, lonely)))
    assert lonely not in set(fitted.candidate_ids) and len(held_out) > 0

    def lonely_vector(refit: bool) -> np.ndarray:
        result = train(relabelled, dataclasses.replace(config, refit=refit))
        assert result.refit_epochs == (result.best_epoch + config.refit_extra_epochs if refit else 0)
        return result.model.candidate_tower(tf.constant([lonely])).numpy()[0]

    untouched = _new_model(relabelled, config).candidate_tower(tf.constant([lonely])).numpy()[0]
    np.testing.assert_allclose(lonely_vector(refit=False), untouched)
    assert not np.allclose(lonely_vector(refit=True), untouched)


def _catalogue() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """30 candidates with free text, categories (two columns), a float with a gap and an int."""
    rng = np.random.default_rng(1)
    catalog = np.array([f"c{j:02d}" for j in range(30)])
    words = np.array(["red", "blue", "fast", "slow", "big", "small", "old", "new"])
    return catalog, {
        "title": np.array([f"{' '.join(rng.choice(words, 3))} item {j} ({1990 + j})" for j in range(30)]),
        "genres": np.array(["|".join(rng.choice(["Action", "Drama", "Comedy"], rng.integers(0, 3), replace=False))
                            for _ in range(30)]),
        "region": np.array([["north", "south"][j % 2] for j in range(30)]),
        "price": np.where(np.arange(30) % 7 == 0, np.nan, np.arange(30) * 1.5).astype(np.float32),
        "stock": np.arange(30, dtype=np.int64),
    }


def test_candidate_features_embed_raw_values_as_the_catalogue_rows_and_export(tmp_path):
    from model_registry.tower_inputs import CANDIDATE_ID
    from trainer.export.saved_model import save_candidate_tower
    from trainer.towers.blocks import feature_kinds
    from trainer.towers.build import build_towers

    catalog, features = _catalogue()
    assert feature_kinds(features) == {"title": "text", "genres": "tokens", "region": "tokens",
                                       "price": "numeric", "stock": "numeric"}
    _, candidate = build_towers(TowerConfig(kind="id", embedding_dim=8, candidate_features=True), 0,
                                np.array(["u1"]), catalog, candidate_features=features)
    raw = {name: tf.constant(col.astype(np.float32) if col.dtype.kind in "fiu" else col)
           for name, col in features.items()}
    trained = candidate(tf.constant(catalog)).numpy()
    np.testing.assert_allclose(candidate.embed_features(tf.constant(catalog), raw).numpy(), trained, atol=1e-6)
    # Tokens are stripped; an unknown category and a blank one add nothing, as in the catalogue's own rows.
    assert features["genres"][4] and features["region"][4] == "north"
    raw_variant = dict(raw, region=tf.constant(np.where(np.arange(30) == 4, " north | moon|", features["region"])))
    np.testing.assert_allclose(candidate.embed_features(tf.constant(catalog), raw_variant).numpy(), trained, atol=1e-6)
    # A new id gets the unknown-id row plus what its values add.
    encoder = candidate.encoder
    rows = encoder.embedding.embeddings.numpy()
    new = candidate.embed_features(tf.constant(["new"]), {n: v[4:5] for n, v in raw.items()}).numpy()[0]
    np.testing.assert_allclose(new, trained[4] - rows[encoder.lookup(tf.constant(["c04"])).numpy()[0]] + rows[1],
                               atol=1e-6)
    assert np.abs(new - rows[1]).max() > 1e-3  # the values do add something

    save_candidate_tower(candidate, tmp_path / "ct", prior=True)
    loaded = tf.saved_model.load(str(tmp_path / "ct"))
    out = loaded.signatures["serving_default"](**{CANDIDATE_ID: tf.constant(catalog), **raw})["embedding"].numpy()
    assert out.shape == (30, 9) and int(loaded.prior_columns.numpy()) == 1
    np.testing.assert_allclose(out[:, :8], trained, atol=1e-6)
    assert not out[:, 8].any()
