"""recsys-train on MovieLens 100K must beat the popularity baseline computed on
the same split in the same run (the seeds' model does not). It trains the
presets without the search (``--tune-budget-s 0``) to keep the suite short; the
default run, search included, is measured in docs/RESULTS.md."""

from __future__ import annotations

import json
import subprocess

import pytest

from model_registry import Registry, verify_version
from model_registry import manifest as files
from tests.conftest import ML100K_DIR
from tests.processes import console_script

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (ML100K_DIR / "u.data").is_file(), reason=f"ml-100k not at {ML100K_DIR}")]


def test_default_model_beats_popularity_on_ml100k(tmp_path):
    metrics_out = tmp_path / "metrics.json"
    result = subprocess.run(
        [console_script("recsys-train"), "--dataset", "movielens-100k", "--data-dir", str(ML100K_DIR),
         "--registry", str(tmp_path / "registry"), "--model", "ml100k", "--metrics-out", str(metrics_out),
         "--tune-budget-s", "0", "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "popularity" in result.stdout and "item_item_cosine" in result.stdout  # the readable table
    assert "model vs baseline" in result.stdout

    metrics = json.loads(metrics_out.read_text())
    popularity = metrics["baselines"]["popularity"]
    for k in (10, 50, 100):
        key = f"hit_rate_excluding_seen@{k}"
        assert metrics[key] > popularity[key] * 1.3, (key, metrics[key], popularity[key])
    assert metrics["hit_rate@100"] > popularity["hit_rate@100"]
    # EASE, with its L2 chosen on validation, is the bar excluding seen: the model is within 10% of it.
    ease = metrics["baselines"]["ease"]
    assert metrics["hit_rate_excluding_seen@10"] > 0.9 * ease["hit_rate_excluding_seen@10"] > 0.15
    assert set(metrics["margins"]) == {"popularity", "item_item_cosine", "ease", "ials"}
    assert metrics["tuning"]["trials"][0]["params"]["towers.kind"] == "id" and len(metrics["tuning"]["trials"]) == 1
    assert metrics["num_test_interactions"] == 20_000

    registry = Registry(tmp_path / "registry", "ml100k")
    assert registry.versions() == [1] and registry.current_version() is None  # published, not made live
    manifest = verify_version(registry.version_dir(1))
    assert manifest.num_candidates == 1682 and manifest.index.recall_at_10 == 1.0
    assert json.loads((registry.version_dir(manifest.version) / files.METRICS_FILE).read_text()) == metrics
