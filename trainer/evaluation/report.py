"""The printed model-vs-baselines table of a metrics report."""

from __future__ import annotations

from typing import Any

from trainer.evaluation.metrics import DEFAULT_KS
from trainer.evaluation.validation import TARGET_METRICS


def margins(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """By how much the model beats (> 0) or loses to (< 0) each baseline, per
    target metric: ``model / baseline - 1`` (None where the baseline is 0)."""
    out = {}
    for name, m in report.get("baselines", {}).items():
        if "skipped" not in m:
            out[name] = {key: (round(report[key] / m[key] - 1.0, 4) if m[key] else None) for key in TARGET_METRICS}
    return out


def format_table(report: dict[str, Any], ks: tuple[int, ...] = DEFAULT_KS) -> str:
    """A readable model-vs-baselines table of a metrics report."""
    systems = [("model", report)] + [(name, m) for name, m in report.get("baselines", {}).items()]
    lines = []
    header = f"{'':24s}" + "".join(f"{'@' + str(k):>8s}" for k in ks)
    for kind, title in (("hit_rate", "hit rate, all candidates"),
                        ("hit_rate_excluding_seen", "hit rate, excluding seen")):
        lines.append(title)
        lines.append(header)
        for name, m in systems:
            if "skipped" in m:
                lines.append(f"  {name:22s}skipped: {m['skipped']}")
                continue
            lines.append(f"  {name:22s}" + "".join(f"{m.get(f'{kind}@{k}', float('nan')):8.3f}" for k in ks))
    if report.get("margins"):
        lines.append("model vs baseline (relative: +0.10 = model 10% higher)")
        labels = [("excl@" if "excluding_seen" in key else "all@") + key.split("@")[1] for key in TARGET_METRICS]
        lines.append(f"{'':24s}" + "".join(f"{label:>10s}" for label in labels))
        for name, rel in report["margins"].items():
            lines.append(f"  {name:22s}" + "".join(f"{'n/a' if v is None else format(v, '+.3f'):>10s}"
                                                   for v in rel.values()))
    extra = []
    for key in ("num_test_interactions", "num_test_interactions_evaluated", "num_test_interactions_new_to_customer",
                "epochs_run", "train_seconds", "examples_per_second"):
        if key in report:
            v = report[key]
            extra.append(f"{key}={v:.1f}" if isinstance(v, float) else f"{key}={v}")
    if extra:
        lines.append("  ".join(extra))
    return "\n".join(lines)


def print_table(report: dict[str, Any], ks: tuple[int, ...] = DEFAULT_KS) -> None:
    """Prints ``format_table(report)`` to stdout."""
    print(format_table(report, ks))
