"""What the exported metrics say they are, and whether their buckets and the
dashboard's panels fit what they measure (no server)."""

from __future__ import annotations

import json
import re

import prometheus_client

from serving.lifecycle.admin import StatusReport, VersionInfo
from serving.lifecycle.versions import State
from serving.telemetry.observability import LATENCY_BUCKETS, VersionCollector
from tests.unit.test_dashboard import DASHBOARD


def _panel_drawing(metric: str) -> dict:
    """The panel drawing ``metric`` as exported (its selector scoped by the dashboard's variables)."""
    return next(panel for panel in json.loads(DASHBOARD.read_text())["panels"]
                if any(re.fullmatch(rf"{metric}(\{{[^}}]*\}})?", target["expr"])
                       for target in panel.get("targets", [])))


def test_the_live_version_gauge_says_an_index_slot_reports_the_version_it_holds():
    collector = VersionCollector()
    collector.track(lambda: StatusReport("m", "index", 3, [VersionInfo(3, State.SERVING)], slot="blue"))
    family = next(f for f in collector.collect() if f.name == "recsys_live_version")
    assert "index slot: the version it holds" in family.documentation.lower()
    panel = _panel_drawing("recsys_live_version")
    assert "held" in panel["title"].lower() and "index slot" in panel["description"]


def test_latency_buckets_reach_below_a_cache_hit_and_past_a_promotion_with_warm_up():
    assert LATENCY_BUCKETS == tuple(sorted(LATENCY_BUCKETS))
    assert LATENCY_BUCKETS[:2] == (0.000025, 0.00005)
    assert LATENCY_BUCKETS[-3:] == (10.0, 30.0, 60.0)
    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram("t_seconds", "t", buckets=LATENCY_BUCKETS, registry=registry)
    histogram.observe(0.00004)  # a local-tier hit
    histogram.observe(42.0)  # a LoadVersion with warm-up
    assert registry.get_sample_value("t_seconds_bucket", {"le": "2.5e-05"}) == 0
    assert registry.get_sample_value("t_seconds_bucket", {"le": "5e-05"}) == 1
    assert registry.get_sample_value("t_seconds_bucket", {"le": "30.0"}) == 1
    assert registry.get_sample_value("t_seconds_bucket", {"le": "60.0"}) == 2
