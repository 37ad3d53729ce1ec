"""The model version's contract (model_registry), TensorFlow-free: the customer
store, the tower-input rule both sides use, exact search and recall, id lookup."""

from __future__ import annotations

import numpy as np
import pytest

from model_registry import manifest as files
from model_registry.attributes import Attributes
from model_registry.customers import CustomerStore
from model_registry.ids import index_of
from model_registry.manifest import VersionError
from model_registry.search import ROW_BLOCK, exact_top_k, iter_npy_rows, recall_at_k
from model_registry.tower_inputs import FLOAT, STRING, TowerInputs, check_store, tower_inputs


@pytest.fixture
def store() -> CustomerStore:
    return CustomerStore.build(
        customer_ids=np.array(["u2", "u1", "u1", "u1", "u3-with-a-long-id"]),
        candidate_ids=np.array(["b", "a", "c", "b", "a"]),
        timestamps=np.array([5, 1, 3, 2, 9]),
        history_length=2,
        feature_ids=np.array(["u1", "u2"]),
        feature_columns={"age": np.array([30.0, 40.0], np.float32), "city": np.array(["Oslo", "Rome"])})


def test_customer_store_layout_and_round_trip(store, tmp_path):
    assert store.ids.tolist() == ["u1", "u2", "u3-with-a-long-id"]
    assert store.history.tolist() == [["c", "b"], ["b", ""], ["a", ""]]  # most recent first, "" padded
    assert store.seen("u1") == {"a", "b", "c"} and store.seen("nobody") == frozenset()
    # A customer without a feature record gets the missing marker, as in training.
    assert np.isnan(store.features["age"][2]) and store.features["city"][2] == ""
    store.save(tmp_path / "store.npz")
    again = CustomerStore.load(tmp_path / "store.npz")
    for name in ("ids", "history", "seen_offsets", "seen_items"):
        assert np.array_equal(getattr(again, name), getattr(store, name))
    assert set(again.features) == {"age", "city"}


@pytest.mark.parametrize("read", [CustomerStore.load, lambda path: Attributes.load(path, 3), Attributes.namespaces,
                                  lambda path: files.read_popular(path.parent, 1)],
                         ids=["customer store", "attributes", "attribute namespaces", "popular"])
@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 not a zip", "cut"], ids=["empty", "garbled", "cut"])
def test_a_version_npz_numpy_cannot_read_is_a_version_error(store, tmp_path, read, content):
    """An empty file raised EOFError and a cut or garbled zip BadZipFile, neither of which the readers caught: the
    query replica's load failed with a traceback, not the refusal naming the file that a VersionError is."""
    path = tmp_path / files.POPULAR_FILE
    if content == "cut":
        store.save(tmp_path / "whole.npz")
        content = (tmp_path / "whole.npz").read_bytes()[:200]
    path.write_bytes(content)
    with pytest.raises(VersionError, match=r"popular|store|attributes"):
        read(path)


@pytest.mark.parametrize("read", [CustomerStore.load, lambda path: files.read_popular(path.parent, 1)],
                         ids=["customer store", "popular"])
@pytest.mark.parametrize("method", [99, 14], ids=["unknown", "lzma"])
def test_an_npz_entry_whose_compression_method_is_garbled_is_a_version_error(store, tmp_path, read, method):
    """Its entry's flags garbled: zipfile raises NotImplementedError for a method it lacks, and LZMA's decompressor
    LZMAError for an entry over ~20 KB (it reads numpy's magic bytes as the size of its header)."""
    path = tmp_path / files.POPULAR_FILE
    if read is CustomerStore.load:
        store.save(path)
    else:
        files.write_popular(tmp_path, np.array([f"i{j}" for j in range(3_000)]), np.ones(3_000))
    whole = path.read_bytes()
    at = whole.index(b"PK\x01\x02") + 10  # the first central directory entry's compression method
    path.write_bytes(whole[:at] + method.to_bytes(2, "little") + whole[at + 2:])
    with pytest.raises(VersionError, match=r"popular|store"):
        read(path)


def test_the_tower_input_rule(store):
    spec = TowerInputs(history_length=3, features=(("age", FLOAT), ("city", STRING)), request_time=True)
    check_store(spec, store)
    ids = ["u1", "stranger", "u3-with-a-long-id", "u2"]
    out = tower_inputs(spec, store, ids, recent=[(), ("x", "y"), (), ("z",) * 5], request_time=1e9)
    assert out["customer_id"].tolist() == ids  # ids kept whole
    assert out["history"].tolist() == [["c", "b", ""], ["x", "y", ""], ["a", "", ""], ["z", "z", "z"]]
    assert out["age"][0] == 30 and np.isnan(out["age"][1]) and np.isnan(out["age"][2]) and out["age"][3] == 40
    assert out["city"].tolist() == ["Oslo", "", "", "Rome"]
    assert out["request_time"].tolist() == [1e9] * 4
    per_event = tower_inputs(spec, store, np.array(["u1", "u2"]), request_time=np.array([3.0, 4.0]),
                             with_history=False)
    assert "history" not in per_event and per_event["request_time"].tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="needs feature 'zip'"):
        check_store(TowerInputs(features=(("zip", STRING),)), store)
    with pytest.raises(ValueError, match="is float in the tower"):
        check_store(TowerInputs(features=(("city", FLOAT),)), store)


def test_inputs_are_read_off_a_signature():
    spec = TowerInputs.from_signature({"customer_id": ((None,), "string"), "history": ((None, 7), "string"),
                                       "zip": ((None,), "string"), "age": ((None,), "float32"),
                                       "request_time": ((None,), "float64")})
    assert spec == TowerInputs(7, (("age", FLOAT), ("zip", STRING)), True)
    with pytest.raises(ValueError, match="no customer_id"):
        TowerInputs.from_signature({"history": ((None, 7), "string")})


def test_exact_search_from_a_file_in_blocks_matches_in_memory(tmp_path):
    rng = np.random.default_rng(0)
    db = rng.normal(size=(ROW_BLOCK + 1000, 8)).astype(np.float32)  # more than one block
    db[5] = db[7] = 100.0  # the best two rows for the last query, tied: the lower row wins
    queries = np.concatenate([rng.normal(size=(20, 8)), np.ones((1, 8))]).astype(np.float32)
    np.save(tmp_path / "db.npy", db)
    idx, scores = exact_top_k(queries, db, 10)
    idx_file, scores_file = exact_top_k(queries, tmp_path / "db.npy", 10, query_chunk=7)
    assert np.array_equal(idx, idx_file) and np.allclose(scores, scores_file)
    brute = np.argsort(-(queries @ db.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(idx, brute) and idx[-1][:2].tolist() == [5, 7]
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert sum(len(block) for block in iter_npy_rows(tmp_path / "db.npy", block=1000)) == len(db)
    assert recall_at_k(idx, idx) == 1.0 and recall_at_k(np.full_like(idx, -1), idx) == 0.0


def test_exact_search_keeps_the_lowest_rows_of_a_tie_at_the_kth_place(tmp_path):
    # ScaNN's brute force keeps the lowest rows of a tie: were exact search to keep others, an exact index over
    # repeated vectors (candidates upserted with the same features) would measure a recall below 1.
    db = np.zeros((ROW_BLOCK + 100, 4), np.float32)
    db[7] = db[ROW_BLOCK + 50] = 1.0  # the best two, then a tie of every other row across both blocks
    np.save(tmp_path / "db.npy", db)
    queries = np.ones((3, 4), np.float32)
    for database, best in ((db, [7, ROW_BLOCK + 50]), (tmp_path / "db.npy", [7, ROW_BLOCK + 50]), (db[:40], [7])):
        idx, scores = exact_top_k(queries, database, 5)
        assert idx.tolist() == [best + [0, 1, 2, 3, 4][:5 - len(best)]] * 3, idx
        assert scores[0].tolist() == [4.0] * len(best) + [0.0] * (5 - len(best))


def test_exact_search_scores_repeats_of_a_vector_alike_wherever_they_fall():
    # In float32, BLAS sums a column by where it falls in its tile: repeats scored a few ulps apart, and a tie at
    # the k-th place went by those ulps, not by row (an exact searcher over them measured a recall of 0.969).
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    rows = rng.integers(50, size=1000)
    idx, scores = exact_top_k(rng.normal(size=(100, 8)).astype(np.float32), vectors[rows], 10)
    for found, found_scores in zip(idx, scores):
        for row, score in zip(found, found_scores):
            repeats = np.flatnonzero(rows == rows[row])
            assert set(repeats[repeats < row]) <= set(found), (row, found)  # a repeat kept: the lower ones too
            assert found_scores[np.isin(found, repeats)].tolist() == [score] * np.isin(found, repeats).sum()


def test_index_of_keeps_long_ids_whole():
    sorted_ids = np.array(["a", "ab", "c"])
    assert index_of(sorted_ids, ["ab", "abc", "c", ""]).tolist() == [1, -1, 2, -1]
    assert index_of(np.array([], dtype=str), ["x"]).tolist() == [-1]
