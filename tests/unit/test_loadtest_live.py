"""recsys-loadtest against a fake QueryService in this process: latencies with
microsecond precision under uvloop (whose loop.time() is whole milliseconds),
the progress line per second, and the --quiet and --plot flags."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.loadtest import LoadConfig, main, run_load
from recsys_client.loadtest.report import DROPPED, ERROR, OK, Event, ProgressMeter, RequestLog
from serving.rpc.grpc_server import run_event_loop
from tests.processes import console_script

LINE = re.compile(r"^\[\s*(\d+)s\] sent\s+(\d+) ok\s+(\d+) err\s+(\d+) drop\s+(\d+) qps\s+(\S+) "
                  r"p50\s+(\S+) p99\s+(\S+) ms in-flight\s+(\d+) versions (\S+)(?:  << (.*))?$")


class FakeQuery(pb_grpc.QueryServiceServicer):
    """Answers every Recommend at once from version 7: what is left of a
    latency is the client, gRPC and the loopback, a fraction of a millisecond."""

    def Recommend(self, request, context):
        return pb.RecommendResponse(model_version=7, candidates=[pb.ScoredCandidate(candidate_id="i000001")])


@pytest.fixture(scope="module")
def fake_query():
    # A threaded server, so it runs beside any event loop the client starts.
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_QueryServiceServicer_to_server(FakeQuery(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture(scope="module")
def live_run(fake_query):
    """One 2.3 s run at 150 QPS on uvloop: its report, request log, progress text and loop type."""
    log, progress = RequestLog(), io.StringIO()

    async def scenario():
        loop_type = type(asyncio.get_running_loop())
        report = await run_load(LoadConfig(address=fake_query, qps=150, duration_s=2.3, channels=1),
                                progress=progress, log=log)
        return report, loop_type

    report, loop_type = run_event_loop(scenario())
    return report, log, progress.getvalue(), loop_type


def test_latencies_are_measured_in_microseconds_under_uvloop(live_run):
    report, log, _, loop_type = live_run
    assert loop_type.__module__.startswith("uvloop")  # the loop whose clock is whole milliseconds
    assert report["requests"]["ok"] == 345 and report["model_versions"] == {"7": 345}
    latency_us = log.columns()[1]
    # A millisecond clock leaves one or two sub-millisecond remainders (0, or 999
    # from float rounding); a microsecond one spreads 345 latencies over hundreds.
    assert len(set((latency_us % 1000).tolist())) >= 100
    lag = report["send_lag_ms"]
    assert lag["p50_ms"] is not None and lag["p50_ms"] <= report["latency_ms"]["p50_ms"]


def test_a_progress_line_per_second_adds_up_to_the_report(live_run):
    report, _, progress, _ = live_run
    rows = [LINE.match(line) for line in progress.splitlines()]
    assert all(rows), progress
    seconds = [int(m.group(1)) for m in rows]
    assert seconds[:2] == [0, 1] and seconds == sorted(seconds) and len(seconds) in (3, 4)
    assert sum(int(m.group(2)) for m in rows) == report["requests"]["sent"] == 345
    assert sum(int(m.group(3)) for m in rows) == report["requests"]["ok"]
    full = rows[0]
    assert 100 <= float(full.group(6)) <= 200 and full.group(10) == "7"
    assert 0 < float(full.group(7)) <= float(full.group(8))


def _meter_lines():
    log = RequestLog()
    swap, rollback = Event("swap", 1.0), Event("rollback", 3.0)
    meter = ProgressMeter(log, [swap, rollback])
    for us in (1_000, 2_000, 3_000, 4_000):
        log.add(0.1, OK, us, 1)
    log.add(0.2, ERROR)
    log.add(0.3, DROPPED)
    yield meter.line(0, 1.0, sent_total=5, in_flight=2)
    swap.start_s = 1.2
    log.add(1.1, OK, 5_500, 2)
    yield meter.line(1, 1.0, sent_total=6, in_flight=0)
    assert not meter.pending
    swap.end_s, swap.ok, swap.result = 2.5, True, {"version": 2}
    rollback.error = "skipped: swap did not succeed"  # as _run_event records one that never started
    assert meter.pending
    yield meter.line(2, 0.1, sent_total=6, in_flight=0)


def test_progress_lines_read_only_new_rows_and_mark_each_event_change_once():
    first, second, last = (LINE.match(line) for line in _meter_lines())
    assert first.group(2, 3, 4, 5, 6, 7, 8, 9, 10) == ("5", "4", "1", "1", "4.0", "2.00", "4.00", "2", "1")
    assert first.group(11) is None
    assert second.group(2, 3, 4, 7, 10) == ("1", "1", "0", "5.50", "2")
    assert second.group(11) == "swap started at 1.20 s"
    assert last.group(3, 6, 7, 10) == ("0", "-", "-", "-")  # nothing new; too short a window for a rate
    assert last.group(11) == "swap ended at 2.50 s, ok, version 2 live; rollback skipped: swap did not succeed"


def test_quiet_drops_the_progress_lines_and_plot_writes_a_png(fake_query, tmp_path, capsys):
    out, png = tmp_path / "report.json", tmp_path / "timeline.png"
    argv = ["--address", fake_query, "--qps", "40", "--duration-s", "1.2", "--out", str(out), "--plot", str(png)]
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--quiet"])
    assert exit_.value.code == 0
    stderr = capsys.readouterr().err
    assert not any(LINE.match(line) for line in stderr.splitlines())
    assert f"timeline plot: {png}" in stderr and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(out.read_text())
    assert report["requests"]["ok"] == 48 and len(report["timeline"]) == 2


def test_an_out_or_plot_file_that_cannot_be_written_is_refused_before_the_run(fake_query, tmp_path, capsys):
    # Found only after the run, it was a traceback that lost the whole report.
    for flag in ("--out", "--plot"):
        with pytest.raises(SystemExit) as exit_:
            main(["--address", fake_query, "--qps", "40", "--duration-s", "1", "--quiet",
                  flag, str(tmp_path / "missing" / "report")])
        assert exit_.value.code == 2
        assert f"{flag}: directory {tmp_path / 'missing'} does not exist" in capsys.readouterr().err


def test_a_directory_or_another_image_format_is_refused_before_the_run(fake_query, tmp_path, capsys):
    # Each was a traceback once the run was over (IsADirectoryError; matplotlib's "Format 'jpg' is not supported").
    for flag, path, message in (("--out", tmp_path, f"--out: {tmp_path} is a directory"),
                                ("--plot", tmp_path / "t.jpg", f"--plot writes a PNG: name a .png file, not "
                                                                f"{tmp_path / 't.jpg'}")):
        with pytest.raises(SystemExit) as exit_:
            main(["--address", fake_query, "--qps", "40", "--duration-s", "1", "--quiet", flag, str(path)])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_plot_named_without_a_suffix_is_written_and_named_as_a_png(fake_query, tmp_path, capsys):
    """matplotlib wrote timeline.png while the tool said it wrote "timeline"."""
    with pytest.raises(SystemExit):
        main(["--address", fake_query, "--qps", "20", "--duration-s", "0.5", "--quiet", "--out",
              str(tmp_path / "r.json"), "--plot", str(tmp_path / "timeline")])
    assert f"timeline plot: {tmp_path / 'timeline.png'}\n" in capsys.readouterr().err
    assert (tmp_path / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_a_short_run_achieves_the_offered_rate_not_its_requests_over_one_round_trip(fake_query):
    """3 requests at 10/s read as 14.5/s (over the 0.2 s to the last answer), 1 at 1/s for 0.5 s as 314/s."""
    report = run_event_loop(run_load(LoadConfig(address=fake_query, qps=10, duration_s=0.3, channels=1)))
    assert report["requests"]["ok"] == 3 and report["achieved_qps"] == 10.0


def _interrupted(argv: list[str], ready: Callable[[str], bool], wait_s: float) -> tuple[int, str]:
    """(exit status, stderr after) of ``recsys-loadtest argv`` given SIGINT once a stderr line is ``ready``."""
    run = subprocess.Popen([console_script("recsys-loadtest"), *argv], stderr=subprocess.PIPE, text=True)
    try:
        for line in run.stderr:
            if ready(line):
                break
        run.send_signal(signal.SIGINT)
        status = run.wait(wait_s)
        return status, run.stderr.read()
    finally:
        run.kill()
        run.wait()


def test_a_stopped_run_reports_what_it_measured_and_exits_as_the_signal(fake_query, tmp_path):
    """Ctrl-C was a KeyboardInterrupt's traceback: nothing written, nothing printed."""
    out = tmp_path / "r.json"
    status, err = _interrupted(["--address", fake_query, "--qps", "50", "--duration-s", "60", "--out", str(out)],
                               LINE.match, 30)  # the first progress line: a second of the schedule went by
    assert status == 130, err[-3000:]
    assert "recsys-loadtest: stopped by SIGINT: waiting for the requests in flight" in err
    report = json.loads(out.read_text())
    assert 1 <= report["stopped_at_s"] < 30 and report["requests"]["errors"] == 0
    assert report["requests"]["ok"] == report["requests"]["scheduled"] >= 50
    assert report["warnings"][-1].startswith(f"stopped at {report['stopped_at_s']:.2f} s of a 60 s schedule: ")
    assert report["elapsed_s"] >= report["stopped_at_s"] and report["timeline"][-1]["end_s"] < 30


def test_a_stop_while_connecting_ends_the_run_at_once_with_its_report(tmp_path):
    """The stop was only seen by the schedule: with no server there, Ctrl-C waited out the connect (10 s, or
    --timeout-s) and exited 1 "could not connect" (found by a review, stop 60)."""
    out = tmp_path / "r.json"
    status, err = _interrupted(  # once its handlers are in place, the connect under way
        ["--address", "127.0.0.1:1", "--qps", "50", "--duration-s", "5", "--timeout-s", "60", "--out", str(out)],
        lambda line: line.startswith("recsys-loadtest: connecting to 127.0.0.1:1 (at most 60 s)"), 10)
    assert status == 130, err[-3000:]
    report = json.loads(out.read_text())
    assert report["requests"]["scheduled"] == 0 and report["stopped_at_s"] < 1


def _sigint_self() -> str:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
    return "went on"


def test_the_swap_process_ignores_the_terminals_ctrl_c():
    """A terminal's Ctrl-C reaches the whole process group: the admin process raised KeyboardInterrupt inside a
    rollout, which has no undo for it, and the run ended in a traceback (found by a review, stop 60)."""
    from recsys_client.loadtest.run import _admin_process

    with _admin_process() as pool:
        try:
            assert pool.submit(_sigint_self).result(timeout=60) == "went on"
        except KeyboardInterrupt:  # the child's, raised again here: it would end the whole test run
            pytest.fail("the admin process took the terminal's SIGINT")


ORPHAN = """
import os
from recsys_client.loadtest.run import _admin_process

pool = _admin_process()
print(pool.submit(os.getpid).result(timeout=60), flush=True)
os._exit(130)  # as a second Ctrl-C ends recsys-loadtest: no pool shut down
"""


def test_the_swap_process_ends_once_its_parent_ended_at_once():
    """It waited for work for good, a child of init, beside its resource tracker (found by a review, stop 60)."""
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())  # the pipe stays open while the worker holds it: read the line alone
    assert parent.wait(60) == 130
    for _ in range(100):
        if not Path(f"/proc/{worker}").exists():
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"the admin process {worker} outlived its parent")


def test_the_report_and_the_plot_cannot_be_one_file(fake_query, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--address", fake_query, "--qps", "40", "--duration-s", "1", "--quiet", "--out", str(tmp_path / "r.png"),
              "--plot", str(tmp_path / "r.png")])
    assert exit_.value.code == 2 and f"--plot {tmp_path / 'r.png'} is --out's file" in capsys.readouterr().err
