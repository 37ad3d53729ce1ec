"""The per-second timeline of a recsys-loadtest report as a PNG: achieved QPS,
p50/p99 latency (log axis) and errors, with the swap and rollback marked
(matplotlib, imported lazily, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

EVENTS = (("swap", "tab:green"), ("rollback", "tab:purple"))
FIGSIZE_IN = (11.0, 7.5)
DPI = 100


def event_label(name: str, event: dict[str, Any]) -> str:
    """``swap to v2 (1.23 s)``, ``rollback (0.50 s) FAILED``: what a marker says."""
    result = event.get("result")
    version = result.get("version") if isinstance(result, dict) else None
    text = name + (f" to v{version}" if version is not None and event.get("ok") else "")
    if event.get("duration_s") is not None:
        text += f" ({event['duration_s']:.2f} s)"
    if event.get("ok") is False:
        text += " FAILED"
    return text


def timeline_figure(report: dict[str, Any], title: str | None = None):
    """A matplotlib Figure of ``report``'s timeline: three panels sharing the
    time axis (OK responses per second against the offered rate; p50 and p99
    latency on a log axis; errors and drops per second), each with a shaded
    span from the start to the end of every swap or rollback that ran and the
    event's label on the top panel. Markers carry ``gid`` ``event:NAME``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rows = report.get("timeline") or []
    if not rows:
        raise ValueError("the report has no timeline rows to plot")
    # Each row is drawn at the middle of its second (of its part, for a last partial one).
    x = [(row["second"] + row["end_s"]) / 2 for row in rows]
    duration = rows[-1]["end_s"]

    def series(key: str) -> list[float]:
        return [math.nan if row.get(key) is None else float(row[key]) for row in rows]

    fig, (ax_qps, ax_lat, ax_err) = plt.subplots(3, 1, sharex=True, figsize=FIGSIZE_IN, dpi=DPI,
                                                 gridspec_kw={"height_ratios": [3, 3, 1.6]},
                                                 constrained_layout=True)
    ax_qps.plot(x, series("qps"), "o-", color="tab:blue", markersize=3, label="achieved (OK/s)")
    if report.get("offered_qps"):
        # Offered over the schedule only (to its stop, if a signal ended it): the drain after it offers nothing.
        stopped_at_s = report.get("stopped_at_s")
        schedule_end = (stopped_at_s if stopped_at_s is not None
                        else report.get("config", {}).get("duration_s") or duration)
        ax_qps.hlines(report["offered_qps"], 0, schedule_end, color="gray", linestyle="--", linewidth=1,
                      label="offered")
    ax_qps.set_ylabel("QPS")
    # Headroom above the busiest second for the event labels.
    top = max([report.get("offered_qps") or 0.0, *(v for v in series("qps") if not math.isnan(v))])
    ax_qps.set_ylim(0, 1.3 * top if top > 0 else 1.0)

    ax_lat.plot(x, series("p50_ms"), "o-", color="tab:blue", markersize=3, label="p50")
    ax_lat.plot(x, series("p99_ms"), "s-", color="tab:red", markersize=3, label="p99")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, log)")
    # 20, not 2x10^1; of the minor ticks only 2s and 5s, or 7, 8, 9 crowd into 10.
    ax_lat.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax_lat.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))

    ax_err.bar(x, series("errors"), width=0.8, color="tab:red", label="errors")
    ax_err.bar(x, series("dropped"), width=0.8, bottom=series("errors"), color="tab:orange", label="dropped")
    ax_err.set_ylabel("per second")
    ax_err.set_ylim(bottom=0, top=max(1.0, ax_err.get_ylim()[1]))
    ax_err.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    ax_err.set_xlabel("seconds into the run (QPS by when answers arrived; latency, errors, drops by scheduled send)")
    ax_err.set_xlim(0, max(duration, x[-1] + 0.5))

    for name, color in EVENTS:
        event = report.get(name)
        if not isinstance(event, dict) or event.get("start_s") is None:
            continue
        start = event["start_s"]
        end = event["end_s"] if event.get("end_s") is not None else start
        for ax in (ax_qps, ax_lat, ax_err):
            # A span of a few ms would not show at this scale: the start line always does.
            ax.axvspan(start, end, color=color, alpha=0.15, gid=f"event:{name}")
            ax.axvline(start, color=color, linewidth=1.2, gid=f"event:{name}")
            ax.axvline(end, color=color, linewidth=1.2, linestyle=":", gid=f"event:{name}")
        ax_qps.annotate(event_label(name, event), xy=(start, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -14), textcoords="offset points", color=color, fontsize=9,
                        fontweight="bold", gid=f"event:{name}",
                        bbox={"facecolor": "white", "edgecolor": color, "alpha": 0.85, "pad": 2})

    for ax in (ax_qps, ax_lat, ax_err):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    req, lat = report.get("requests", {}), report.get("latency_ms", {})
    fig.suptitle(title or (f"{report.get('config', {}).get('address', '')}: {req.get('ok', 0)} ok, "
                           f"{req.get('errors', 0)} errors, {req.get('dropped', 0)} dropped; "
                           f"p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms"))
    return fig


def plot_timeline(report: dict[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Writes ``timeline_figure(report)`` as a PNG of FIGSIZE_IN at DPI; returns the path."""
    fig = timeline_figure(report, title)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path
