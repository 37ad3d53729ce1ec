"""The ratios of bench.request_cost and bench.catalogue when a measured phase has nothing to divide by (every
call failed, no sample): None in the report and a line saying why, not a traceback that loses the run."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

from bench import catalogue, request_cost


def _measured(totals: dict[str, float | None]) -> dict:
    return {name: {"cpu_us": {"total": total}} for name, total in totals.items()}


def test_a_request_cost_phase_that_answered_no_call_has_no_cpu_per_call(tmp_path, monkeypatch, capsys):
    failed = {"achieved_qps": 0.0, "requests": {"ok": 0, "errors": 40}, "errors_by_code": {"UNAVAILABLE": 40},
              "cache_hits": 0}
    monkeypatch.setattr(request_cost, "load", lambda *args, **kwargs: failed)
    ticks = itertools.count()
    monkeypatch.setattr(request_cost, "cpu_seconds", lambda pids: next(ticks) * 0.5)
    hit = request_cost.measure("h:1", {"query": 1, "index": 2}, 20, 1.0, 32, 1, tmp_path / "hit.json")
    assert hit["cpu_us"] == {"query": None, "index": None, "total": None} and hit["errors"] == 40
    assert "hit: no call answered" in capsys.readouterr().err
    good = _measured({"echo": 100.0, "hit": 110.0, "miss": 200.0, "miss_uncached": 150.0})
    broken = _measured({"echo": 100.0, "hit": None, "miss": 240.0, "miss_uncached": 150.0})
    rounds = [good | {"vs_echo": request_cost.vs_echo(good)}, broken | {"vs_echo": request_cost.vs_echo(broken)}]
    assert rounds[1]["vs_echo"] == {"hit": None, "miss": 2.4, "miss_uncached": 1.5}
    summary = request_cost.summarise(rounds)
    json.dumps(summary)
    assert summary["vs_echo"]["hit"] == {"median": 1.1, "min": 1.1, "max": 1.1}
    assert summary["vs_echo"]["miss"]["median"] == 2.2 and summary["targets"]["miss<=2.5x_echo"] is True
    no_echo = _measured({"echo": None, "hit": 110.0, "miss": 200.0, "miss_uncached": 150.0})
    assert request_cost.vs_echo(no_echo) == {"hit": None, "miss": None, "miss_uncached": None}
    summary = request_cost.summarise([no_echo | {"vs_echo": request_cost.vs_echo(no_echo)}])
    assert summary == {"vs_echo": {name: None for name in request_cost.TARGETS},
                       "targets": {"hit<=1.15x_echo": None, "miss<=2.5x_echo": None}}


def test_catalogue_search_figures_of_a_phase_without_an_answered_search_are_none():
    # SearchLoad's samples: (sent at, latency s or -1 if it failed); every search while the deltas streamed failed.
    load = SimpleNamespace(marks=[("warmup", 0.0), ("steady", 1.0), ("upserts", 2.0), ("after", 3.0)],
                           samples=[(1.5, 0.002), (1.6, 0.004), (2.5, -1.0), (2.6, -1.0), (3.5, 0.003)])
    searches = catalogue.search_figures(catalogue.SearchLoad.phases(load), 50.0)
    json.dumps(searches)
    assert searches["p99_ms"]["upserts"] is None and searches["errors"] == 2
    assert searches["p99_upserts_vs_steady"] is None and searches["p99_upserts_vs_after"] is None
    assert searches["requests"] == {"warmup": 0, "steady": 2, "upserts": 2, "after": 1}
    load.samples = [(2.5, 0.006), (3.5, 0.003)]  # none sent while steady: nothing to compare with
    searches = catalogue.search_figures(catalogue.SearchLoad.phases(load), 50.0)
    assert searches["p99_upserts_vs_steady"] is None and searches["p99_upserts_vs_after"] == 2.0
