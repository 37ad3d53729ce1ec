"""The recsys-loadtest timeline PNG: its panels, the swap and rollback markers,
and the file written."""

from __future__ import annotations

from collections import Counter

import matplotlib
matplotlib.use("Agg")  # before pyplot: the figures are only ever saved
import matplotlib.pyplot as plt  # noqa: E402
import pytest
from PIL import Image

from recsys_client.loadtest import LoadConfig
from recsys_client.loadtest.plot import DPI, FIGSIZE_IN, plot_timeline, timeline_figure
from recsys_client.loadtest.report import ERROR, OK, Event, build_report
from tests.unit.test_loadtest import _log


def _report(swap_ok: bool = True):
    # 20 qps for 10 s; slow while the swap runs, an error after the rollback.
    rows = [(i / 20, OK, 30_000 if 3 <= i / 20 < 4 else 1_500 + i, 2 if 4 <= i / 20 < 6 else 1) for i in range(200)]
    rows.append((8.5, ERROR))
    events = [Event("swap", 3.0, start_s=3.0, end_s=4.0, ok=swap_ok, result={"version": 2} if swap_ok else None,
                    error=None if swap_ok else "RuntimeError: no"),
              Event("rollback", 6.0, start_s=6.0, end_s=6.05, ok=True, result={"version": 1})]
    if not swap_ok:
        events[1] = Event("rollback", 6.0, error="skipped: swap did not succeed")
    return build_report(LoadConfig(address="x:1", qps=20, duration_s=10), _log(rows), elapsed_s=10.0,
                        errors_by_code=Counter({"UNAVAILABLE": 1}), cache_hits=0, sources=Counter(), events=events)


def _gids(fig) -> Counter:
    return Counter(artist.get_gid() for ax in fig.axes for artist in ax.get_children() if artist.get_gid())


def test_the_figure_has_the_three_panels_and_marks_both_events():
    fig = timeline_figure(_report())
    try:
        qps, latency, errors = fig.axes[:3]
        assert latency.get_yscale() == "log" and "QPS" in qps.get_ylabel()
        assert [len(line.get_xdata()) for line in latency.get_lines()[:2]] == [10, 10]
        assert latency.get_lines()[1].get_ydata()[3] == pytest.approx(30.0, rel=1e-3)  # p99 during the swap
        assert sum(patch.get_height() for patch in errors.patches if not patch.get_gid()) == 1
        # Per event and panel: a span and its start and end lines; one label on the top panel.
        assert _gids(fig) == {"event:swap": 10, "event:rollback": 10}
        labels = {text.get_text() for text in qps.texts}
        assert labels == {"swap to v2 (1.00 s)", "rollback to v1 (0.05 s)"}
    finally:
        plt.close(fig)


def test_a_failed_swap_is_labelled_and_a_skipped_rollback_not_drawn():
    fig = timeline_figure(_report(swap_ok=False))
    try:
        assert set(_gids(fig)) == {"event:swap"}
        assert [text.get_text() for text in fig.axes[0].texts] == ["swap (1.00 s) FAILED"]
    finally:
        plt.close(fig)


def test_plot_timeline_writes_a_valid_png_of_the_figure_size(tmp_path):
    path = plot_timeline(_report(), tmp_path / "timeline.png")
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI))
        image.verify()
    with Image.open(path) as image:
        assert len(image.convert("L").getcolors(maxcolors=1 << 16)) > 50  # drawn on, not a blank canvas


def test_a_report_without_a_timeline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no timeline"):
        plot_timeline({"timeline": []}, tmp_path / "x.png")


@pytest.mark.parametrize("stopped_at_s", [4.0, 0.0])
def test_the_offered_rate_ends_where_a_stop_ended_the_schedule(stopped_at_s):
    """A run stopped 4 s into a 10 s schedule drew its offered 20/s to 10 s, over seconds nothing was offered."""
    rows = [(i / 20, OK, 1_500, 1) for i in range(80)]
    report = build_report(LoadConfig(address="x:1", qps=20, duration_s=10), _log(rows), elapsed_s=4.5,
                          errors_by_code=Counter(), cache_hits=0, sources=Counter(), events=[],
                          stopped_at_s=stopped_at_s)
    fig = timeline_figure(report)
    try:
        (offered,) = [c for c in fig.axes[0].collections if c.get_label() == "offered"]
        assert [segment[:, 0].tolist() for segment in offered.get_segments()] == [[0.0, stopped_at_s]]
    finally:
        plt.close(fig)
