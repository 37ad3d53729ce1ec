"""Sessions (click streams) written with an event twice: the copies are dropped and counted as the
interactions reader drops them, so that no event lands in both train and test."""

from __future__ import annotations

import csv

import pytest

from trainer.data import DatasetOptions, load_dataset
from trainer.data.generators import generate
from trainer.data.split import SPLITS, make_split

HEADER = ["timestamp", "visitorid", "event", "itemid"]


def _events(part):
    return set(zip(part.customer_ids, part.candidate_ids, part.timestamps.tolist()))


def _write(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([HEADER, *rows])
    return path


def _options(path):
    return DatasetOptions(data_path=path, session_col="visitorid", item_col="itemid", time_col="timestamp",
                          event_col="event")


def test_repeated_session_events_are_dropped_and_counted_so_no_event_is_in_both_splits(tmp_path):
    rows = [(1_433_221_332_000 + 1000 * i, f"v{i % 3}", "view", f"i{i}") for i in range(12)]
    # Visitor v9's two rows are one event written twice: a session with a single event.
    once_twice = [(7, "v9", "view", "i1")] * 2
    path = _write(tmp_path / "events.csv", rows + rows[::3] + [rows[1]] + once_twice)
    d = load_dataset("sessions", _options(path))
    for method in SPLITS:
        train, test = make_split(d, method, 0.25)
        assert not _events(train) & _events(test), method
    assert d.info["rows_read"] == 19 and d.info["dropped_duplicates"] == 6 and len(d) == 12
    assert d.info["dropped_single_event_sessions"] == 1 and d.info["sessions"] == 3
    expected = sorted(rows, key=lambda r: (r[1], r[0]))  # by session, then time
    assert list(zip(d.customer_ids, d.candidate_ids, d.timestamps.tolist())) == [
        (v, i, t / 1000) for t, v, _, i in expected]  # milliseconds in the file, seconds read


@pytest.mark.parametrize("seed", [0, 1])
def test_generated_retailrocket_repeats_are_counted_and_never_split(tmp_path, seed):
    data = generate("retailrocket", tmp_path, seed=seed, interactions=6_000)
    with open(data.files[0], newline="") as f:
        rows = list(csv.DictReader(f))
    distinct = {(r["visitorid"], r["itemid"], r["timestamp"]) for r in rows}
    loaded = load_dataset(data.dataset, data.options())
    train, test = make_split(loaded, "random", 0.2, seed=seed)
    assert not _events(train) & _events(test)
    assert loaded.info["dropped_duplicates"] == len(rows) - len(distinct) > 0 and len(_events(loaded)) == len(loaded)
