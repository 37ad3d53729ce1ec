"""Ids as a data file writes them, found trying odd but valid files end to end (stop 61): an id dropped as too long
widened every stored id; JSON values that are no string became other ids; a byte order mark inside a joined file
split a customer in two; errors named the wrong line or left out why the rows ran out."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import DatasetOptions, load_dataset
from trainer.data.split import random_split


def _load(tmp_path, text: str, name: str = "log.csv", **options):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return load_dataset("interactions-csv", DatasetOptions(data_path=path, **options))


def test_an_id_dropped_as_too_long_leaves_the_kept_ids_as_narrow_as_themselves(tmp_path):
    """numpy sizes an array's elements by its widest, and a subset keeps the width: one 10 KB id, dropped, made every
    stored id 10 KB wide (a 616 KB version published at 530 MB)."""
    rows = "".join(f"c{i},i{i % 7}\n" for i in range(50))
    data = _load(tmp_path, "user_id,item_id\n" + rows + "c1," + "T" * 10_240 + "\n")
    assert data.info["dropped_long_id"] == 1
    assert data.customer_ids.dtype == np.dtype("<U3") and data.candidate_ids.dtype == np.dtype("<U2")
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item_id\n" + "".join(f"i{j}\n" for j in range(7)) + "X" * 3_000 + "\n")
    data = _load(tmp_path, "user_id,item_id\n" + rows, catalog_path=catalogue)
    assert data.info["dropped_catalog_unusable_ids"] == 1 and data.catalog.dtype == np.dtype("<U2")


def test_json_true_and_false_are_ids_as_json_spells_them(tmp_path):
    data = _load(tmp_path, '{"user_id": true, "item_id": "a"}\n{"user_id": "True", "item_id": "b"}\n'
                           '{"user_id": false, "item_id": 7.0}\n', "log.jsonl")
    assert sorted(data.customer_ids) == ["True", "false", "true"]  # "True" as written is another customer
    assert sorted(data.candidate_ids) == ["7", "a", "b"]  # a whole float is its integer, as before


@pytest.mark.parametrize("value, says", [
    ("1234567890123456789.0", r"1.2345678901234568e\+18, a whole number past 2\*\*53 written as a float"),
    ("1e400", r"inf, a number that names no id"),
    ("NaN", r"nan, a number that names no id"),
])
def test_a_json_number_that_lost_its_digits_is_refused_naming_its_row(tmp_path, value, says):
    """1234567890123456789.0 and ...788.0 were published as one candidate, "1234567890123456768"; 1e400 and Infinity
    as "inf", NaN as the string "nan"."""
    with pytest.raises(ValueError, match=rf"log.jsonl: column 'item_id' of data row 2 holds {says}"):
        _load(tmp_path, f'{{"user_id": "c0", "item_id": "a"}}\n{{"user_id": "c1", "item_id": {value}}}\n',
              "log.jsonl")
    catalogue = tmp_path / "items.jsonl"
    catalogue.write_text(f'{{"item_id": "a"}}\n{{"item_id": {value}}}\n')
    with pytest.raises(ValueError, match=rf"items.jsonl: column 'item_id' of data row 2 holds {says}"):
        _load(tmp_path, '{"user_id": "c0", "item_id": "a"}\n', "log.jsonl", catalog_path=catalogue)


def test_an_event_type_that_is_no_text_is_refused_naming_its_row(tmp_path):
    """Found by review: the event column's values go through the same conversion, and its refusal named nothing."""
    with pytest.raises(ValueError, match=r"log.jsonl: column 'event' of data row 2 holds nan, a number that names"):
        _load(tmp_path, '{"user_id": "a", "item_id": "x", "event": "view"}\n'
                        '{"user_id": "b", "item_id": "y", "event": NaN}\n', "log.jsonl", event_col="event")


def test_a_byte_order_mark_inside_a_joined_file_is_refused_naming_its_row(tmp_path):
    """cat p.csv q.csv: q's mark opened its first id, so "\\ufeffu1" was a customer apart from u1."""
    with pytest.raises(ValueError, match=r"log.csv: column '0' holds an id opening with a byte order mark \(U\+FEFF\) "
                                         r"at data row 4: '\\ufeffu1' \(files joined with cat\? remove the mark\)"):
        _load(tmp_path, "u1,x,1\nu2,y,2\nu1,y,3\n\ufeffu1,x,4\nu2,x,5\n", header=False, customer_col="0",
              candidate_col="1", time_col="2")
    data = _load(tmp_path, "\ufeffuser_id,item_id\nu1,x\nu2,y\n")  # the file's own mark is no id's
    assert sorted(data.customer_ids) == ["u1", "u2"]
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("x\ny\n\ufeffz\n")
    with pytest.raises(ValueError, match=r"items.csv: column '0' holds an id opening with a byte order mark "
                                         r"\(U\+FEFF\) at data row 3"):
        _load(tmp_path, "user_id,item_id\nu1,x\n", catalog_path=catalogue, catalog_header=False, catalog_id_col="0")


def test_a_json_lines_error_names_the_files_line(tmp_path):
    """json names the column within the one line it was given: every error said "line 1"."""
    with pytest.raises(ValueError, match=r"log.jsonl is not JSON lines: line 4: Expecting value \(column 29\)"):
        _load(tmp_path, '{"user_id": "a", "item_id": "x"}\n\n{"user_id": "b", "item_id": "y"}\n'
                        '{"user_id": "b", "item_id": }\n', "log.jsonl")


def test_too_few_rows_to_split_says_which_the_loader_dropped(tmp_path):
    data = _load(tmp_path, "user_id,item_id\nu1,x\nu1,x\nu1,x\n")
    with pytest.raises(ValueError, match=r"need at least 2 interactions to split, and log has 1 \(its loader dropped "
                                         r"rows: \{'dropped_duplicates': 2\}\)"):
        random_split(data, 0.2, 0)


def test_a_chunk_of_blank_json_lines_does_not_end_the_read(tmp_path):
    """Found by review: a chunk holding blank lines alone read as the file's end, and the rows after it were lost
    without a word (200,000 blank lines in a row at the default chunk size; 1 here)."""
    from trainer.data.files.reading import read_columns

    path = tmp_path / "log.jsonl"
    path.write_text('{"user_id": "a", "item_id": "x"}\n\n\n{"user_id": "b", "item_id": "y"}\n')
    chunks = list(read_columns(path, "jsonl", ["user_id", "item_id"], chunk_rows=1))
    assert [chunk[0] for chunk in chunks] == [["a"], ["b"]]
    path.write_text("\n\n\n")
    with pytest.raises(ValueError, match="log.jsonl is empty"):
        list(read_columns(path, "jsonl", ["user_id", "item_id"], chunk_rows=1))
