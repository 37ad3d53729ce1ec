"""Each data shape of trainer.data.generators, trained by the real recsys-train
with its data flags only (default towers), beats the popularity baseline of the
same run over all candidates and excluding seen, at 10 and 100.

The shapes are sized for the test budget (~20-25k interactions, each test
<= 45 s on 2 cores); the figures at the default ~100k are in the generators'
report. The data are seeded, so each run sees the same files.
"""

from __future__ import annotations

import json

import pytest

from trainer import cli
from trainer.data.generators import generate

pytestmark = pytest.mark.integration

# Training flags beyond the data's: no hyperparameter search (the presets only), and
# an epoch cap above where early stopping ends on these sizes (3-8 epochs).
TUNE_FLAGS: list[str] = ["--tune-budget-s", "0"]
EPOCHS = ["--epochs", "10"]
# Interactions written per shape: recipes' catalogue grows with its data, and the
# EASE baseline's cost with the catalogue's cube.
SIZES = {"yelp": 25_000, "recipes": 20_000, "retailrocket": 20_000, "tools": 25_000}
METRICS = [f"{kind}@{k}" for kind in ("hit_rate", "hit_rate_excluding_seen") for k in (10, 100)]


@pytest.mark.parametrize("shape", list(SIZES))
def test_shape_trains_and_beats_popularity(tmp_path, shape):
    data = generate(shape, tmp_path / "data", interactions=SIZES[shape])
    metrics_out = tmp_path / "metrics.json"
    status = cli.main([*data.train_args, "--registry", str(tmp_path / "registry"), "--model", shape,
                       *TUNE_FLAGS, *EPOCHS, "--quiet", "--metrics-out", str(metrics_out)])
    assert status == 0
    metrics = json.loads(metrics_out.read_text())
    popularity = metrics["baselines"]["popularity"]
    figures = {key: (round(metrics[key], 3), round(popularity[key], 3)) for key in METRICS}
    assert all(model > baseline for model, baseline in figures.values()), f"model vs popularity: {figures}"
