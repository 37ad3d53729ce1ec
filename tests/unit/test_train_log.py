"""What recsys-train tells the person running it: a seed out of range names its flag; the first line counts the
rows the data lost; the share of test interactions whose customer was trained on is logged, recorded and
warned about when tiny; each epoch's line names a metric once."""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.test_train_cli_outputs import TINY, no_data
from trainer import cli

SHARE = "test_share_customer_in_train"


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_a_seed_numpy_cannot_take_names_its_flag_before_any_work(tmp_path, capsys, seed):
    with pytest.raises(SystemExit) as e:
        cli.main([*no_data(tmp_path), "--registry", str(tmp_path / "reg"), "--seed", seed])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert err.count("\n") == 0 and err.startswith("recsys-train: error: --seed must be"), err


def test_one_interaction_per_customer_is_warned_about_and_dropped_rows_are_counted(tmp_path, capsys):
    rows = [f"u{i},i{i % 30}" for i in range(300)]  # every customer once: none of the test's is trained on
    (tmp_path / "log.csv").write_text("user_id,item_id\n" + "\n".join(rows + rows[:7]) + "\n")
    status = cli.main([*TINY[TINY.index("--model"):TINY.index("--synthetic-customers")], "--dataset",
                       "interactions-csv", "--data-path", str(tmp_path / "log.csv"), "--registry", str(tmp_path / "r"),
                       "--metrics-out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    lines = [line for line in err.splitlines() if not line.startswith(("WARNING", "W0000", "I0000", "E0000"))]
    assert "dropped_duplicates 7" in lines[0], lines[:2]
    assert "test interactions whose customer has training interactions: 0.0%" in err, err[-3000:]
    assert re.search(r"^warning: only 0\.0% of the test interactions .*cold-start", err, re.M), err[-3000:]
    assert json.loads((tmp_path / "m.json").read_text())["data"][SHARE] == 0.0


def test_a_test_split_mostly_of_customers_without_training_interactions_is_warned_about(tmp_path, capsys):
    """85% of a temporal ml-100k test split is of customers the model never saw, and no warning fired (it took
    under 10%): every system's figure there is mostly its popularity fallback."""
    warm = [f"w{c},i{(c * 7 + j) % 40}" for c in range(60) for j in range(10)]
    cold = [f"u{c},i{c % 40}" for c in range(1400)]
    (tmp_path / "log.csv").write_text("user_id,item_id\n" + "\n".join(warm + cold) + "\n")
    status = cli.main([*TINY[TINY.index("--model"):TINY.index("--synthetic-customers")], "--dataset",
                       "interactions-csv", "--data-path", str(tmp_path / "log.csv"), "--registry", str(tmp_path / "r"),
                       "--metrics-out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    share = json.loads((tmp_path / "m.json").read_text())["data"][SHARE]
    assert 0.15 < share < 0.5, share
    assert re.search(rf"^warning: only {share:.1%} of the test interactions .*cold-start", err, re.M), err[-3000:]


def test_the_share_is_recorded_and_each_epoch_line_names_a_metric_once(tmp_path, capsys):
    # 40 candidates: early stopping watches hit_rate_excluding_seen@10, the rate the line always showed too.
    status = cli.main([*TINY, "--registry", str(tmp_path / "r"), "--metrics-out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert status == 0, err[-3000:]
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert epochs and all(line.count("hit_rate_excluding_seen@10=") == 1 for line in epochs), epochs
    assert "warning: only" not in err
    assert json.loads((tmp_path / "m.json").read_text())["data"][SHARE] > 0.9
