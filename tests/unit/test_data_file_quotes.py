"""A quote in a CSV/TSV file that is not closed where its writer meant it changed what was read without a word: the
lines after it became one text field (a customer paired with another row's candidate, the rows between them gone),
or an id opening with a quote lost its quotes and became another id."""

from __future__ import annotations

import pytest

from trainer.data import DatasetOptions, load_dataset


def _rows(n, sep, start=0):
    return "".join(f"u{i}{sep}ok{sep}i{i}{sep}{1_700_000_000 + i}\n" for i in range(start, start + n))


def _load(tmp_path, name, text, dataset="interactions-csv", **options):
    path = tmp_path / name
    path.write_text(text, newline="")
    return load_dataset(dataset, DatasetOptions(data_path=path, **options))


@pytest.mark.parametrize("sep, name", [("\t", "reviews.tsv"), (",", "reviews.csv")])
def test_an_open_quote_in_a_text_column_closed_by_a_later_stray_quote_is_refused_naming_the_lines(tmp_path, sep,
                                                                                                    name):
    """alice's "Best pizza read lines 3-8 into her text: her candidate became bob's, bob and 4 rows were gone."""
    head = sep.join(["user_id", "text", "item_id", "ts"]) + "\n"
    alice = sep.join(["alice", '"Best pizza', "i_alice", "1700000000"]) + "\n"
    for bob, error in [('she said "wow', r"line 3-8: '.' expected after '\"' \(a field that starts with a quote"),
                       ('size 12"', "line 3: a quote opening a field of column 'text' is closed only on line 8")]:
        bob_row = sep.join(["bob", bob, "i_bob", "1700000100"]) + "\n"
        text = head + _rows(1, sep) + alice + _rows(4, sep, 1) + bob_row + _rows(5, sep)  # customers come back
        with pytest.raises(ValueError, match=rf"{name}: {error}"):
            _load(tmp_path, name, text, time_col="ts")


def test_a_quote_left_open_to_the_end_in_the_last_column_is_refused_in_interactions_and_sessions(tmp_path):
    """The rows after it were one field of the last column: 2 rows read of 6, and no error."""
    text = "user_id,item_id,ts,text\nu0,i0,1700000000,ok\nalice,i1,1700000001,\"Best pizza\n" + "".join(
        f"u{i},i{i},{1_700_000_000 + i},ok\n" for i in range(2, 6))
    with pytest.raises(ValueError, match=r"log.csv: line 3: a quote opening a field of column 'text' is closed only "
                                         r"on line 7, so lines 3-7"):
        _load(tmp_path, "log.csv", text, time_col="ts")
    with pytest.raises(ValueError, match=r"clicks.csv: line 3: a quote opening a field of column 'text'"):
        _load(tmp_path, "clicks.csv", text, "sessions", session_col="user_id", item_col="item_id")


def test_quoted_text_with_delimiters_and_line_breaks_still_loads(tmp_path):
    text = ('user_id,text,item_id,ts\nu1,"Great pizza, really.\nWould go again, yes",i1,1700000000\n'
            'u2,"a\n\nb ""quoted"", c",i2,1700000001\nu3,plain,i3,1700000002\n')
    d = _load(tmp_path, "log.csv", text, time_col="ts")
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "i1"), ("u2", "i2"), ("u3", "i3")]
    assert d.info["rows_read"] == 3
    # Prose holding a row's worth of delimiters on each line: its words are not where a time or an id would be.
    text = 'user_id,text,item_id,ts\nu1,"Great pizza, pasta, salad.\nWould return, yes",i1,1700000000\nu2,ok,i2,1\n'
    for time_col in ("ts", None):
        assert len(_load(tmp_path, "log.csv", text, time_col=time_col)) == 2


@pytest.mark.parametrize("name, text, line", [
    ("log.tsv", 'user_id\titem_id\nu0\ti0\nu1\t"Weird Al" Yankovic\n', 3),  # was read as Weird Al Yankovic
    ("log.tsv", 'user_id\titem_id\nu0\ti0\nu1\t"quoted"x\n', 3),
    ("log.csv", 'user_id,item_id\nu0,i0\nu2,"x"y\n', 3),  # was read as xy
])
def test_an_id_that_opens_with_a_quote_and_goes_on_after_it_is_refused_not_changed(tmp_path, name, text, line):
    with pytest.raises(ValueError, match=rf"{name}: line {line}: .* expected after '\"' \(a field that starts with "
                                         rf"a quote runs to the next quote"):
        _load(tmp_path, name, text)


def test_an_id_quoted_whole_with_its_quotes_doubled_loads_as_written(tmp_path):
    d = _load(tmp_path, "log.tsv", 'user_id\titem_id\nu0\ti0\nu1\t"""Weird Al"" Yankovic"\n')
    assert d.candidate_ids.tolist() == ["i0", '"Weird Al" Yankovic']
