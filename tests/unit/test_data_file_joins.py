"""What the interactions and sessions readers hand the trainer must be what serving sends and accepts: event times in
epoch seconds (the request_time unit), no header line of a second file read as an id, no id the services refuse."""

from __future__ import annotations

import numpy as np
import pytest

from model_registry.customers import CustomerStore
from serving import validation
from serving.errors import InvalidArgument
from trainer.data import DatasetOptions, load_dataset


def _sessions(tmp_path, text, **options):
    path = tmp_path / "events.csv"
    path.write_text(text)
    return load_dataset("sessions", DatasetOptions(data_path=path, **options))


@pytest.mark.parametrize("unit, scale", [("ms", 10**3), ("us", 10**6)])
def test_session_times_are_epoch_seconds_that_keep_their_order_within_a_second(tmp_path, unit, scale):
    """The time tower learnt milliseconds and clipped every served request_time (seconds) to its first moment."""
    events = [(1433221332917, "b"), (1433221332100, "a"), (1433221333000, "c")]  # ms; b is later than a
    d = _sessions(tmp_path, "timestamp,visitorid,itemid\n" + "".join(f"{ms * scale // 1000},v1,{item}\n"
                                                                     for ms, item in events),
                  session_col="visitorid", item_col="itemid", time_col="timestamp")
    assert d.info["time_unit"] == unit
    assert list(d.candidate_ids) == ["a", "b", "c"]
    assert d.timestamps.tolist() == pytest.approx([1433221332.1, 1433221332.917, 1433221333.0], abs=1e-6)
    # Within a second the later event is still the more recent one, though its id sorts after the other's.
    store = CustomerStore.build(d.customer_ids, d.candidate_ids, d.timestamps, history_length=3)
    assert store.history[0].tolist() == ["c", "b", "a"]


def test_session_dates_keep_their_milliseconds_as_seconds(tmp_path):
    d = _sessions(tmp_path, "SessionId,Time,ItemId\n1,2014-04-07T10:51:09.277Z,b\n1,2014-04-07T10:51:09.002Z,a\n",
                  time_col="Time")
    assert list(d.candidate_ids) == ["a", "b"] and d.info["time_unit"] == "date"
    assert d.timestamps.tolist() == pytest.approx([1396867869.002, 1396867869.277], abs=1e-6)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize("name, sep, time_col, bom", [
    ("all.csv", ",", None, ""), ("all.csv", ",", "ts", ""), ("all.tsv", "\t", "ts", ""),
    ("all.csv", ",", None, "\ufeff"),  # two Excel "CSV UTF-8" files: the second's byte order mark is mid-file
])
def test_a_header_repeated_by_joining_files_is_dropped_and_counted(tmp_path, name, sep, time_col, bom):
    """`cat a.csv b.csv > all.csv` trained a customer "user_id" (or, with a time column, refused the file)."""
    head = sep.join(["user_id", "item_id", "ts"]) + "\n"
    a = "".join(sep.join([f"u{i}", f"i{i}", f"{1700000000 + i}"]) + "\n" for i in range(3))
    b = "".join(sep.join([f"u{i}", f"i{i}", f"{1700000100 + i}"]) + "\n" for i in range(3, 5))
    path = _write(tmp_path, name, bom + head + a + bom + head + b)
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, time_col=time_col))
    assert d.info["rows_read"] == 6 and d.info["dropped_header_rows"] == 1
    assert list(d.customer_ids) == [f"u{i}" for i in range(5)] and "item_id" not in d.catalog


def test_a_repeated_header_is_dropped_from_sessions_and_catalogues(tmp_path):
    d = _sessions(tmp_path, "SessionId,ItemId\ns1,a\ns1,b\nSessionId,ItemId\ns2,a\ns2,c\n")
    assert d.info["dropped_header_rows"] == 1 and sorted(set(d.customer_ids)) == ["s1", "s2"]
    catalogue = _write(tmp_path, "items.csv", "item_id,genre\na,x\nitem_id,genre\nb,y\n")
    interactions = _write(tmp_path, "log.csv", "user_id,item_id\nu1,a\nu1,b\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=interactions, catalog_path=catalogue,
                                                        catalog_feature_cols=("genre",)))
    assert list(d.catalog) == ["a", "b"] and list(d.candidate_features["genre"]) == ["x", "y"]


def test_ids_holding_a_nul_are_dropped_and_counted_as_the_services_refuse_them(tmp_path):
    """numpy made "u1\\x00" the customer "u1"; "u\\x001" trained as an id no request may hold."""
    for bad in ("u1\x00", "u\x001"):
        with pytest.raises(InvalidArgument, match="NUL"):
            validation.check_id(bad, "customer_id")
    catalogue = _write(tmp_path, "items.csv", "item_id,genre\na,x\nb,z\nb\x00,y\nc\x00d,w\n")
    path = _write(tmp_path, "log.csv", "user_id,item_id\nu1,a\nu1\x00,b\nu\x001,b\nu2,b\x00\nu2,b\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, catalog_path=catalogue,
                                                        catalog_feature_cols=("genre",)))
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "a"), ("u2", "b")]
    assert d.info["dropped_nul_id"] == 3 and d.info["dropped_not_in_catalog"] == 0
    assert list(d.catalog) == ["a", "b"] and list(d.candidate_features["genre"]) == ["x", "z"]
    d = _sessions(tmp_path, "SessionId,ItemId\ns1,a\ns1,b\x00\ns1,c\ns\x002,a\ns\x002,b\n")
    assert list(d.candidate_ids) == ["a", "c"] and d.info["dropped_nul_id"] == 3


def test_a_trailing_line_break_is_trimmed_and_other_control_characters_kept_as_serving_takes_them(tmp_path):
    """A cell ending in "\\r" (a line ending of another system kept inside quotes) was refused as a quote left open;
    it is whitespace around the id, trimmed as spaces are. Serving accepts other control characters, so they stay."""
    path = _write(tmp_path, "log.jsonl", '{"user_id": "u1", "item_id": "a"}\n{"user_id": "u1\\r", "item_id": "b"}\n'
                                         '{"user_id": "u1\\u0001", "item_id": "c"}\n')
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path))
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "a"), ("u1", "b"), ("u1\x01", "c")]
    assert validation.check_id("u1\x01", "customer_id") == "u1\x01"
    path = _write(tmp_path, "log.csv", 'user_id,item_id\nu1,a\n"u1\r",b\n"u1\r\n",c\n')
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path))
    assert np.unique(d.customer_ids).tolist() == ["u1"] and len(d) == 3


def test_a_catalogue_is_read_with_its_own_delimiter_and_header(tmp_path):
    """A ';' interactions file beside a tab catalogue, and one without a header beside a catalogue with one: the
    interactions file's --delimiter and --no-header are not the catalogue's."""
    interactions = _write(tmp_path, "log.csv", "user_id;item_id\nu1;a\nu1;b\n")
    catalogue = _write(tmp_path, "items.tsv", "item_id\tprice\na\t1.5\nb\t2\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=interactions, delimiter=";", catalog_path=catalogue,
                                                        catalog_feature_cols=("price",)))
    assert list(d.catalog) == ["a", "b"] and d.candidate_features["price"].tolist() == [1.5, 2.0]
    headless = _write(tmp_path, "log2.csv", "u1,a\nu1,b\n")
    with_header = _write(tmp_path, "items.csv", "item_id,price\na,1.5\nb,2\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=headless, header=False, customer_col="0",
                                                        candidate_col="1", catalog_path=with_header,
                                                        catalog_id_col="item_id", catalog_feature_cols=("price",)))
    assert list(d.catalog) == ["a", "b"] and d.candidate_features["price"].dtype == np.float32
    both_headless = _write(tmp_path, "items2.csv", "a;1.5\nb;2\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=headless, header=False, customer_col="0",
                                                        candidate_col="1", catalog_path=both_headless,
                                                        catalog_header=False, catalog_delimiter=";",
                                                        catalog_id_col="0", catalog_feature_cols=("1",)))
    assert list(d.catalog) == ["a", "b"] and d.candidate_features["1"].tolist() == [1.5, 2.0]


@pytest.mark.parametrize("value", ["inf", "-Infinity", "1e39"])
def test_a_catalogue_number_float32_cannot_hold_is_refused_naming_its_row(tmp_path, value):
    """It trained to a NaN loss, and the run then blamed the index's recall."""
    interactions = _write(tmp_path, "log.csv", "user_id,item_id\nu1,a\nu1,b\n")
    catalogue = _write(tmp_path, "items.csv", f"item_id,price\na,1.5\nb,{value}\n")
    with pytest.raises(ValueError, match=rf"items.csv: column 'price' of data row 2 holds '{value}', not a finite "
                                         "number float32 holds: fix it, or leave the cell empty"):
        load_dataset("interactions-csv", DatasetOptions(data_path=interactions, catalog_path=catalogue,
                                                        catalog_feature_cols=("price",)))
