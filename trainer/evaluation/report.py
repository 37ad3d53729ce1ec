"""The printed model-vs-baselines table of a metrics report."""

from __future__ import annotations

from typing import Any

from trainer.evaluation.metrics import DEFAULT_KS


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
    extra = []
    for key in ("num_test_interactions", "num_test_interactions_evaluated", "epochs_run", "train_seconds", "examples_per_second"):
        if key in report:
            v = report[key]
            extra.append(f"{key}={v:.1f}" if isinstance(v, float) else f"{key}={v}")
    if extra:
        lines.append("  ".join(extra))
    return "\n".join(lines)


def print_table(report: dict[str, Any], ks: tuple[int, ...] = DEFAULT_KS) -> None:
    """Prints ``format_table(report)`` to stdout."""
    print(format_table(report, ks))
