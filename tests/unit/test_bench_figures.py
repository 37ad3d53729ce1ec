"""The benchmark scripts' figures without servers: what they read from a
``recsys-loadtest`` run and how they turn it into the numbers the docs quote."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import numpy as np

from bench import faults, scaleout, serving_throughput, swap, workers


def _no_report(*args, **kwargs) -> subprocess.CompletedProcess:
    """A recsys-loadtest run that exits without writing its report (it could not connect, or crashed)."""
    return subprocess.CompletedProcess(args, 1, "", "recsys-loadtest: could not connect to 127.0.0.1:1 within 10 s")


def test_a_load_run_without_a_report_is_not_read_from_an_earlier_runs_file(tmp_path, monkeypatch):
    # bench.request_cost writes every round's run of a target to the same file: round 1's figures
    # must not be round 0's report divided into round 1's CPU.
    out = tmp_path / "miss.json"
    out.write_text(json.dumps({"requests": {"ok": 40_000, "errors": 0}, "achieved_qps": 5000.0}))
    monkeypatch.setattr(serving_throughput.subprocess, "run", _no_report)
    with pytest.raises(RuntimeError, match="wrote no report"):
        serving_throughput.load("127.0.0.1:1", 100, 1.0, 10, out, seed=1)


def test_a_scaleout_run_in_a_kept_work_dir_does_not_report_the_previous_runs_figures(tmp_path, monkeypatch):
    # --work keeps the folder, and with it the earlier run's steady.json, stop.json, kill.json.
    out = tmp_path / "steady.json"
    out.write_text(json.dumps({"requests": {"scheduled": 500, "ok": 500}}))
    monkeypatch.setattr(swap.subprocess, "run", _no_report)
    with pytest.raises(RuntimeError, match="wrote no report"):
        scaleout.loadtest("127.0.0.1:1", 50, 1.0, out)


def test_the_workers_of_one_measured_query_service_read_each_others_cached_results(tmp_path, monkeypatch):
    # Without a shared --cache-key-file each worker signs Redis values with a key of its own, so a result one
    # worker cached is a miss for the others: 2 workers would do more work per "hit" and "miss" than 1.
    started: list[list[str]] = []

    class Started(Exception):
        pass

    class FakeProcess:
        def __init__(self, script: str, args: list[str], log_path: Path, *rest, **kwargs):
            started.append(args)

        def start(self):
            raise Started

    monkeypatch.setattr(workers, "ServiceProcess", FakeProcess)
    index, redis = SimpleNamespace(address="127.0.0.1:1"), SimpleNamespace(url="redis://127.0.0.1:2/0")
    keys = []
    for count in (1, 2):
        with pytest.raises(Started):
            workers.measure(count, argparse.Namespace(), tmp_path / "registry", index, redis, tmp_path)
        args = started[-1]
        assert "--cache-key-file" in args, args
        keys.append(Path(args[args.index("--cache-key-file") + 1]).read_text())
    # Redis is not flushed between worker counts, which draw the same customers: the second count must not
    # read what the first cached.
    assert keys[0] and keys[1] and keys[0] != keys[1]


def test_the_fault_matrix_p99_counts_the_calls_a_stall_held_back():
    """Four closed-loop threads at 1 ms a call against a server stalled 200 ms every 2 s: each thread timed one slow
    call per stall, so the plain p99 read 1 ms; a caller at the loop's pace saw most of the stall."""
    per_thread_stall = [1.0] * 1990 + [200.0]
    latencies = np.array(per_thread_stall * 4)
    assert np.percentile(latencies, 99) == 1.0
    assert 150 <= faults.corrected_p99_ms(latencies) <= 200
    assert faults.corrected_p99_ms(np.full(1000, 3.0)) == pytest.approx(3.0, abs=0.01)  # nothing held back
