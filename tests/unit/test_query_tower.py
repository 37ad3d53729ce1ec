"""QueryModel fills every input a version's tower signature asks for: the id,
the history (stored or from the request) and features (stored, or the missing
marker for an unknown customer, as in training). A small hand-built SavedModel
makes the expected embeddings exact."""

from __future__ import annotations

import time

import numpy as np
import pytest

import settings.tf_env  # noqa: F401
import tensorflow as tf

from index_service.searcher import CandidateIndex
from model_registry import IndexSpec, Manifest, Registry, VersionError
from model_registry import manifest as files
from model_registry.deltas import Delta, write_delta
from model_registry.manifest import MANIFEST_FILE, checksum_tree
from query_service.tower import QueryModel
from tests.unit import tiny_versions as tiny

ITEMS = ["i1", "i2", "i3-with-a-long-id"]


class HistoryTower(tf.Module):
    """embedding = [id is c1, id is c2, count of each known history item..., age]."""

    def __init__(self):
        super().__init__()
        self.customers = tf.keras.layers.StringLookup(vocabulary=["c1", "c2"], num_oov_indices=1)
        self.items = tf.keras.layers.StringLookup(vocabulary=ITEMS, num_oov_indices=1, mask_token="")

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="customer_id"),
                                  tf.TensorSpec([None, 3], tf.string, name="history"),
                                  tf.TensorSpec([None], tf.float32, name="age")])
    def serve(self, customer_id, history, age):
        who = tf.one_hot(self.customers(customer_id) - 1, 2)
        counts = tf.reduce_sum(tf.one_hot(self.items(history) - 2, len(ITEMS)), axis=1)
        known = tf.logical_or(self.customers(customer_id) > 0, tf.reduce_any(self.items(history) > 1, axis=1))
        return {"embedding": tf.concat([who, counts, age[:, None]], axis=1), "known": known}


class TimeTower(tf.Module):
    """embedding = [request_time]: shows what the service passes as the time."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="customer_id"),
                                  tf.TensorSpec([None], tf.float64, name="request_time")])
    def serve(self, customer_id, request_time):
        return {"embedding": tf.cast(request_time[:, None], tf.float32),
                "known": tf.fill(tf.shape(customer_id), True)}


class NoKnownTower(tf.Module):
    """Another exporter's tower: its signature gives an embedding but no ``known``."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="customer_id")])
    def serve(self, customer_id):
        return {"embedding": tf.ones([tf.shape(customer_id)[0], 1])}


class Float64AgeTower(tf.Module):
    """embedding = [age], from a float64 feature input (the contract takes any float width)."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="customer_id"),
                                  tf.TensorSpec([None], tf.float64, name="age")])
    def serve(self, customer_id, age):
        return {"embedding": tf.cast(age[:, None], tf.float32), "known": tf.fill(tf.shape(customer_id), True)}


class NumericIdTower(tf.Module):
    """A tower keyed by int64 customer ids, which the contract's string ids cannot feed."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="customer_id")])
    def serve(self, customer_id):
        return {"embedding": tf.cast(customer_id[:, None], tf.float32), "known": tf.fill(tf.shape(customer_id), True)}


def write_version(directory, with_age=True, tower=None):
    tower = tower or HistoryTower()
    tf.saved_model.save(tower, str(directory / files.QUERY_TOWER_DIR), signatures={"serving_default": tower.serve})
    files.write_popular(directory, np.array(["i2", "i1"]), np.array([0.6, 0.4]))
    store = {"ids": np.array(["c1", "c2"]),
             "history": np.array([["i1", "i1", ""], ["i2", "", ""]]),
             "seen_offsets": np.array([0, 2, 3]), "seen_items": np.array(["i1", "i3-with-a-long-id", "i2"])}
    if with_age:
        store["feature__age"] = np.array([20.0, 40.0], np.float32)
    np.savez(directory / files.CUSTOMER_STORE_FILE, **store)
    np.save(directory / files.CANDIDATE_IDS_FILE, np.array(ITEMS))
    dim = 1 if isinstance(tower, (TimeTower, NoKnownTower, Float64AgeTower, NumericIdTower)) else 2 + len(ITEMS) + 1
    manifest = Manifest(model="m", version=1, embedding_dim=dim, num_candidates=3, tower="history",
                        dataset="test", created_at="2026-01-01T00:00:00Z", index=IndexSpec(kind="brute_force"),
                        files=checksum_tree(directory))
    (directory / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def test_inputs_come_from_the_store_the_request_and_the_missing_marker(tmp_path):
    model = QueryModel.load(tmp_path, write_version(tmp_path))
    assert model.takes.history_length == 3 and model.takes.feature_names == ("age",)
    vectors, known = model.embed(["c1", "c2", "stranger", "stranger"],
                                 [(), (), ("i3-with-a-long-id", "nope"), ()])
    np.testing.assert_allclose(vectors, [
        [1, 0, 2, 0, 0, 20],   # stored history, stored age
        [0, 1, 0, 1, 0, 40],
        [0, 0, 0, 0, 1, np.nan],   # request history (long id intact), age missing (NaN, as in training)
        [0, 0, 0, 0, 0, np.nan],
    ])
    assert known.tolist() == [True, True, True, False]
    recent_wins, _ = model.embed(["c1"], [("i2",)])
    np.testing.assert_allclose(recent_wins, [[1, 0, 0, 1, 0, 20]])
    assert model.seen("c1") == {"i1", "i3-with-a-long-id"} and model.seen("stranger") == frozenset()


def test_a_tower_input_the_store_cannot_fill_is_refused(tmp_path):
    manifest = write_version(tmp_path, with_age=False)
    with pytest.raises(VersionError, match="needs feature 'age'"):
        QueryModel.load(tmp_path, manifest)


def test_the_request_time_input_gets_the_serving_time(tmp_path):
    model = QueryModel.load(tmp_path, write_version(tmp_path, tower=TimeTower()))
    before = time.time()
    vectors, _ = model.embed(["c1", "stranger"])
    assert vectors.shape == (2, 1)
    # float32 keeps about 2 minutes of resolution at today's unix time.
    assert np.all(np.abs(vectors[:, 0] - before) < 300)


def test_stored_customers_are_answered_from_the_precomputed_table(tmp_path):
    model = QueryModel.load(tmp_path, write_version(tmp_path))
    vectors, known = model.lookup(["c2", "c1"])
    np.testing.assert_allclose(vectors, [[0, 1, 0, 1, 0, 40], [1, 0, 2, 0, 0, 20]])
    assert known.tolist() == [True, True]
    assert model.lookup(["c1", "stranger"]) is None  # not stored: needs the tower
    assert model.lookup(["c1"], [("i2",)]) is None  # a request history: needs the tower
    assert model.lookup(["c1"], [()]) is not None


def test_a_tower_that_gives_no_known_output_is_refused_saying_so(tmp_path):
    manifest = write_version(tmp_path, tower=NoKnownTower())
    with pytest.raises(VersionError, match=r"gives no known output \(its outputs: \['embedding'\]\)"):
        QueryModel.load(tmp_path, manifest)


def test_a_tower_the_contract_cannot_call_is_refused_at_load(tmp_path):
    manifest = write_version(tmp_path, tower=NumericIdTower())
    with pytest.raises(VersionError, match="self-test call failed"):
        QueryModel.load(tmp_path, manifest)


def test_a_float64_feature_input_gets_the_stored_values(tmp_path):
    model = QueryModel.load(tmp_path, write_version(tmp_path, tower=Float64AgeTower()))
    vectors, _ = model.embed(["c2", "stranger"])
    assert vectors[0].tolist() == [40.0] and np.isnan(vectors[1, 0])


def test_upserts_alone_leave_the_deleted_set_as_it_was_and_deletes_change_a_copy(tmp_path):
    """Each delta copied the whole deleted set twice, however small it was (~37 ms at 100,000 deleted ids)."""
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    write_delta(registry.model_dir, 1, Delta.make(deleted=["i001", "i002"], dim=tiny.DIM))
    model = QueryModel.load(registry.version_dir(1), registry.manifest(1))
    before = model.catalogue
    model.apply_catalogue([Delta.make(["new1", "i000"], np.ones((2, tiny.DIM)))], 2)
    assert model.catalogue.deleted is before.deleted and model.catalogue.generation == 2
    model.apply_catalogue([Delta.make(["i001"], np.ones((1, tiny.DIM))), Delta.make(deleted=["i003"], dim=tiny.DIM)], 4)
    assert model.catalogue.deleted == {"i002", "i003"} and before.deleted == {"i001", "i002"}  # a reader's snapshot


@pytest.mark.parametrize("shards", [1, 2])
def test_the_candidate_count_follows_catalogue_deltas(tmp_path, shards):
    """The count a replica reports (status row, recsys_version_candidates) is what the index holds after
    the version's deltas: a new id adds one, a deleted held id takes one away; an upsert of a held id
    and a delete of an id the version never had change nothing."""
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1, shards=shards)
    base = len(tiny.CANDIDATES)
    write_delta(registry.model_dir, 1, Delta.make(["new1", "i000"], np.ones((2, tiny.DIM)), deleted=["i001", "i002"]))
    model = QueryModel.load(registry.version_dir(1), registry.manifest(1))  # replays the log
    assert model.num_candidates == base + 1 - 2
    more = [Delta.make(deleted=["new1", "never-held"], dim=tiny.DIM), Delta.make(["i001"], np.ones((1, tiny.DIM)))]
    model.apply_catalogue(more, 3)
    assert model.num_candidates == base - 2 + 1
    if shards == 1:  # what the index endpoint counts, from the same log
        index = CandidateIndex.load(registry.version_dir(1), registry.manifest(1))
        index.apply_catalogue(more, 3)
        assert index.num_candidates == model.num_candidates
