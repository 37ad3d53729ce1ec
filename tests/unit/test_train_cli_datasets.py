"""recsys-train end to end on the file adapters and the non-random splits."""

import json

import numpy as np
import pytest

from model_registry import Registry, verify_version
from model_registry.customers import DEFAULT_HISTORY_LENGTH
from trainer import cli
from trainer.towers.config import MAX_COVERING_HISTORY, covering_history_length


def write_reviews(path, customers=40, items=30, seed=0):
    rng = np.random.default_rng(seed)
    lines = ["user_id,business_id,stars,date"]
    for i in range(1200):
        u, b = rng.integers(customers), rng.integers(items)
        lines.append(f"u{u},b{(u + b % 5) % items},{rng.integers(1, 6)},2020-01-{1 + i % 28:02d}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("split", ["temporal", "leave-last-out"])
def test_reviews_file_with_rating_threshold_and_split(tmp_path, capsys, split):
    write_reviews(tmp_path / "reviews.csv")
    metrics_out = tmp_path / "metrics.json"
    status = cli.main(["--tune-budget-s", "0",
                       "--dataset", "interactions-csv", "--data-path", str(tmp_path / "reviews.csv"),
                       "--customer-col", "user_id", "--candidate-col", "business_id", "--rating-col", "stars",
                       "--min-rating", "4", "--time-col", "date", "--split", split,
                       "--registry", str(tmp_path / "reg"), "--model", "reviews", "--epochs", "1",
                       "--embedding-dim", "8", "--quiet", "--metrics-out", str(metrics_out)])
    assert status == 0
    metrics = json.loads(metrics_out.read_text())
    assert metrics["split"]["method"] == split
    assert metrics["data"]["dropped_below_min_rating"] > 0
    assert "hit_rate_excluding_seen@10" in metrics["baselines"]["item_item_cosine"]
    assert (tmp_path / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    registry = Registry(tmp_path / "reg", "reviews")
    assert registry.versions() == [1] and verify_version(registry.version_dir(1)).version == 1
    assert "plot:" in capsys.readouterr().out


def test_sessions_file(tmp_path):
    rows = ["SessionId,ItemId,Time"] + [f"s{s},i{(s + j) % 20},{1000 * s + j}" for s in range(60) for j in range(4)]
    (tmp_path / "clicks.csv").write_text("\n".join(rows) + "\n")
    status = cli.main(["--tune-budget-s", "0",
                       "--dataset", "sessions", "--data-path", str(tmp_path / "clicks.csv"), "--time-col", "Time",
                       "--split", "leave-last-out", "--tower", "sequence", "--registry", str(tmp_path / "reg"),
                       "--model", "clicks", "--epochs", "1", "--embedding-dim", "8", "--quiet"])
    assert status == 0


@pytest.mark.parametrize("flags, expected", [([], None), (["--history-length", "7"], 7)])
def test_history_length_follows_the_data_unless_given(tmp_path, flags, expected):
    # 12 customers with 150 items each: 80% of them are trained on, and 90% of those
    # interactions sit within each customer's most recent ~108.
    rows = ["user_id,item_id,ts"] + [f"u{u},i{(u * 7 + j) % 400},{j}" for u in range(12) for j in range(150)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    metrics_out = tmp_path / "metrics.json"
    status = cli.main(["--tune-budget-s", "0",
                       "--dataset", "interactions-csv", "--data-path", str(tmp_path / "log.csv"),
                       "--time-col", "ts", "--tower", "history", "--registry", str(tmp_path / "reg"), "--model", "log",
                       "--epochs", "1", "--embedding-dim", "8", "--quiet", "--metrics-out", str(metrics_out), *flags])
    assert status == 0
    length = json.loads(metrics_out.read_text())["config"]["towers"]["history_length"]
    if expected is None:
        train_counts = 150 * 0.8
        assert 0.85 * train_counts < length < 0.95 * train_counts  # ~90% of a customer's training items
    else:
        assert length == expected


def test_history_length_covers_the_interactions_within_bounds():
    assert covering_history_length(np.repeat(np.arange(100), 100)) == 90  # 90 of each customer's 100
    assert covering_history_length(np.repeat(np.arange(100), 30)) == DEFAULT_HISTORY_LENGTH  # all short
    assert covering_history_length(np.repeat(np.arange(10), 1000)) == MAX_COVERING_HISTORY  # long: capped
    # 1,000 long histories among 200k customers: the store's bound keeps the default
    many = np.concatenate([np.repeat(np.arange(1000), 1000), np.arange(1000, 200_000)])
    assert covering_history_length(many) == DEFAULT_HISTORY_LENGTH
    assert covering_history_length(np.array([], dtype=str)) == DEFAULT_HISTORY_LENGTH


def test_missing_data_path_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--tune-budget-s", "0", "--dataset", "interactions-csv", "--registry", str(tmp_path), "--model", "m"])
    assert exit_info.value.code == 2
    assert "--data-path is required" in capsys.readouterr().err


def test_a_delimiter_of_more_than_one_character_is_a_one_line_error(tmp_path, capsys):
    write_reviews(tmp_path / "reviews.csv")
    with pytest.raises(SystemExit) as exit_info:  # a shell's '\t' arrives as two characters
        cli.main(["--tune-budget-s", "0", "--dataset", "interactions-csv", "--data-path", str(tmp_path / "reviews.csv"),
                  "--delimiter", "\\t", "--registry", str(tmp_path), "--model", "m"])
    assert exit_info.value.code == 2
    assert "--delimiter must be one character, got '\\\\t' (for tabs: --format tsv)" in capsys.readouterr().err
