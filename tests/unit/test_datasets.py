"""Data set adapters: generic interactions files (CSV/TSV/JSONL), catalogue filter,
min-rating, sessions, clear errors, and the flags -> options -> load path."""

from __future__ import annotations

import argparse
import csv
import json

import numpy as np
import pytest

from settings.flags import add_flags, from_args
from trainer.data import DATASET_NAMES, DatasetOptions, Interactions, load_dataset
from trainer.data.synthetic import SyntheticConfig, search_right, synthetic

REVIEWS = [  # user, business, stars, date
    ("u1", "b1", 5, "2018-07-07 22:09:11"),
    ("u1", "b2", 2, "2018-07-08 10:00:00"),
    ("u2", "b1", 4, "2017-01-01 00:00:00"),
    ("u3", "b3", 3, "2019-05-05 05:05:05"),
    ("u2", "b9", 5, "2019-06-06 06:06:06"),  # b9 is not in the catalogue
]


def _write_delimited(path, header, rows, sep=","):
    path.write_text(sep.join(header) + "\n" + "".join(sep.join(map(str, r)) + "\n" for r in rows))
    return path


def _reviews_options(path, **kw):
    return DatasetOptions(data_path=path, customer_col="user_id", candidate_col="business_id",
                          rating_col="stars", time_col="date", **kw)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_interactions_file_formats(tmp_path, fmt):
    if fmt == "jsonl":
        path = tmp_path / "reviews.jsonl"
        path.write_text("".join(json.dumps({"review_id": i, "user_id": u, "business_id": b, "stars": s,
                                            "text": 'said "user_id": no', "date": d}) + "\n"
                                for i, (u, b, s, d) in enumerate(REVIEWS)))
    else:
        path = _write_delimited(tmp_path / f"reviews.{fmt}", ["user_id", "business_id", "stars", "date"], REVIEWS,
                                "\t" if fmt == "tsv" else ",")
    d = load_dataset("interactions-csv", _reviews_options(path))
    assert isinstance(d, Interactions) and len(d) == 5
    assert list(d.customer_ids) == [r[0] for r in REVIEWS] and list(d.candidate_ids) == [r[1] for r in REVIEWS]
    assert d.customer_ids.dtype.kind == "U" and d.timestamps.dtype == np.int64
    assert d.timestamps[0] == np.datetime64("2018-07-07T22:09:11", "s").astype(np.int64)
    assert list(d.catalog) == ["b1", "b2", "b3", "b9"]
    assert d.info["rows_read"] == 5 and d.info["format"] == fmt and d.info["rows_per_second"] > 0


def test_min_rating_and_catalogue_filter_with_features(tmp_path):
    path = _write_delimited(tmp_path / "reviews.csv", ["user_id", "business_id", "stars", "date"], REVIEWS)
    catalog = tmp_path / "business.jsonl"
    catalog.write_text("".join(json.dumps(r) + "\n" for r in [
        {"business_id": "b1", "name": "Cafe", "stars": 4.5, "categories": ["Food", "Coffee"]},
        {"business_id": "b2", "name": "Bar", "stars": None, "categories": ["Nightlife"]},
        {"business_id": "b3", "name": "Gym", "stars": 3.0, "categories": []},
        {"business_id": "b4", "name": "Shop", "stars": 2.0, "categories": ["Retail"]},
    ]))
    d = load_dataset("interactions-csv", _reviews_options(
        path, min_rating=4, catalog_path=catalog, catalog_id_col="business_id",
        catalog_feature_cols=("name", "stars", "categories")))
    # stars >= 4 keeps rows 0, 2, 4; b9 (row 4) has no catalogue record.
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "b1"), ("u2", "b1")]
    assert d.info["dropped_below_min_rating"] == 2 and d.info["dropped_not_in_catalog"] == 1
    assert list(d.catalog) == ["b1", "b2", "b3", "b4"]  # the catalogue, even candidates without events
    f = d.candidate_features
    assert list(f["name"]) == ["Cafe", "Bar", "Gym", "Shop"]
    assert list(f["categories"])[:3] == ["Food|Coffee", "Nightlife", ""]
    assert f["stars"].dtype == np.float32 and f["stars"][0] == 4.5 and np.isnan(f["stars"][1])
    # take() shares the tables.
    assert d.take(np.array([1])).candidate_features is f


def test_integer_ids_without_time_use_file_order(tmp_path):
    path = _write_delimited(tmp_path / "ratings.csv", ["user", "recipe", "rating"],
                            [(10, 7, 5), (10, 8, 0), (3, 7, 4)])
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, customer_col="user", candidate_col="recipe",
                                                        rating_col="rating", min_rating=4))
    assert list(d.customer_ids) == ["10", "3"] and list(d.candidate_ids) == ["7", "7"]
    assert list(d.timestamps) == [0, 2]


def test_tool_usage_log_headerless_with_delimiter(tmp_path):
    path = tmp_path / "usage.txt"
    path.write_text("alice;/home;1700000000\nbob;/docs;1700000005\nalice;/docs;1700000009\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, format="csv", delimiter=";", header=False,
                                                        customer_col="0", candidate_col="1", time_col="2"))
    assert list(d.candidate_ids) == ["/home", "/docs", "/docs"] and d.timestamps[2] == 1700000009


def test_bad_column_names_the_missing_and_found_columns(tmp_path):
    path = _write_delimited(tmp_path / "reviews.csv", ["user_id", "business_id", "stars", "date"], REVIEWS)
    with pytest.raises(ValueError, match=r"'item_id' not found; columns found: user_id, business_id, stars, date"):
        load_dataset("interactions-csv", DatasetOptions(data_path=path))
    jl = tmp_path / "r.jsonl"
    jl.write_text('{"user_id": "u", "business_id": "b"}\n')
    with pytest.raises(ValueError, match=r"columns 'stars', 'date' not found; columns found: user_id, business_id"):
        load_dataset("interactions-csv", _reviews_options(jl))
    with pytest.raises(ValueError, match="min_rating: needs --rating-col"):
        load_dataset("interactions-csv", DatasetOptions(data_path=path, min_rating=3))
    with pytest.raises(ValueError, match="data_path: is required for --dataset sessions"):
        load_dataset("sessions", DatasetOptions())
    with pytest.raises(ValueError, match="pass --format"):
        load_dataset("interactions-csv", DatasetOptions(data_path=_write_delimited(tmp_path / "x.dat", ["a"], [])))
    with pytest.raises(ValueError, match="must be numeric"):
        load_dataset("interactions-csv", DatasetOptions(
            data_path=path, candidate_col="business_id", rating_col="date"))
    short = tmp_path / "short.csv"
    short.write_text("user_id,item_id\nu1,i1\nu2\n")
    with pytest.raises(ValueError, match="row 3 has 1 fields"):
        load_dataset("interactions-csv", DatasetOptions(data_path=short))


def test_sessions_drop_single_event_sessions_and_sort_by_time(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text("SessionId,Time,ItemId\n"
                    "1,2014-04-07T10:51:09.277Z,214536502\n"
                    "2,2014-04-07T11:00:00.000Z,214577561\n"
                    "1,2014-04-07T10:50:00.000Z,214536500\n"
                    "3,2014-04-07T12:00:00.000Z,214662742\n"
                    "3,2014-04-07T12:01:00.000Z,214662742\n")
    d = load_dataset("sessions", DatasetOptions(data_path=path, time_col="Time"))
    assert list(d.customer_ids) == ["1", "1", "3", "3"]
    assert list(d.candidate_ids) == ["214536500", "214536502", "214662742", "214662742"]
    assert np.all(np.diff(d.timestamps[:2]) >= 0)
    assert d.info["dropped_single_event_sessions"] == 1 and d.info["sessions"] == 2
    # Configurable names (RetailRocket: timestamp in ms, visitorid, itemid).
    rr = _write_delimited(tmp_path / "events.csv", ["timestamp", "visitorid", "event", "itemid"],
                          [(1433221332117, 7, "view", 1), (1433221332000, 7, "view", 2), (5, 8, "view", 3)])
    d = load_dataset("sessions", DatasetOptions(data_path=rr, session_col="visitorid", item_col="itemid",
                                                time_col="timestamp"))
    assert list(d.candidate_ids) == ["2", "1"] and d.info["dropped_single_event_sessions"] == 1


def test_sessions_keep_the_fraction_of_decimal_epoch_seconds(tmp_path):
    # One session: a at .117, b at .900, a again at .500 of the same second, written out of order.
    path = _write_delimited(tmp_path / "clicks.csv", ["session", "item", "ts"],
                            [("s1", "a", "1433221332.117"), ("s1", "b", "1433221332.900"),
                             ("s1", "a", "1433221332.500"), ("s2", "c", "1433221400"), ("s2", "d", "1433221401")])
    d = load_dataset("sessions", DatasetOptions(data_path=path, session_col="session", item_col="item",
                                                time_col="ts"))
    assert list(d.candidate_ids) == ["a", "a", "b", "c", "d"] and "dropped_duplicates" not in d.info
    assert np.allclose(d.timestamps[:3] - 1433221332, [0.117, 0.5, 0.9])
    # An interactions file of the same times keeps whole seconds: the two a's are one event there.
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, customer_col="session",
                                                        candidate_col="item", time_col="ts"))
    assert d.timestamps.dtype == np.int64 and d.info["dropped_duplicates"] == 1
    assert list(d.timestamps[:2]) == [1433221332] * 2


def test_flags_to_options_to_load(tmp_path):
    path = _write_delimited(tmp_path / "reviews.tsv", ["user_id", "business_id", "stars", "date"], REVIEWS, "\t")
    p = argparse.ArgumentParser()
    add_flags(p, DatasetOptions)
    args = p.parse_args(["--data-path", str(path), "--customer-col", "user_id", "--candidate-col", "business_id",
                         "--rating-col", "stars", "--time-col", "date", "--min-rating", "4",
                         "--catalog-feature-cols", "a, b"])
    o = from_args(DatasetOptions, args)
    assert o.min_rating == 4.0 and o.catalog_feature_cols == ("a", "b") and o.format is None and o.header
    assert len(load_dataset("interactions-csv", o)) == 3
    assert set(DATASET_NAMES) == {"movielens-100k", "synthetic", "interactions-csv", "sessions"}
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("nope", o)


def test_synthetic_through_load_dataset_and_guide_search():
    d = load_dataset("synthetic", DatasetOptions(synthetic=SyntheticConfig(50, 20, 300, 4)), seed=3)
    assert len(d) == 300 and len(d.catalog) == 20
    assert np.array_equal(d.customer_ids, synthetic(50, 20, 300, 4, seed=3).customer_ids)
    rng = np.random.default_rng(0)
    cum = np.cumsum(rng.random(1000) ** 4)  # skewed, with near-empty buckets
    cum[100:110] = cum[99]  # zero-weight run
    values = np.concatenate([rng.random(20_000) * cum[-1], cum[:-1], [0.0]])
    assert np.array_equal(search_right(cum, values), np.searchsorted(cum, values, side="right"))


EVENTS = [  # RetailRocket: timestamp (ms), visitor, event, item, transaction
    (1433221332117, 7, "view", 1, ""), (1433221332200, 7, "addtocart", 1, ""), (1433221400000, 7, "transaction", 1, 4),
    (1433221500000, 7, "view", 2, ""), (1433221332000, 8, "view", 3, ""), (1433221332001, 8, "addtocart", 3, ""),
    (1433221332002, 9, "view", 5, ""),
]


def test_event_types_are_counted_and_filtered(tmp_path):
    path = _write_delimited(tmp_path / "events.csv", ["timestamp", "visitorid", "event", "itemid", "transactionid"],
                            EVENTS)
    common = dict(data_path=path, session_col="visitorid", item_col="itemid", time_col="timestamp",
                  event_col="event")
    d = load_dataset("sessions", DatasetOptions(**common))
    assert d.info["event_counts"] == {"addtocart": 2, "transaction": 1, "view": 4} and len(d) == 6
    assert "dropped_other_events" not in d.info
    # Carts and purchases only: visitor 8 keeps one event, so the session goes (9 keeps none).
    d = load_dataset("sessions", DatasetOptions(**common, events=("addtocart", "transaction")))
    assert list(d.customer_ids) == ["7", "7"] and list(d.candidate_ids) == ["1", "1"]
    assert d.info["dropped_other_events"] == 4 and d.info["dropped_single_event_sessions"] == 1
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, customer_col="visitorid",
                                                        candidate_col="itemid", event_col="event",
                                                        events=("view",)))
    assert list(d.candidate_ids) == ["1", "2", "3", "5"] and d.info["dropped_other_events"] == 3
    with pytest.raises(ValueError, match=r"event type 'purchase' not in column 'event'; found: addtocart, "
                                         r"transaction, view"):
        load_dataset("sessions", DatasetOptions(**common, events=("view", "purchase")))
    with pytest.raises(ValueError, match="events: needs --event-col"):
        DatasetOptions(data_path=path, events=("view",))


def test_unrated_value_is_kept_by_min_rating(tmp_path):
    path = _write_delimited(tmp_path / "RAW_interactions.csv", ["user_id", "recipe_id", "date", "rating"],
                            [(1, 10, "2003-02-17", 5), (1, 11, "2003-02-18", 0), (2, 10, "2004-01-01", 2),
                             (2, 12, "2004-01-02", 4), (3, 11, "2005-05-05", "")])
    options = dict(data_path=path, customer_col="user_id", candidate_col="recipe_id", rating_col="rating",
                   time_col="date", min_rating=4)
    d = load_dataset("interactions-csv", DatasetOptions(**options))
    assert list(d.candidate_ids) == ["10", "12"] and d.info["dropped_below_min_rating"] == 3
    d = load_dataset("interactions-csv", DatasetOptions(**options, unrated_value=0))
    assert list(d.candidate_ids) == ["10", "11", "12"]
    assert d.info["kept_unrated"] == 1 and d.info["dropped_below_min_rating"] == 2  # 2 stars, and an empty rating
    with pytest.raises(ValueError, match="unrated_value: needs --min-rating"):
        DatasetOptions(data_path=path, rating_col="rating", unrated_value=0)


def test_catalogue_list_literals_become_joined_items(tmp_path):
    path = _write_delimited(tmp_path / "RAW_interactions.csv", ["user_id", "recipe_id"], [(1, 10), (2, 11)])
    catalog = tmp_path / "RAW_recipes.csv"
    with open(catalog, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "tags", "ingredients", "name", "n_ingredients"])
        w.writerow([10, str(["60-minutes-or-less", "time-to-make"]), str(["don't", 'say "cheese"', "salt"]),
                    "[draft] pie", 3])
        w.writerow([11, "[]", str(["a\\b", "c"]), "soup", 2])
        w.writerow([12, "", "['x']", "stew", 1])
    d = load_dataset("interactions-csv", DatasetOptions(
        data_path=path, customer_col="user_id", candidate_col="recipe_id", catalog_path=catalog, catalog_id_col="id",
        catalog_feature_cols=("tags", "ingredients", "name", "n_ingredients")))
    f = d.candidate_features
    assert list(f["tags"]) == ["60-minutes-or-less|time-to-make", "", ""]
    assert list(f["ingredients"]) == ['don\'t|say "cheese"|salt', "a\\b|c", "x"]  # escapes go through literal_eval
    assert list(f["name"]) == ["[draft] pie", "soup", "stew"]  # not every cell is a list: kept as written
    assert f["n_ingredients"].dtype == np.float32


def test_spaces_after_delimiters_do_not_change_ids_or_hide_quotes(tmp_path):
    path = tmp_path / "hand_written.csv"
    path.write_text('user_id, item_id, title\nu1, i1, "Pizza, Inc"\nu2, "i2, x", soup\n')
    catalog = tmp_path / "items.csv"
    catalog.write_text("item_id,title\ni1,Pizza\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path))
    assert list(d.customer_ids) == ["u1", "u2"] and list(d.candidate_ids) == ["i1", "i2, x"]
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, catalog_path=catalog))
    assert list(d.candidate_ids) == ["i1"] and d.info["dropped_not_in_catalog"] == 1


def test_rows_without_an_id_are_dropped_and_counted(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id\nu1,i1\n,i2\nu3,\nu1,i2\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path))
    assert list(zip(d.customer_ids, d.candidate_ids)) == [("u1", "i1"), ("u1", "i2")]
    assert list(d.catalog) == ["i1", "i2"] and d.info["dropped_missing_id"] == 2
    jl = tmp_path / "clicks.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in [
        {"SessionId": 1, "ItemId": "a"}, {"SessionId": None, "ItemId": "b"}, {"SessionId": 1, "ItemId": "c"},
        {"ItemId": "d"}]))
    d = load_dataset("sessions", DatasetOptions(data_path=jl))
    assert list(d.customer_ids) == ["1", "1"] and d.info["dropped_missing_id"] == 2
    catalog = tmp_path / "items.csv"
    catalog.write_text("item_id,title\ni1,x\n,nameless\ni2,y\n")
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, catalog_path=catalog,
                                                        catalog_feature_cols=("title",)))
    assert list(d.catalog) == ["i1", "i2"] and list(d.candidate_features["title"]) == ["x", "y"]


def test_times_with_a_blank_or_unreadable_cell_name_the_problem(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,ts\nu1,i1,1700000000\nu1,i2,\nu2,i1,1700000005\n")
    # Epoch numbers with one blank cell were read as calendar years (the blank as the earliest time).
    with pytest.raises(ValueError, match=r"column 'ts' has 1 empty value"):
        load_dataset("interactions-csv", DatasetOptions(data_path=path, time_col="ts"))
    path.write_text("user_id,item_id,ts\nu1,i1,2014-01-01\nu1,i2,03/04/2014\n")
    with pytest.raises(ValueError, match=r"found '03/04/2014'"):
        load_dataset("interactions-csv", DatasetOptions(data_path=path, time_col="ts"))
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"user_id": "u1", "item_id": "i1", "ts": 5}\n{"user_id": "u1", "item_id": "i2", "ts": null}\n')
    with pytest.raises(ValueError, match=r"column 'ts' has 1 empty value"):
        load_dataset("interactions-csv", DatasetOptions(data_path=jl, time_col="ts"))


def test_a_json_line_that_is_not_an_object_is_a_clear_error(tmp_path):
    jl = tmp_path / "log.jsonl"
    jl.write_text('{"user_id": "u1", "item_id": "i1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"not a JSON object: '\[1, 2\]"):
        load_dataset("interactions-csv", DatasetOptions(data_path=jl))


def test_delimiter_must_be_one_character():
    with pytest.raises(ValueError, match=r"delimiter: must be one character, got '\\\\t'"):
        DatasetOptions(delimiter="\\t")
    assert DatasetOptions(delimiter=";").delimiter == ";"


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "BX-Book-Ratings.csv"
    path.write_bytes("user_id,item_id\nu1,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"BX-Book-Ratings.csv is not UTF-8 text .*iconv -f latin1"):
        load_dataset("interactions-csv", DatasetOptions(data_path=path))


def test_exact_duplicate_rows_are_dropped_and_counted_so_no_event_is_in_both_splits(tmp_path):
    """A log that writes an event twice (a retried export, files concatenated with overlap): the copies split apart,
    one trains and the other is a test event the model has seen, which inflates the hit rate."""
    from trainer.data.split import SPLITS, make_split

    rows = [(f"u{i % 4}", f"i{i}", 1_700_000_000 + i) for i in range(12)]
    path = _write_delimited(tmp_path / "log.csv", ["user_id", "item_id", "ts"], rows + rows[::2] + [rows[0]])
    d = load_dataset("interactions-csv", DatasetOptions(data_path=path, time_col="ts"))
    for method in SPLITS:
        train, test = make_split(d, method, 0.25)
        events = lambda part: set(zip(part.customer_ids, part.candidate_ids, part.timestamps.tolist()))  # noqa: E731
        assert not events(train) & events(test), method
    assert d.info["rows_read"] == 19 and d.info["dropped_duplicates"] == 7 and len(d) == 12
    assert list(zip(d.customer_ids, d.candidate_ids, d.timestamps.tolist())) == rows  # the first of each, in order
    # The same event at another time is another event; without a time column the same pair is one interaction
    # (the row number would make every copy unique: tests/unit/test_data_file_checks.py).
    again = _write_delimited(tmp_path / "again.csv", ["user_id", "item_id", "ts"], [("u1", "i1", 1), ("u1", "i1", 2)])
    assert len(load_dataset("interactions-csv", DatasetOptions(data_path=again, time_col="ts"))) == 2
    assert len(load_dataset("interactions-csv", DatasetOptions(data_path=path))) == 12
