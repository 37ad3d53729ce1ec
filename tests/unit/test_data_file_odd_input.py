"""Input files a new user may well have, found by trying them (2026-12-07): each was a traceback, a misleading
message, or a candidate or row changed without a word; each is now read, or refused in one line that names it."""

from __future__ import annotations

import gzip

import pytest

from trainer.data import DatasetOptions, load_dataset


def _load(tmp_path, text: str, name: str = "log.csv", **options):
    path = tmp_path / name
    path.write_text(text)
    return load_dataset("interactions-csv", DatasetOptions(data_path=path, **options))


def test_a_json_lines_file_whose_first_line_is_no_object_is_refused_naming_it(tmp_path):
    """The columns were found on the later lines, and the loader then called ``.get`` on the first one's list."""
    with pytest.raises(ValueError, match=r"log.jsonl: line 1 is not a JSON object: '\[\"user_id\", \"item_id\"\]'"):
        _load(tmp_path, '["user_id", "item_id"]\n{"user_id": "a", "item_id": "x"}\n', "log.jsonl")


@pytest.mark.parametrize("name, text, options, message", [
    ("log.csv", "user_id,item_id,ts\na,x,99999999999999999999\nb,y,1700000000\n", {"time_col": "ts"},
     r"column 'ts' mixes epoch units: data row 2 .*\(seconds\), data row 1 '1e\+20' \(nanoseconds\)"),
    ("log.jsonl", '{"user_id": "a", "item_id": "x", "ts": -99999999999999999999}\n'
                  '{"user_id": "b", "item_id": "y", "ts": 1700000000}\n', {"time_col": "ts"},
     r"column 'ts' mixes epoch units: data row 2 .*\(seconds\), data row 1 '-1e\+20' \(nanoseconds\)"),
    ("log.jsonl", f'{{"user_id": "a", "item_id": "x", "stars": {"9" * 400}}}\n', {"rating_col": "stars"},
     r"column 'stars' must be numeric, found '9999"),
    ("log.jsonl", f'{{"user_id": {"1" * 5000}, "item_id": "x"}}\n', {},
     r"log.jsonl: a line holds a number of over 4300 digits, .*: write it as a string \(in quotes\)"),
    ("log.jsonl", '{"user_id": "a", "item_id": "x"}\n' + "[" * 100_000 + "\n", {},
     r"log.jsonl: a line nests arrays or objects too deep to read"),  # a RecursionError
])
def test_numbers_past_what_python_or_numpy_hold_are_refused_naming_the_column(tmp_path, name, text, options,
                                                                               message):
    """Each was an OverflowError's traceback (or Python's advice to call ``sys.set_int_max_str_digits``)."""
    with pytest.raises(ValueError, match=message):
        _load(tmp_path, text, name, **options)


def test_a_catalogue_header_read_as_data_is_refused(tmp_path):
    """With --no-catalog-header, "item_id" was published as a candidate (and "price" as a string feature)."""
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item_id,price\na,1.5\nb,2.0\n")
    with pytest.raises(ValueError, match=r"items.csv: read with --no-catalog-header, but its first line names the id "
                                         r"column \(item_id\)"):
        _load(tmp_path, "user_id,item_id\nu1,a\nu2,b\n", catalog_path=catalogue, catalog_header=False,
              catalog_id_col="0", catalog_feature_cols=("1",))
    catalogue.write_text("a,1.5\nb,2.0\n")  # no header: read as before
    d = _load(tmp_path, "user_id,item_id\nu1,a\nu2,b\n", catalog_path=catalogue, catalog_header=False,
              catalog_id_col="0", catalog_feature_cols=("1",))
    assert list(d.catalog) == ["a", "b"] and list(d.candidate_features["1"]) == [1.5, 2.0]


def test_catalogue_rows_left_out_or_overridden_are_counted(tmp_path):
    catalogue = tmp_path / "items.csv"
    catalogue.write_text("item_id,genre\nx,g1\nx,g2\n,g9\ny,g3\n")
    d = _load(tmp_path, "user_id,item_id\nu1,x\nu2,y\n", catalog_path=catalogue, catalog_feature_cols=("genre",))
    assert list(d.catalog) == ["x", "y"] and list(d.candidate_features["genre"]) == ["g2", "g3"]
    assert d.info["dropped_catalog_unusable_ids"] == 1 and d.info["dropped_catalog_repeated_ids"] == 1
    catalogue.write_text("item_id,genre\nx,g1\ny,g3\n")
    d = _load(tmp_path, "user_id,item_id\nu1,x\nu2,y\n", catalog_path=catalogue, catalog_feature_cols=("genre",))
    assert not any(key.startswith("dropped_catalog") for key in d.info)  # none to count: not in the run's line


def test_blank_lines_before_the_header_are_layout(tmp_path):
    """They made the header read as no columns: "columns 'user_id', 'item_id' not found; columns found: (none)". Read
    past, they still count in the line an error names (a review found "row 3", the header's, for line 5)."""
    d = _load(tmp_path, "\n\nuser_id,item_id\nu1,a\n")
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "a")]
    with pytest.raises(ValueError, match=r"log.csv: row 5 has 1 fields, need at least 2"):
        _load(tmp_path, "\n\nuser_id,item_id\nu1,a\nu2\n")


def test_a_gzip_file_without_its_suffix_is_read(tmp_path):
    """It was said to be "not UTF-8 text", with advice to convert it from latin1."""
    (tmp_path / "log.csv").write_bytes(gzip.compress(b"user_id,item_id\nu1,a\nu2,b\n"))
    d = load_dataset("interactions-csv", DatasetOptions(data_path=tmp_path / "log.csv"))
    assert list(d.candidate_ids) == ["a", "b"]


def test_a_cut_json_lines_gzip_names_the_last_line_read(tmp_path):
    """The line count moved only once a chunk was read whole: "unreadable after line 0" after thousands."""
    lines = "".join(f'{{"user_id": "u{i}", "item_id": "i{i}"}}\n' for i in range(20_000)).encode()
    data = gzip.compress(lines)
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut.jsonl.gz: unreadable after line (\d+)") as refused:
        load_dataset("interactions-csv", DatasetOptions(data_path=tmp_path / "cut.jsonl.gz"))
    assert int(refused.value.args[0].split("unreadable after line ")[1].split(":")[0]) > 1000
