"""The data-shape generators (trainer.data.generators): each file has its real
data set's format, the planted structure is there, the same seed writes the
same bytes, and the returned flags load the files through load_dataset and
parse as recsys-train flags."""

from __future__ import annotations

import ast
import csv
import json
import re
import shlex

import numpy as np
import pytest

from settings.flags import ConfigError
from trainer import cli
from trainer.data import load_dataset
from trainer.data.generators import SHAPES, generate
from trainer.data.generators.__main__ import main as generators_main
from trainer.data.generators.common import TasteSpec

SMALL = 6_000


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Every shape written once at SMALL interactions (seed 1): shape -> GeneratedData."""
    root = tmp_path_factory.mktemp("shapes")
    return {shape: generate(shape, root / shape, seed=1, interactions=SMALL) for shape in SHAPES}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}


def test_every_shape_is_seeded_and_loads_with_its_flags(small, tmp_path):
    for shape, data in small.items():
        again = generate(shape, tmp_path / "again" / shape, seed=1, interactions=SMALL)
        assert [p.read_bytes() for p in again.files] == [p.read_bytes() for p in data.files], shape
        other = generate(shape, tmp_path / "other" / shape, seed=2, interactions=SMALL)
        assert other.files[0].read_bytes() != data.files[0].read_bytes(), shape
        assert 0.9 * SMALL <= data.rows <= 1.1 * SMALL, (shape, data.rows)
        loaded = load_dataset(data.dataset, data.options())
        assert 0.5 * data.rows <= len(loaded) <= data.rows and loaded.info["rows_read"] == data.rows
        # The flags are recsys-train's: the whole command parses and validates.
        argv = shlex.split(data.command(str(tmp_path / "reg")))[1:]
        parser = cli.build_parser()
        config = cli.config_from_args(parser, parser.parse_args(argv))
        assert config.dataset == data.dataset and config.data == data.options()


def test_yelp_reviews_are_yelp_json_lines_with_skewed_stars(small):
    data = small["yelp"]
    assert data.files[0].name == "review.json"
    rows = [json.loads(line) for line in data.files[0].read_text().splitlines()]
    assert list(rows[0]) == ["review_id", "user_id", "business_id", "stars", "useful", "funny", "cool", "text",
                             "date"]
    for key in ("review_id", "user_id", "business_id"):
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{22}", r[key]) for r in rows), key
    assert len({r["review_id"] for r in rows}) == len(rows)
    assert len({(r["user_id"], r["business_id"]) for r in rows}) == len(rows)  # one review per business
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["date"]) for r in rows)
    assert min(r["date"] for r in rows) >= "2005-03-01" and max(r["date"] for r in rows) <= "2022-01-20"
    assert all(isinstance(r["useful"], int) and r["useful"] >= 0 and r["text"] for r in rows)
    stars = np.array([r["stars"] for r in rows])
    assert set(np.unique(stars)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    shares = np.bincount(stars.astype(int), minlength=6)[1:] / len(stars)
    assert np.allclose(shares, [0.14, 0.08, 0.10, 0.22, 0.46], atol=0.01)
    # --min-rating 4 keeps the 4 and 5 stars.
    loaded = load_dataset(data.dataset, data.options())
    assert len(loaded) == int((stars >= 4).sum()) and loaded.info["dropped_below_min_rating"] == (stars < 4).sum()
    # Zipf popularity: the top tenth of the businesses take a large share of the reviews.
    counts = np.sort(np.unique([r["business_id"] for r in rows], return_counts=True)[1])[::-1]
    assert counts[:len(counts) // 10].sum() > 0.4 * len(rows)


def test_recipes_are_food_com_csvs_with_unrated_reviews_and_list_features(small):
    data = small["recipes"]
    interactions, recipes = data.files
    header, col = read_csv(interactions)
    assert (interactions.name, header) == ("RAW_interactions.csv", ["user_id", "recipe_id", "date", "rating",
                                                                    "review"])
    rating = np.array(col["rating"], dtype=int)
    assert set(np.unique(rating)) == {0, 1, 2, 3, 4, 5}
    assert 0.04 < (rating == 0).mean() < 0.07 and np.bincount(rating).argmax() == 5
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", d) for d in col["date"])
    assert len(set(zip(col["user_id"], col["recipe_id"]))) == len(rating)
    header, cat = read_csv(recipes)
    assert (recipes.name, header) == ("RAW_recipes.csv", ["name", "id", "minutes", "contributor_id", "submitted",
                                                          "tags", "n_steps", "steps", "description", "ingredients",
                                                          "n_ingredients"])
    tags = [ast.literal_eval(t) for t in cat["tags"]]
    ingredients = [ast.literal_eval(t) for t in cat["ingredients"]]
    assert all(isinstance(t, list) and t and all(isinstance(x, str) for x in t) for t in tags + ingredients)
    assert [len(i) for i in ingredients] == list(map(int, cat["n_ingredients"]))
    assert [len(ast.literal_eval(s)) for s in cat["steps"]] == list(map(int, cat["n_steps"]))
    assert all(int(m) >= 1 for m in cat["minutes"]) and len(set(cat["id"])) == len(cat["id"])
    assert set(col["recipe_id"]) <= set(cat["id"])
    submitted = dict(zip(cat["id"], cat["submitted"]))
    assert all(d >= submitted[r] for r, d in zip(col["recipe_id"], col["date"]))  # reviewed once posted

    loaded = load_dataset(data.dataset, data.options())
    info = loaded.info
    assert info["kept_unrated"] == (rating == 0).sum() and info["dropped_below_min_rating"] == (
        (rating >= 1) & (rating <= 3)).sum()
    assert len(loaded) == ((rating == 0) | (rating >= 4)).sum() and info["catalog_size"] == len(cat["id"])
    features = loaded.candidate_features
    row = int(np.searchsorted(loaded.catalog, cat["id"][0]))
    assert features["tags"][row] == "|".join(tags[0]) and features["ingredients"][row] == "|".join(ingredients[0])
    assert features["minutes"].dtype == np.float32 and features["name"][row] == cat["name"][0]


def test_retailrocket_events_have_the_view_heavy_funnel(small):
    data = small["retailrocket"]
    header, col = read_csv(data.files[0])
    assert (data.files[0].name, header) == ("events.csv", ["timestamp", "visitorid", "event", "itemid",
                                                           "transactionid"])
    ts = np.array(col["timestamp"], dtype=np.int64)
    assert np.all(np.diff(ts) >= 0) and 1_430_622_004_384 <= ts.min() and ts.max() <= 1_442_545_187_788
    event = np.array(col["event"])
    shares = {e: (event == e).mean() for e in ("view", "addtocart", "transaction")}
    assert shares["view"] > 0.94 and 0.02 < shares["addtocart"] < 0.04 and 0.005 < shares["transaction"] < 0.015
    transaction = np.array(col["transactionid"])
    assert np.all((transaction != "") == (event == "transaction"))
    assert all(t.isdigit() for t in transaction[event == "transaction"])
    # The funnel: every purchase was carted and viewed before, by the same visitor.
    first = {}
    for t, v, e, i in zip(ts, col["visitorid"], event, col["itemid"]):
        first.setdefault((v, i, e), t)
    for (v, i, e), t in first.items():
        if e != "view":
            assert first[(v, i, "view")] <= t and first[(v, i, "addtocart")] <= t

    loaded = load_dataset(data.dataset, data.options())
    assert loaded.info["event_counts"] == {e: int((event == e).sum()) for e in ("addtocart", "transaction", "view")}
    # Rows that repeat one event (events past the log's end share its last instant) are that one event.
    distinct = np.unique(np.array([col["visitorid"], col["itemid"], col["timestamp"]]).T, axis=0)
    visitors, counts = np.unique(distinct[:, 0], return_counts=True)
    assert loaded.info["dropped_single_event_sessions"] == (counts == 1).sum() > 0  # the long tail of visitors


def test_tool_usage_follows_workflows(small):
    data = small["tools"]
    header, col = read_csv(data.files[0])
    assert (data.files[0].name, header) == ("tool_usage.csv", ["user_id", "page", "timestamp"])
    assert all(re.fullmatch(r"/tools/[a-z0-9-]+-[a-z]+", p) for p in col["page"])
    assert all(re.fullmatch(r"2024-\d\d-\d\dT\d\d:\d\d:\d\dZ", t) for t in col["timestamp"])
    assert col["timestamp"] == sorted(col["timestamp"])
    assert len(set(col["page"])) <= 600  # a fixed set of tools, whatever the log's length
    # Markov: a tool's most frequent next tool (same user, within 30 minutes) is right
    # far more often than the most popular tool is.
    loaded = load_dataset(data.dataset, data.options())
    order = np.lexsort((loaded.timestamps, loaded.customer_ids))
    user, page, t = loaded.customer_ids[order], loaded.candidate_ids[order], loaded.timestamps[order]
    step = (user[1:] == user[:-1]) & (t[1:] - t[:-1] < 1800)
    current, following = page[:-1][step], page[1:][step]
    pairs, counts = np.unique(np.char.add(np.char.add(current, " "), following), return_counts=True)
    best = {}
    for pair, n in zip(pairs, counts):
        a, b = pair.split(" ")
        best[a] = max(best.get(a, (0, "")), (n, b))
    markov = np.mean([best[a][1] == b for a, b in zip(current, following)])
    popular = np.unique(page, return_counts=True)[1].max() / len(page)
    assert markov > 0.3 and markov > 4 * popular, (markov, popular)


def test_cli_writes_and_prints_the_training_command(tmp_path, capsys):
    assert generators_main(["tools", "--out", str(tmp_path / "t"), "--interactions", "500", "--seed", "3"]) == 0
    out = capsys.readouterr()
    command = shlex.split(out.out.strip())
    assert command[:3] == ["recsys-train", "--dataset", "interactions-csv"]
    assert command[command.index("--data-path") + 1] == str(tmp_path / "t" / "tool_usage.csv")
    assert "wrote" in out.err and (tmp_path / "t" / "tool_usage.csv").is_file()
    with pytest.raises(SystemExit):
        generators_main(["tools", "--out", str(tmp_path / "t"), "--interactions", "5"])
    assert "--interactions must be from 100 to 100,000,000" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        generators_main(["nope", "--out", str(tmp_path)])
    # Found trying the tool (stop 60): each was a traceback (numpy's ValueError, FileExistsError, a MemoryError).
    (tmp_path / "a_file").write_text("")
    for argv, says in ((["--seed", "-1"], "--seed must be an integer in [0, 2**32)"),
                       (["--interactions", "100000000000"], "--interactions must be from 100 to 100,000,000"),
                       (["--out", str(tmp_path / "a_file")], f"--out: cannot write {tmp_path / 'a_file'}: ")):
        with pytest.raises(SystemExit) as refused:
            generators_main(["tools", "--out", str(tmp_path / "u"), *argv])
        assert refused.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "u").exists()  # refused before the folder was made


def test_configs_are_validated(tmp_path):
    with pytest.raises(ValueError, match="unknown shape"):
        generate("nope", tmp_path)
    with pytest.raises(ConfigError, match="per_candidate"):
        TasteSpec(clusters=2, zipf_exponent=1.0, in_cluster_share=0.5, per_customer=5.0, activity_sigma=1.0,
                  per_candidate=3.0, candidates=10)
    with pytest.raises(ConfigError, match="star_shares"):
        generate("yelp", tmp_path, star_shares=(0.5, 0.5))
