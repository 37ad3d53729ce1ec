"""A header line in the middle of a CSV/TSV (files joined with ``cat``) that is not the first header again: its rows
were read with the first header's column positions, customers and candidates swapped without an error."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from trainer.data import DatasetOptions, load_dataset
from trainer.data.files import reading


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def _refused(line, first, other, what="the columns in another order"):
    """The refusal naming the line and both headers' columns."""
    return rf"line {line} is a header with {what} \({re.escape(other)}\) than the first header \({re.escape(first)}\)"


@pytest.mark.parametrize("name, sep", [("all.csv", ","), ("all.tsv", "\t")])
def test_a_header_of_the_same_columns_in_another_order_is_refused_not_read_swapped(tmp_path, name, sep):
    """`cat a.csv b.csv` whose b lists item_id before user_id trained customer "i2" with candidate "u2"."""
    text = "".join(sep.join(row) + "\n" for row in [("user_id", "item_id", "rating"), ("u1", "i1", "5"),
                                                     ("item_id", "user_id", "rating"), ("i2", "u2", "4")])
    path = _write(tmp_path, name, text)
    with pytest.raises(ValueError, match=rf"{name}: " + _refused(3, "user_id, item_id, rating",
                                                                   "item_id, user_id, rating")):
        load_dataset("interactions-csv", DatasetOptions(data_path=path))


def test_a_reordered_header_is_refused_before_its_rating_is_read_from_another_column(tmp_path):
    """The rating was read from the user_id column: the message blamed a non-numeric rating, not the header."""
    path = _write(tmp_path, "all.csv", "user_id,item_id,rating\nu1,i1,5\nrating,item_id,user_id\n4,i2,u2\n")
    with pytest.raises(ValueError, match=_refused(3, "user_id, item_id, rating", "rating, item_id, user_id")):
        load_dataset("interactions-csv", DatasetOptions(data_path=path, rating_col="rating", min_rating=4))


def test_a_reordered_header_in_sessions_is_refused_not_read_as_single_event_sessions(tmp_path):
    """Sessions s2's items became sessions of one event each, dropped as such: s2 vanished."""
    path = _write(tmp_path, "clicks.csv", "SessionId,ItemId\ns1,a\ns1,b\nItemId,SessionId\na,s2\nc,s2\n")
    with pytest.raises(ValueError, match=r"clicks.csv: " + _refused(4, "SessionId, ItemId", "ItemId, SessionId")):
        load_dataset("sessions", DatasetOptions(data_path=path))


def test_a_reordered_header_in_a_catalogue_is_refused_not_read_as_candidates(tmp_path):
    """The catalogue gained candidates "genre" and "y", and candidate b's genre became its id."""
    catalogue = _write(tmp_path, "items.csv", "item_id,genre\na,x\ngenre,item_id\ny,b\n")
    path = _write(tmp_path, "log.csv", "user_id,item_id\nu1,a\nu1,b\n")
    with pytest.raises(ValueError, match=r"items.csv: " + _refused(3, "item_id, genre", "genre, item_id")):
        load_dataset("interactions-csv", DatasetOptions(data_path=path, catalog_path=catalogue,
                                                        catalog_feature_cols=("genre",)))


def test_header_lines_in_later_chunks_are_found_and_named_by_their_line(tmp_path):
    """Blank lines count as lines; a header line past the first chunk is dropped, or refused, all the same."""
    path = _write(tmp_path, "all.csv", "user_id,item_id\nu1,a\n\nu2,b\nuser_id,item_id\nu3,c\nitem_id,user_id\nd,u4\n")
    counts: Counter[str] = Counter()
    chunks = reading.read_columns(path, "csv", ["user_id", "item_id"], chunk_rows=2, counts=counts)
    assert next(chunks) == [["u1"], ["a"]] and next(chunks) == [["u2"], ["b"]]
    with pytest.raises(ValueError, match=_refused(7, "user_id, item_id", "item_id, user_id")):
        next(chunks)
    assert counts["dropped_header_rows"] == 1


@pytest.mark.parametrize("other, rating_col", [
    ("user_id,item_id,rating,ts", None),  # an extra column: was refused as a row of 4 fields ("the delimiter right?")
    ("user_id,item_id", "rating"),  # a column fewer: as a row of 2 fields
    ("user_id,item_id,stars", None),  # a column renamed: its name was read as customer "user_id" of item "item_id"
    ("user_id,business_id,rating", None),  # an id column renamed: the same
])
def test_a_header_of_other_columns_in_the_middle_is_refused_naming_both(tmp_path, other, rating_col):
    path = _write(tmp_path, "all.csv", f"user_id,item_id,rating\nu1,i1,5\n{other}\nu2,i2,4\n")
    refused = _refused(3, "user_id, item_id, rating", other.replace(",", ", "), "other columns")
    with pytest.raises(ValueError, match=refused):
        load_dataset("interactions-csv", DatasetOptions(data_path=path, rating_col=rating_col))


@pytest.mark.parametrize("again", ["user_id , item_id ", "user_id,item_id,"])
def test_the_first_header_again_with_other_spacing_or_a_trailing_delimiter_is_dropped_and_counted(tmp_path, again):
    """Each trained customer "user_id": ids are trimmed and a trailing empty field is allowed, but the repeat test
    compared the cells as written."""
    path = _write(tmp_path, "all.csv", f"user_id,item_id\nu1,i1\nu1,i3\n{again}\nu2,i2\nu2,i4\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path))
    assert d.info["dropped_header_rows"] == 1 and d.info["rows_read"] == 5
    assert sorted(set(d.customer_ids)) == ["u1", "u2"] and "item_id" not in d.catalog


def test_ids_that_are_column_names_elsewhere_are_data(tmp_path):
    """Only a line naming the columns read is a header: an item "user_id" or a customer "rating" is an id."""
    path = _write(tmp_path, "all.csv", "user_id,item_id,rating\nu1,user_id,5\nrating,i1,3\nitem_id,i2,4\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, rating_col="rating"))
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "user_id"), ("rating", "i1"), ("item_id", "i2")]
    assert "dropped_header_rows" not in d.info
