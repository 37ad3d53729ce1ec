"""What a file that cannot be read as given is told: the encoding it is in, the flag that reads its delimiter, and a
header read as data refused; and a JSON-lines key that its first object lacks is still found."""

from __future__ import annotations

import pytest

from trainer.data import DatasetOptions, load_dataset


def _load(path, **options):
    return load_dataset("interactions-csv", DatasetOptions(data_path=path, **options))


def test_a_utf16_file_is_named_utf16_not_latin1(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\nu1,i1\n", encoding="utf-16")
    with pytest.raises(ValueError, match=r"log.csv is UTF-16 text .*iconv -f utf-16 -t utf-8 log.csv"):
        _load(path)


@pytest.mark.parametrize("name, text, flag", [
    ("log.csv", "user_id\titem_id\nu1\ti1\n", "--format tsv"),
    ("log.tsv", "user_id,item_id\nu1,i1\n", "--format csv"),
    ("log.csv", "user_id;item_id\nu1;i1\n", "--delimiter ';'"),
])
def test_a_header_read_as_one_column_names_the_flag_for_its_delimiter(tmp_path, name, text, flag):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"columns 'user_id', 'item_id' not found; .*: pass {flag}"):
        _load(path)


def test_a_json_key_the_first_object_lacks_is_found_on_a_later_line(tmp_path):
    """'stars' was refused as not found: only the first object's keys were looked at."""
    path = tmp_path / "reviews.jsonl"
    path.write_text('{"user_id": "a", "item_id": "x"}\n{"user_id": "b", "item_id": "y", "stars": 5}\n'
                    '{"user_id": "c", "item_id": "z", "stars": 2}\n')
    d = _load(path, rating_col="stars", min_rating=4)
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("b", "y")]
    with pytest.raises(ValueError, match=r"column 'date' not found; columns found: user_id, item_id, stars \(the keys "
                                         r"of the first 3 lines\)"):
        _load(path, time_col="date")


def test_no_header_on_a_file_with_a_header_is_refused_not_read_as_an_interaction(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\nu1,i1\nu2,i2\n")
    with pytest.raises(ValueError, match=r"log.csv: read with --no-header, but its first line names id columns "
                                         r"\(user_id, item_id\)"):
        _load(path, header=False, customer_col="0", candidate_col="1")
    path.write_text("u1,i1\nu2,i2\n")
    assert len(_load(path, header=False, customer_col="0", candidate_col="1")) == 2
