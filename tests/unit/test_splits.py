"""Splits: random, temporal, leave-last-out invariants through make_split."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import SPLITS, Interactions, make_split
from trainer.data.synthetic import synthetic


def _pairs(d):
    return set(zip(d.customer_ids.tolist(), d.candidate_ids.tolist(), d.timestamps.tolist()))


@pytest.fixture(scope="module")
def data():
    d = synthetic(200, 50, 3000, num_clusters=5, seed=1)
    # shuffle timestamps so time order differs from row order, with ties
    rng = np.random.default_rng(0)
    return Interactions(d.customer_ids, d.candidate_ids, rng.integers(0, 500, len(d)).astype(np.int64),
                        catalog=d.catalog)


@pytest.mark.parametrize("method", SPLITS)
def test_splits_partition_the_events(data, method):
    train, test = make_split(data, method, 0.2, seed=42)
    assert len(train) + len(test) == len(data) and len(test) > 0
    # disjoint as positions: the multiset union is the data
    together = np.sort(np.concatenate([train.timestamps, test.timestamps]))
    assert np.array_equal(together, np.sort(data.timestamps))
    assert train.catalog is data.catalog
    again = make_split(data, method, 0.2, seed=42)
    assert np.array_equal(again[1].customer_ids, test.customer_ids)


def test_random_and_temporal_sizes_and_order(data):
    _, test = make_split(data, "random", 0.2)
    assert len(test) == 600
    train, test = make_split(data, "temporal", 0.2)
    assert len(test) == 600 and train.timestamps.max() <= test.timestamps.min()


def test_leave_last_out_one_per_customer(data):
    d = Interactions(np.array(["a", "a", "b", "a", "c", "c"]), np.array(["1", "2", "3", "4", "5", "6"]),
                     np.array([5, 9, 1, 7, 3, 3], dtype=np.int64))
    train, test = make_split(d, "leave-last-out")
    # a's latest is "2" (t=9); b has one event -> train only; c ties -> the later row.
    assert sorted(zip(test.customer_ids, test.candidate_ids)) == [("a", "2"), ("c", "6")]
    assert sorted(train.candidate_ids) == ["1", "3", "4", "5"]
    train, test = make_split(data, "leave-last-out")
    ids, counts = np.unique(data.customer_ids, return_counts=True)
    assert len(test) == (counts >= 2).sum() and len(np.unique(test.customer_ids)) == len(test)
    latest_train = {}
    for c, t in zip(train.customer_ids, train.timestamps):
        latest_train[c] = max(latest_train.get(c, t), t)
    assert all(t >= latest_train[c] for c, t in zip(test.customer_ids, test.timestamps))


def test_bad_split_arguments(data):
    with pytest.raises(ValueError, match="unknown split 'nope'; choose one of random, temporal, leave-last-out"):
        make_split(data, "nope")
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(data, "temporal", 1.5)
    single = Interactions(np.array(["a", "b"]), np.array(["1", "2"]), np.array([1, 2], dtype=np.int64))
    with pytest.raises(ValueError, match="two or more"):
        make_split(single, "leave-last-out")


def test_random_split_of_a_tiny_file_keeps_a_training_interaction():
    d = Interactions(np.array(["a", "b"]), np.array(["1", "2"]), np.array([1, 2], dtype=np.int64))
    train, test = make_split(d, "random", 0.8)
    assert len(train) == 1 and len(test) == 1
