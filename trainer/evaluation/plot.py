"""Hit rate vs k chart of an evaluation report (matplotlib, imported lazily, Agg backend)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_KEY = re.compile(r"^hit_rate(_excluding_seen)?@(\d+)$")
PANELS = (("", "all candidates"), ("_excluding_seen", "excluding seen (training items masked)"))


def hit_rate_series(report: dict[str, Any], suffix: str = "") -> tuple[list[int], list[float]]:
    """(ks, hit rates) of one report for ``hit_rate{suffix}@K`` keys, sorted by k."""
    points = []
    for key, value in report.items():
        m = _KEY.match(key)
        if m and (m.group(1) or "") == suffix and isinstance(value, (int, float)):
            points.append((int(m.group(2)), float(value)))
    points.sort()
    return [k for k, _ in points], [v for _, v in points]


def plot_hit_rates(metrics: dict[str, Any], path: str | Path) -> Path:
    """Writes a PNG: hit rate vs k (log scale) for the model and every baseline,
    one panel over all candidates and one excluding seen items. Returns the path.

    ``metrics`` is the evaluation report: ``hit_rate@K``, ``hit_rate_excluding_seen@K``
    and ``baselines: {name: {same keys}}`` (baselines without a key are skipped).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    series = {"two-tower model": metrics}
    for name, report in sorted((metrics.get("baselines") or {}).items()):
        if isinstance(report, dict):
            series[name.replace("_", " ")] = report
    if not any(hit_rate_series(r, s)[0] for r in series.values() for s, _ in PANELS):
        raise ValueError("metrics hold no hit_rate@K keys to plot")
    styles = ["o-", "s--", "^-.", "D:", "v--", "x-"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True, constrained_layout=True)
    for ax, (suffix, label) in zip(axes, PANELS):
        for i, (name, report) in enumerate(series.items()):
            ks, values = hit_rate_series(report, suffix)
            if ks:
                ax.plot(ks, values, styles[i % len(styles)], label=name, linewidth=2.2 if i == 0 else 1.5,
                        markersize=5)
        ax.set_xscale("log")
        ks_all = sorted({k for r in series.values() for k in hit_rate_series(r, suffix)[0]})
        if ks_all:
            ax.set_xticks(ks_all)
            ax.set_xticklabels([str(k) for k in ks_all])
        ax.set_title(f"Hit rate @ k: {label}")
        ax.set_xlabel("k (top-k retrieved)")
        ax.grid(True, which="major", alpha=0.3)
    top = max((v for r in series.values() for s, _ in PANELS for v in hit_rate_series(r, s)[1]), default=1.0)
    axes[0].set_ylim(0, min(1.0, top * 1.08) if top > 0 else 1.0)
    axes[0].set_ylabel("hit rate (share of test interactions)")
    axes[0].legend(loc="upper left")
    heading = " ".join(str(x) for x in (metrics.get("dataset"), _split_label(metrics)) if x)
    if heading:
        fig.suptitle(heading)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _split_label(metrics: dict[str, Any]) -> str:
    split = metrics.get("split")
    if isinstance(split, dict) and "method" in split:
        return f"({split['method']} split, {split.get('num_test', '?')} test interactions)"
    return ""
