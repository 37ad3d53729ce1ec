"""plot_hit_rates writes a PNG from an evaluation report."""

from __future__ import annotations

import pytest

from trainer.evaluation.plot import hit_rate_series, plot_hit_rates

KS = (1, 5, 10, 50, 100)


def _report(scale):
    r = {f"hit_rate@{k}": scale * k / 100 for k in KS}
    r.update({f"hit_rate_excluding_seen@{k}": min(1.0, 1.5 * scale * k / 100) for k in KS})
    return r


def test_plot_writes_png(tmp_path):
    metrics = {**_report(0.9), "dataset": "toy", "split": {"method": "temporal", "num_test": 10},
               "baselines": {"popularity": _report(0.5), "item_item_cosine": {"skipped": "too many candidates"}}}
    assert hit_rate_series(metrics, "_excluding_seen")[0] == list(KS)
    out = plot_hit_rates(metrics, tmp_path / "hr.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_plot_rejects_reports_without_hit_rates(tmp_path):
    with pytest.raises(ValueError, match="no hit_rate"):
        plot_hit_rates({"baselines": {}}, tmp_path / "x.png")
