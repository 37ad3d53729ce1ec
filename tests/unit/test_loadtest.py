"""recsys-loadtest without servers: customer draws, histogram aggregation,
phase splitting, the report's shape and the command line."""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest

from recsys_client.loadtest import LoadConfig, build_parser
from recsys_client.loadtest.cli import config_from_args
from recsys_client.loadtest.report import (DROPPED, ERROR, OK, Event, RequestLog, build_report, latency_summary,
                                           new_histogram, phase_windows, record_latency, sample_indices, timeline,
                                           window_stats)
from recsys_client.loadtest.traffic import CustomerSampler


# --------------------------------------------------------------------------- customers


def test_uniform_covers_the_whole_range_evenly():
    ids = CustomerSampler(50, distribution="uniform", seed=1).draw(20_000)
    counts = Counter(ids)
    assert set(counts) == {f"c{i:06d}" for i in range(50)}
    assert max(counts.values()) < 1.25 * 20_000 / 50 and min(counts.values()) > 0.75 * 20_000 / 50


def test_zipf_is_skewed_to_low_ranks_and_stays_in_range():
    ranks = CustomerSampler(300, distribution="zipf", zipf_s=1.1, seed=3).ranks(50_000)
    assert ranks.min() >= 0 and ranks.max() <= 299
    counts = np.bincount(ranks, minlength=300)
    # Rank 0 vs rank 9 should be about 10**1.1 ~ 12.6 times as frequent.
    assert 9 < counts[0] / counts[9] < 17
    assert counts[:10].sum() > counts[100:].sum()
    assert (counts[:5] > counts[5:10]).all()


def test_draws_are_deterministic_per_seed_and_use_the_format():
    def draw(seed: int, distribution: str) -> list[str]:
        return CustomerSampler(300, "user-{}", distribution, 1.1, seed).draw(200)

    for distribution in ("uniform", "zipf"):
        assert draw(5, distribution) == draw(5, distribution)
        assert draw(5, distribution) != draw(6, distribution)
    assert all(c.startswith("user-") and 0 <= int(c[5:]) < 300 for c in draw(5, "zipf"))
    assert CustomerSampler(10).draw(1)[0].startswith("c0000")


def test_sample_indices_are_spread_over_the_run():
    picked = sorted(sample_indices(1000, 10))
    assert len(picked) == 10 and picked[0] < 100 and picked[-1] >= 900
    assert sample_indices(5, 10) == set(range(5)) and sample_indices(100, 0) == set()


# --------------------------------------------------------------------------- aggregation


def test_latency_summary_of_a_known_histogram():
    hist = new_histogram()
    for us in range(1, 10_001):  # 1 us .. 10 ms, uniform
        record_latency(hist, us * 1)
    summary = latency_summary(hist)
    # 3 significant digits: values within 0.1%.
    assert summary["p50_ms"] == pytest.approx(5.0, rel=2e-3)
    assert summary["p90_ms"] == pytest.approx(9.0, rel=2e-3)
    assert summary["p99_ms"] == pytest.approx(9.9, rel=2e-3)
    assert summary["p99_9_ms"] == pytest.approx(9.99, rel=2e-3)
    assert summary["max_ms"] == pytest.approx(10.0, rel=2e-3)
    assert summary["mean_ms"] == pytest.approx(5.0, rel=2e-3)


def test_latency_summary_empty_is_none_and_out_of_range_values_are_clamped():
    hist = new_histogram()
    assert set(latency_summary(hist).values()) == {None}
    record_latency(hist, 0)
    record_latency(hist, 10**12)
    assert hist.get_total_count() == 2
    assert latency_summary(hist)["max_ms"] == pytest.approx(60_000, rel=1e-3)


def _log(rows) -> RequestLog:
    log = RequestLog()
    for row in rows:
        log.add(*row)
    return log


def test_window_stats_counts_only_requests_scheduled_in_the_window():
    log = _log([(0.1, OK, 1000, 1), (0.5, OK, 3000, 1), (0.9, ERROR), (1.2, DROPPED), (1.5, OK, 50_000, 2),
                (2.0, OK, 7000, 2)])
    first = window_stats(log, 0.0, 1.0)
    assert (first["requests"], first["ok"], first["errors"], first["dropped"]) == (3, 2, 1, 0)
    assert first["model_versions"] == {"1": 2}
    assert first["latency_ms"]["max_ms"] == pytest.approx(3.0, rel=1e-3)
    assert first["qps"] == 2.0
    second = window_stats(log, 1.0, 2.0)  # end is exclusive: 2.0 belongs to the next window
    assert (second["requests"], second["ok"], second["dropped"]) == (2, 1, 1)
    assert second["latency_ms"]["p50_ms"] == pytest.approx(50.0, rel=1e-3)
    assert second["model_versions"] == {"2": 1}


def test_timeline_has_one_row_per_second_including_a_partial_last_one():
    log = _log([(t / 10, OK, 2000, 1 if t < 15 else 2) for t in range(25)])
    rows = timeline(log, 2.5)
    assert [r["second"] for r in rows] == [0, 1, 2]
    assert [r["ok"] for r in rows] == [10, 10, 5]
    assert [r["qps"] for r in rows] == [10.0, 10.0, 10.0]  # the last second is half long
    assert [r["versions"] for r in rows] == [[1], [1, 2], [2]]


def _behind_log() -> RequestLog:
    """10 requests a second offered for 2 s to a target answering 5 a second: answer i arrives at 0.2 i + 0.1 s."""
    return _log([(i / 10, OK, round((0.2 * i + 0.1 - i / 10) * 1e6), 1) for i in range(20)])


def test_timeline_counts_answers_when_they_arrive_through_the_drain():
    """By scheduled second, a target that fell behind read as keeping up (10/s in both seconds, the offered rate),
    and the 2 s of answers after the schedule were in no row."""
    rows = timeline(_behind_log(), 2.0)
    assert [r["second"] for r in rows] == [0, 1, 2, 3] and rows[-1]["end_s"] == 3.9
    assert [r["qps"] for r in rows] == [5.0, 5.0, 5.0, 5.56]  # the last row is 0.9 s long
    assert [r["requests"] for r in rows] == [10, 10, 0, 0] and rows[2]["p99_ms"] is None


def test_a_run_that_fell_behind_or_sent_late_says_so():
    config = LoadConfig(address="x:1", qps=10, duration_s=2)
    fine = build_report(config, _log([(i / 10, OK, 2_000, 1) for i in range(20)]), elapsed_s=1.902,
                        errors_by_code=Counter(), cache_hits=0, sources=Counter())
    assert fine["warnings"] == []
    failing_fast = build_report(config, _log([(i / 10, ERROR) if i % 10 == 0 else (i / 10, OK, 2_000, 1)
                                              for i in range(20)]), elapsed_s=1.902, errors_by_code=Counter(),
                                cache_hits=0, sources=Counter())
    assert failing_fast["warnings"] == []  # 10% errors, answered at once: not behind (the errors fail the run)
    slow_but_steady = build_report(config, _log([(i / 10, OK, 300_000, 1) for i in range(20)]), elapsed_s=2.2,
                                   errors_by_code=Counter(), cache_hits=0, sources=Counter())
    assert slow_but_steady["warnings"] == []  # 300 ms each, every answer 0.1 s after the one before
    late = new_histogram()
    record_latency(late, 50_000)
    behind = build_report(config, _behind_log(), elapsed_s=3.9, errors_by_code=Counter(), cache_hits=0,
                          sources=Counter(), send_lag=late)
    fell_behind, sent_late = behind["warnings"]
    assert "arrived at 5.13/s of the 10/s offered (the last OK one at 3.9 s of a 2 s schedule)" in fell_behind
    assert "send lag p99 50.015 ms" in sent_late  # the histogram's bucket of 50 ms


# --------------------------------------------------------------------------- phases


def test_phase_windows_chain_swap_and_rollback():
    swap = Event("swap", 3.0, start_s=3.0, end_s=3.5, ok=True)
    rollback = Event("rollback", 6.0, start_s=6.0, end_s=6.25, ok=True)
    windows = phase_windows([rollback, swap], duration_s=10.0)
    assert windows["swap"] == {"before": (0.0, 3.0), "during": (3.0, 3.5), "after": (3.5, 6.0)}
    assert windows["rollback"] == {"before": (3.5, 6.0), "during": (6.0, 6.25), "after": (6.25, 10.0)}
    assert swap.duration_s == 0.5


def test_phase_windows_skip_events_that_never_ran_and_clip_to_the_schedule():
    skipped = Event("rollback", 6.0, error="skipped: swap did not succeed")
    late = Event("swap", 8.0, start_s=8.0, end_s=12.0, ok=False)
    windows = phase_windows([late, skipped], duration_s=10.0)
    assert set(windows) == {"swap"}
    assert windows["swap"] == {"before": (0.0, 8.0), "during": (8.0, 10.0), "after": (10.0, 10.0)}


def test_report_splits_latency_into_phases():
    # 10 qps for 9 s; requests during the swap window [3, 4) are slow.
    rows = []
    for i in range(90):
        t = i / 10
        version = 2 if 4 <= t < 6 else 1
        rows.append((t, OK, 40_000 if 3 <= t < 4 else 2_000, version))
    rows.append((8.95, ERROR))
    config = LoadConfig(address="x:1", qps=10, duration_s=9)
    events = [Event("swap", 3.0, start_s=3.0, end_s=4.0, ok=True, result=2),
              Event("rollback", 6.0, start_s=6.0, end_s=6.05, ok=True, result=1)]
    report = build_report(config, _log(rows), elapsed_s=9.0, errors_by_code=Counter({"UNAVAILABLE": 1}),
                          cache_hits=30, sources=Counter({"RESULT_SOURCE_MODEL": 90}), events=events,
                          samples=[{"customer_id": "c000001"}])
    json.dumps(report)  # must be serializable as is
    swap = report["swap"]
    assert swap["duration_s"] == 1.0 and swap["ok"]
    assert swap["phases"]["before"]["latency_ms"]["p99_ms"] == pytest.approx(2.0, rel=1e-3)
    assert swap["phases"]["during"]["latency_ms"]["p50_ms"] == pytest.approx(40.0, rel=1e-3)
    assert swap["phases"]["during"]["ok"] == 10
    assert swap["phases"]["after"]["model_versions"] == {"2": 20}
    assert report["rollback"]["phases"]["during"]["model_versions"] == {"1": 1}  # the request sent at 6.0
    assert report["rollback"]["phases"]["after"]["model_versions"] == {"1": 29}
    assert report["rollback"]["phases"]["after"]["errors"] == 1
    assert report["requests"] == {"scheduled": 91, "sent": 91, "ok": 90, "errors": 1, "dropped": 0}
    assert report["errors_by_code"] == {"UNAVAILABLE": 1}
    assert report["model_versions"] == {"1": 70, "2": 20}
    assert report["achieved_qps"] == 10.0 and report["cache_hit_ratio"] == pytest.approx(1 / 3, abs=1e-4)
    assert len(report["timeline"]) == 9 and report["timeline"][3]["p99_ms"] == pytest.approx(40.0, rel=1e-3)
    assert report["samples"] == [{"customer_id": "c000001"}]


# --------------------------------------------------------------------------- config and CLI


def test_parser_accepts_the_documented_flags(tmp_path):
    token = tmp_path / "admin.token"
    token.write_text("secret\n")  # a secret comes from a file (or the environment), never argv
    args = build_parser().parse_args([
        "--address", "127.0.0.1:50052", "--qps", "200", "--duration-s", "10", "--concurrency", "64",
        "--k", "20", "--timeout-s", "1.5", "--channels", "3", "--num-customers", "1000",
        "--customer-format", "u{:04d}", "--distribution", "zipf", "--zipf-s", "1.3", "--seed", "9",
        "--sample-responses", "40", "--out", "report.json",
        "--swap", "--registry", "/reg", "--model", "m", "--index-admin", "a:1,b:2", "--query-admin", "c:3",
        "--admin-token-file", str(token), "--swap-version", "2", "--swap-at-s", "3", "--rollback-at-s", "6"])
    config = config_from_args(args)
    assert (config.qps, config.duration_s, config.concurrency, config.k, config.timeout_s, config.channels) == (
        200, 10, 64, 20, 1.5, 3)
    assert (config.num_customers, config.customer_format, config.distribution, config.zipf_s, config.seed) == (
        1000, "u{:04d}", "zipf", 1.3, 9)
    assert config.sample_responses == 40 and str(args.out) == "report.json"
    swap = config.swap
    assert (swap.index_admin, swap.query_admin, swap.version, swap.at_s, swap.rollback_at_s) == (
        ["a:1", "b:2"], ["c:3"], 2, 3.0, 6.0)
    assert swap.admin_token == "secret" and swap.model == "m" and str(swap.registry) == "/reg"


def test_defaults_and_no_swap():
    config = config_from_args(build_parser().parse_args(["--address", "h:1", "--qps", "50", "--duration-s", "2"]))
    assert config.swap is None and config.customer_format == "c{:06d}" and config.distribution == "uniform"
    assert config.zipf_s == 1.1 and config.total_requests == 100


def test_help_shows_each_flags_default_from_load_config_and_no_secret(monkeypatch):
    """The defaults were written in the parser, in LoadConfig and in the module docstring; --help showed them in the
    docstring's usage line alone. Now LoadConfig holds them and each flag's help says its own; not the flags whose
    default is the environment's (the first cut printed $RECSYS_ADMIN_TOKEN as the token file's default)."""
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "s3cr3t-token")
    monkeypatch.setenv("RECSYS_TLS_KEY", "/keys/client.key")
    help_text = " ".join(build_parser().format_help().split())
    assert "s3cr3t-token" not in help_text and "/keys/client.key" not in help_text
    defaults = LoadConfig("h:1", 1.0, 1.0)
    assert f"most requests in flight; more are dropped (and counted) (default {defaults.concurrency})" in help_text
    assert f"seed of the customer draws (default {defaults.seed})" in help_text  # 0 is a default to show
    assert f"str.format pattern of a customer id (default {defaults.customer_format})" in help_text
    assert "--quiet no progress line per second on stderr TLS" in help_text  # a store_true flag says no default


@pytest.mark.parametrize("argv, message", [
    (["--swap"], "--swap needs --registry, --model, --index-admin, --query-admin, --swap-version, --swap-at-s"),
    (["--swap", "--registry", "r", "--model", "m", "--index-admin", "a:1", "--query-admin", "b:1",
      "--swap-version", "2", "--swap-at-s", "5", "--rollback-at-s", "4"], "is before swap-at-s"),
    # A swap or rollback past the run's end changed the live version with no load around it, and exited 0.
    (["--swap", "--registry", "r", "--model", "m", "--index-admin", "a:1", "--query-admin", "b:1",
      "--swap-version", "2", "--swap-at-s", "1"], "swap-at-s (1) must fall within the run (--duration-s 1)"),
    (["--swap", "--registry", "r", "--model", "m", "--index-admin", "a:1", "--query-admin", "b:1",
      "--swap-version", "2", "--swap-at-s", "0.5", "--rollback-at-s", "2"], "rollback-at-s (2) must fall within"),
    # Without --swap they were ignored: a plain load run, reported as a success.
    (["--swap-version", "2", "--swap-at-s", "0.3"], "--swap-version, --swap-at-s need --swap"),
    (["--rollback-at-s", "0.3"], "--rollback-at-s needs --swap"),
    (["--qps", "0"], "qps must be > 0"),
    # Each of these was a traceback (or, --timeout-s inf against a server that is down, a run that never ends).
    (["--qps", "inf"], "qps must be > 0 and finite, got inf"),
    (["--duration-s", "inf"], "duration_s must be > 0 and finite, got inf"),
    (["--seed", "-1"], "seed must be >= 0, got -1"),
    # A MemoryError's traceback: "Unable to allocate 7.28 TiB", "745. GiB".
    (["--qps", "1e12"], "qps x duration_s is 1e+12 requests, over the 50,000,000 one run draws up front"),
    (["--distribution", "zipf", "--num-customers", "100000000000"],
     "num_customers must be at most 100,000,000 with the zipf distribution, got 100,000,000,000"),
    (["--customer-format", "c{x}"], "customer_format 'c{x}' cannot format a number: KeyError"),
    (["--customer-format", "c{}{}"], "customer_format 'c{}{}' cannot format a number: IndexError"),
    (["--candidate-format", "{0[1]}"], "candidate_format '{0[1]}' cannot format a number: TypeError"),
    (["--tls-ca", "/nonexistent/ca.pem"], "--tls-ca cannot read /nonexistent/ca.pem"),  # was "ca: cannot read"
])
def test_bad_flag_combinations_are_rejected(argv, message):
    base = ["--address", "h:1", "--qps", "10", "--duration-s", "1"]
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_args(build_parser().parse_args(base + argv))


@pytest.mark.parametrize("argv, message", [
    # A deadline of inf against a server that is down: a run that never ends; of 0, nan or 1e300 (past gRPC's
    # deadline), every request failed at once with DEADLINE_EXCEEDED.
    (["--timeout-s", "inf"], "--timeout-s: inf is out of range: give seconds over 0 and at most 86400 (a day)"),
    (["--timeout-s", "1e300"], "--timeout-s: 1e300 is out of range"),
    (["--timeout-s", "nan"], "--timeout-s: nan is out of range"),
    (["--timeout-s", "0"], "--timeout-s: 0 is out of range"),
    (["--k", "3000000000"], "--k: 3000000000 is out of range"),  # past int32: every request failed in the client
    # A port past 65535 reached another (gRPC takes it modulo 65536).
    (["--address", "127.0.0.1:70000"], "--address: '127.0.0.1:70000' is not HOST:PORT with a port from 1 to 65535"),
    (["--address", "localhost"], "--address: 'localhost' is not HOST:PORT"),  # gRPC went to port 443
    (["--index-admin", "a:1,b:70000"], "--index-admin: 'b:70000' is not HOST:PORT"),  # the swap's replicas too
])
def test_flags_out_of_range_are_refused_by_the_parser(argv, message, capsys):
    base = ["--address", "h:1", "--qps", "10", "--duration-s", "1"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(base + argv)
    assert message in capsys.readouterr().err


def test_unknown_distribution_is_rejected_by_the_parser():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--address", "h:1", "--qps", "1", "--duration-s", "1", "--distribution", "x"])


def test_total_requests_rounds_up_a_partial_interval():
    assert LoadConfig(address="h:1", qps=3, duration_s=1.5).total_requests == 5  # t = 0, .33, .67, 1, 1.33
    assert LoadConfig(address="h:1", qps=100, duration_s=0.001).total_requests == 1
    assert math.isclose(LoadConfig(address="h:1", qps=150, duration_s=9).total_requests, 1350)
