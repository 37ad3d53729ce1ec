"""The interactions and sessions file reader refuses (or drops and counts) what would otherwise train silently wrong:
copies of one interaction without a time column, unreadable or mixed times, broken CSV structure, ids the services
refuse."""

from __future__ import annotations

import gzip

import pytest

from model_registry.ids import MAX_ID_BYTES
from serving import validation
from trainer.data import DatasetOptions, load_dataset
from trainer.data.files import reading
from trainer.data.split import SPLITS, make_split


def _pairs(part):
    return set(zip(part.customer_ids, part.candidate_ids))


@pytest.mark.parametrize("rating", [False, True])
def test_copies_without_a_time_column_are_dropped_and_counted_so_no_pair_is_in_both_splits(tmp_path, rating):
    """Without a time, the row number is the time: a file written twice had every event in train and test alike."""
    rows = [f"u{i % 5},i{i},{1 + i % 5}" for i in range(40)]
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,rating\n" + "\n".join(rows + rows + ["u0,i0,2"]) + "\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, rating_col="rating" if rating else None))
    # A rating is not carried into training: the same pair rated again is the same training example.
    assert d.info["rows_read"] == 81 and d.info["dropped_duplicates"] == 41 and len(d) == 40
    assert [f"{c},{i}" for c, i in zip(d.customer_ids, d.candidate_ids)] == [r.rsplit(",", 1)[0] for r in rows]
    assert d.timestamps.tolist() == list(range(40))  # the first copy's row number
    for method in SPLITS:
        train, test = make_split(d, method, 0.25)
        assert not _pairs(train) & _pairs(test), method


def test_session_copies_without_a_time_column_are_dropped_and_counted(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("SessionId,ItemId\ns1,a\ns1,a\ns2,b\ns2,c\ns2,b\n")
    d = load_dataset("sessions", DatasetOptions(data_path=path))
    assert d.info["dropped_duplicates"] == 2 and d.info["dropped_single_event_sessions"] == 1
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("s2", "b"), ("s2", "c")]


def _log(tmp_path, times, name="log.csv"):
    path = tmp_path / name
    path.write_text("user_id,item_id,ts\n" + "".join(f"u{i % 2},i{i},{t}\n" for i, t in enumerate(times)))
    return path


def _load_times(path):
    return load_dataset("interactions-csv", DatasetOptions(data_path=path, time_col="ts"))


@pytest.mark.parametrize("times, row, value", [
    (["1700000000", "2023-11-14T22:13:21Z", "1700000005"], 2, "2023-11-14T22:13:21Z"),  # the future read as 1700
    (["2020-01-01T00:00:00Z", "2020-01-02", "1735689600"], 3, "1735689600"),
    (["1700000000", "NaN", "1700000005"], 2, "NaN"),
    (["1e9", "inf", "1700000005"], 2, "inf"),
    (["1700000000.5", "-inf"], 2, "-inf"),
    (["2023-11-14", "NaT", "2023-11-15"], 2, "NaT"),
])
def test_times_that_are_not_one_kind_of_finite_time_name_the_row_and_value(tmp_path, times, row, value):
    with pytest.raises(ValueError, match=rf"column 'ts'.* row {row}\b.*'{value}'"):
        _load_times(_log(tmp_path, times))


def test_json_times_mixing_numbers_and_dates_or_holding_nan_are_refused(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"user_id": "u1", "item_id": "a", "ts": 1700000000}\n'
                    '{"user_id": "u1", "item_id": "b", "ts": "2023-11-14T22:13:21Z"}\n')
    with pytest.raises(ValueError, match=r"column 'ts'.* row 2\b.*'2023-11-14T22:13:21Z'"):
        _load_times(path)
    path.write_text('{"user_id": "u1", "item_id": "a", "ts": 1.5}\n{"user_id": "u1", "item_id": "b", "ts": NaN}\n')
    with pytest.raises(ValueError, match=r"column 'ts'.* row 2\b.*'nan'"):
        _load_times(path)


def test_numbers_and_dates_in_different_chunks_are_refused(tmp_path):
    path = _log(tmp_path, ["1700000000"] * reading.CHUNK_ROWS + ["2023-11-14"])
    with pytest.raises(ValueError, match=rf"column 'ts'.* row {reading.CHUNK_ROWS + 1}\b.*'2023-11-14'"):
        _load_times(path)


@pytest.mark.parametrize("scale, unit", [(1, "s"), (1000, "ms"), (10**6, "us"), (10**9, "ns")])
def test_epoch_milli_micro_and_nanoseconds_become_seconds(tmp_path, scale, unit):
    """request_time is unix seconds: a time tower trained on milliseconds read every request as the first moment."""
    d = _load_times(_log(tmp_path, [1_700_000_000 * scale + scale // 2, 1_700_000_001 * scale, 7]))
    assert d.timestamps.tolist() == [1_700_000_000, 1_700_000_001, 7 // scale] and d.info["time_unit"] == unit
    d = _load_times(_log(tmp_path, ["2023-11-14T22:13:20.900Z", "2023-11-14T22:13:21Z"]))
    assert d.timestamps.tolist() == [1_700_000_000, 1_700_000_001] and d.info["time_unit"] == "date"


def test_a_column_mixing_epoch_seconds_and_milliseconds_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"column 'ts' mixes .*row 2\b.*'1700000500'.*milliseconds"):
        _load_times(_log(tmp_path, ["1700000000000", "1700000500", "1700000400"]))


def test_sessions_keep_fractions_of_a_second_and_refuse_mixed_units(tmp_path):
    """A view and a cart of one item within a second are two events of a session (RetailRocket's funnel), in epoch
    seconds as the services' request_time."""
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitorid,itemid\n1433221332917,v1,a\n1433221332100,v1,a\n1433221332100,v1,a\n")
    options = DatasetOptions(data_path=path, session_col="visitorid", item_col="itemid", time_col="timestamp")
    d = load_dataset("sessions", options)
    assert d.timestamps.tolist() == [1433221332.1, 1433221332.917] and d.info["time_unit"] == "ms"
    assert d.info["dropped_duplicates"] == 1
    path.write_text("timestamp,visitorid,itemid\n1433221332917,v1,a\n1433221333,v1,b\n")
    with pytest.raises(ValueError, match=r"column 'timestamp' mixes epoch units: data row 2\b"):
        load_dataset("sessions", options)


def _load_text(tmp_path, text, name="log.csv", **options):
    path = tmp_path / name
    path.write_text(text)
    return load_dataset("interactions-csv", DatasetOptions(data_path=path, **options))


@pytest.mark.parametrize("text, line, fields, width", [
    ("user_id,item_id,rating\nu1,a,5\nu1,b,5,EXTRA\nu2,a,3\n", 3, 4, 3),  # a field with no column
    ("note,user_id,item_id\nhello, world,u1,a\nok,u2,b\n", 2, 4, 3),  # an unquoted comma: every column shifts
    ("user_id,item_id,rating\nu1,a,5\nu2,b\n", 3, 2, 3),
    ('user_id,item_id,rating\nu1,"12"" pizza",5\nu5,"unclosed,4\nu6,b,5\nu7,c,5\n', 5, 2, 3),  # to the end
])
def test_rows_whose_fields_do_not_match_the_header_name_their_line(tmp_path, text, line, fields, width):
    with pytest.raises(ValueError, match=rf"log.csv: row {line} has {fields} fields, the header {width}"):
        _load_text(tmp_path, text)


def test_trailing_empty_fields_and_headerless_rows_of_one_width_load(tmp_path):
    d = _load_text(tmp_path, "user_id,item_id\nu1,a,\nu2,b,,\n")
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "a"), ("u2", "b")]
    with pytest.raises(ValueError, match=r"row 2 has 3 fields, the first row 2"):
        _load_text(tmp_path, "u1,a\nu2,b,c\n", header=False, customer_col="0", candidate_col="1")


def test_a_quote_left_open_to_the_end_is_refused_not_read_as_one_id(tmp_path):
    """The rows after an open quote became one 9,806-byte candidate id."""
    rows = "".join(f"u{i},i{i}\n" for i in range(50))
    with pytest.raises(ValueError, match=r"log.csv: column 'item_id' holds an id with a line break at data row 2\b"):
        _load_text(tmp_path, 'user_id,item_id\nu1,a\nu2,"b\n' + rows)


def test_a_long_text_field_loads_and_one_over_the_csv_limit_names_the_file_and_line(tmp_path):
    """A review's text of 140k characters, in a column not even read, refused the whole file: the csv module's
    default limit is 131,072 characters."""
    d = _load_text(tmp_path, f'user_id,item_id,text\nu1,a,"{"x" * 140_000}"\nu2,b,short\n')
    assert list(d.candidate_ids) == ["a", "b"]
    with pytest.raises(ValueError, match=r"log.csv: unreadable after line 1: field larger than field limit"):
        _load_text(tmp_path, f'user_id,item_id,text\nu1,a,"{"x" * (1 << 24)}x"\n')


def test_a_damaged_gzip_file_names_the_file(tmp_path):
    data = gzip.compress("".join(f"u{i},i{i}\n" for i in range(20_000)).encode())
    for name, content in [("cut.csv.gz", data[: len(data) // 2]),
                          ("plain.csv.gz", b"user_id,item_id\nu1,a\n"), ("cut.jsonl.gz", data[:40])]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name}: unreadable after line \d+: .*gzip"):
            load_dataset("interactions-csv", DatasetOptions(data_path=tmp_path / name, header=False,
                                                            customer_col="0", candidate_col="1"))


def test_ids_the_services_refuse_are_dropped_and_counted(tmp_path):
    """A customer over the limit could never be asked for; a candidate would be answered but never sent back."""
    assert validation.MAX_ID_BYTES == MAX_ID_BYTES == 256
    fits, long, wide = "c" * MAX_ID_BYTES, "c" * (MAX_ID_BYTES + 1), "\u00e9" * (MAX_ID_BYTES // 2 + 1)
    d = _load_text(tmp_path, f"user_id,item_id\n{fits},a\n{long},a\nu1,{wide}\nu1,b\n",
                   catalog_path=_catalogue(tmp_path, ["a", "b", wide, "x" * 300]))
    assert list(zip(d.customer_ids, d.candidate_ids)) == [(fits, "a"), ("u1", "b")]
    assert d.info["dropped_long_id"] == 2 and list(d.catalog) == ["a", "b"]
    path = tmp_path / "clicks.csv"
    path.write_text(f"SessionId,ItemId\ns1,a\ns1,{long}\ns1,b\n")
    d = load_dataset("sessions", DatasetOptions(data_path=path))
    assert list(d.candidate_ids) == ["a", "b"] and d.info["dropped_long_id"] == 1


def _catalogue(tmp_path, ids):
    path = tmp_path / "items.csv"
    path.write_text("item_id\n" + "".join(f"{i}\n" for i in ids))
    return path


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    d = _load_text(tmp_path, "\ufeff1,a\n1,b\n", header=False, customer_col="0", candidate_col="1")
    assert list(d.customer_ids) == ["1", "1"]
    d = _load_text(tmp_path, '\ufeff{"user_id": "u1", "item_id": "a"}\n', name="log.jsonl")
    assert list(d.customer_ids) == ["u1"]


def test_ids_are_trimmed_on_both_sides_alike(tmp_path):
    """The csv module trims only after a delimiter: "u1 " and "u1" were two customers."""
    d = _load_text(tmp_path, 'user_id,item_id\nu1 ,a\nu1,a \n u1, a\n\tu2 ,"b "\n',
                   catalog_path=_catalogue(tmp_path, [" a", "b\t"]))
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "a"), ("u2", "b")]
    assert d.info["dropped_duplicates"] == 2 and list(d.catalog) == ["a", "b"]
