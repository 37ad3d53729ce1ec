"""recsys-train end to end on the file adapters and the non-random splits."""

import json

import numpy as np
import pytest

from model_registry import Registry, verify_version
from trainer import cli


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
    status = cli.main(["--tune-budget-s", "0", "--dataset", "interactions-csv", "--data-path", str(tmp_path / "reviews.csv"),
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
    status = cli.main(["--tune-budget-s", "0", "--dataset", "sessions", "--data-path", str(tmp_path / "clicks.csv"), "--time-col", "Time",
                       "--split", "leave-last-out", "--tower", "sequence", "--registry", str(tmp_path / "reg"),
                       "--model", "clicks", "--epochs", "1", "--embedding-dim", "8", "--quiet"])
    assert status == 0


def test_missing_data_path_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--tune-budget-s", "0", "--dataset", "interactions-csv", "--registry", str(tmp_path), "--model", "m"])
    assert exit_info.value.code == 2
    assert "--data-path is required" in capsys.readouterr().err
