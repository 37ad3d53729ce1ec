"""Overload: how many calls a query replica answers in time when offered more than it can serve, with its limits on
calls not yet started (``--max-streams-per-connection``, ``--max-pending-calls``) at their defaults and without them.

Stack on loopback: a small synthetic model trained by ``recsys-train``, one index slot, a query replica, a private
Redis. ``recsys-loadtest`` offers an open loop of cache misses (customers drawn from many, a new draw each phase)
over ``--channels`` connections (20), each call with a deadline of ``--timeout-ms``, in phases at multiples of
``--capacity-qps`` (what the replica answers at that deadline; 500 a second on the 2-core VM of docs/BENCHMARKS.md,
"Overload", 1,000 on a quicker day of it). Each phase reports its goodput (OK answers a second: an answer past its
deadline is DEADLINE_EXCEEDED, so every OK one came in time), its error codes, the server CPU per OK answer, and
what the replica's /metrics show of the calls gRPC's core refused (``refused_in_core``: started, neither succeeded
nor failed, in ``recsys_grpc_server_calls_*``; its callers read them as CANCELLED).
``runs.streams_per_connection_<n>``: ``--max-streams-per-connection`` n with ``--max-pending-calls`` at its default
(128), or neither limit for n = 0 (the code before them); ``--query-flags`` may set another pending limit for the
runs with a stream limit.
Without them, at twice the capacity the calls waited in gRPC's first-in, first-out queue until each was late.

    python -m bench.overload [--quick] [--channels N] [--out FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import cpu_seconds, counter_totals, git_commit, loadtest_report, machine_info, table, write_json
from bench.serving_throughput import MODEL, stop_all, train
from serving.telemetry.core_calls import unended
from tests.processes import RedisProcess, ServiceProcess, console_script, free_port, start_all

MULTIPLES = (0.5, 1.0, 2.0, 4.0, 0.9)  # of the capacity: below, at, twice, four times, then back under it
# The model's customers, each phase's calls drawn from them (an unknown one would be answered from the popular list,
# without the tower or the index): a fifth to a third of the OK answers at 2x and 4x were repeats, cache hits.
SIZES = (50_000, 5_000, 250_000)  # customers, candidates, interactions
QUICK_SIZES = (300, 200, 6_000)


def unended_in_core(metrics_port: int) -> float:
    """Calls the query replica's gRPC servers started and neither succeeded nor failed (refused, or in progress);
    KeyError if its /metrics lacks their counters (a figure that read 0 would pass for one that is)."""
    totals = counter_totals(metrics_port, "recsys_grpc_server_calls_")
    return unended(lambda name: totals[f"recsys_grpc_server_calls_{name}"])


def phase(address: str, qps: float, duration_s: float, timeout_ms: float, customers: int, seed: int, work: Path,
          pids: list[int], channels: int, metrics_port: int) -> dict:
    """One open-loop phase of recsys-loadtest at ``qps``: goodput, codes, server CPU per OK answer and the calls
    refused in gRPC's core as the replica's /metrics show them."""
    out = work / f"load-{seed}.json"
    unended_before = unended_in_core(metrics_port)
    cpu = cpu_seconds(pids)
    # It exits 1 when calls failed, which overload is about: its report says how.
    run = subprocess.run([console_script("recsys-loadtest"), "--address", address, "--qps", str(qps), "--duration-s",
                          str(duration_s), "--timeout-s", str(timeout_ms / 1000), "--num-customers", str(customers),
                          "--seed", str(seed), "--channels", str(channels), "--concurrency", "4000", "--quiet", "--out",
                          str(out)], capture_output=True, text=True, timeout=duration_s + 120)
    cpu = cpu_seconds(pids) - cpu
    report = loadtest_report(out, run.returncode, run.stderr)
    refused = unended_in_core(metrics_port) - unended_before  # the load has ended: none of its calls is in progress
    ok = report["requests"]["ok"]
    return {"offered_qps": round(qps), "goodput_qps": round(ok / duration_s, 1), "ok": ok,
            "errors_by_code": report["errors_by_code"], "dropped": report["requests"]["dropped"],
            "cache_hits": report["cache_hits"],
            "p99_ok_ms": report["latency_ms"]["p99_ms"],
            "server_cpu_ms_per_ok": round(cpu * 1000 / ok, 2) if ok else None, "refused_in_core": round(refused)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, short phases (smoke test)")
    parser.add_argument("--capacity-qps", type=float, default=500.0)
    parser.add_argument("--phase-s", type=float, default=10.0)
    parser.add_argument("--timeout-ms", type=float, default=200.0)
    parser.add_argument("--limits", default="64,0",
                        help="--max-streams-per-connection values compared (0: without --max-pending-calls too)")
    parser.add_argument("--channels", type=int, default=20, help="connections the load is offered over")
    parser.add_argument("--query-flags", default="", help="more flags for the query replica, space-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.quick:
        args.capacity_qps, args.phase_s = 50.0, 1.0
    results: dict = {"commit": git_commit(), "machine": machine_info(), "capacity_qps": args.capacity_qps,
                     "timeout_ms": args.timeout_ms, "phase_s": args.phase_s, "channels": args.channels,
                     "query_flags": args.query_flags, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        work = Path(tmp)
        train(work / "registry", *sizes)
        common = ["--registry", str(work / "registry"), "--model", MODEL, "--version", "1"]
        redis = RedisProcess().start()
        index = query = None
        try:
            index = ServiceProcess("recsys-index-service", [*common, "--slot", "blue"], work / "index.log")
            start_all(index)
            for n, limit in enumerate(int(x) for x in args.limits.split(",")):
                metrics_port = free_port()
                query = ServiceProcess("recsys-query-service", [*common, "--index-address", index.address,
                                                                "--metrics-port", str(metrics_port),
                                                                "--redis-url", redis.url,
                                                                "--max-streams-per-connection", str(limit),
                                                                *args.query_flags.split(),
                                                                *([] if limit else ["--max-pending-calls", "0"])],
                                       work / f"query-{limit}.log")
                start_all(query)
                pids = [index.proc.pid, query.proc.pid, redis.proc.pid]
                phases = [phase(query.address, m * args.capacity_qps, args.phase_s, args.timeout_ms, sizes[0],
                                100 * n + i, work, pids, args.channels, metrics_port)
                          for i, m in enumerate(MULTIPLES)]
                results["runs"][f"streams_per_connection_{limit}"] = phases
                query.stop()
                for p in phases:
                    print(f"  limit {limit:3d}: offered {p['offered_qps']:6d}/s, in time {p['goodput_qps']:7.1f}/s, "
                          f"errors {p['errors_by_code']}, refused in core {p['refused_in_core']}, "
                          f"cpu {p['server_cpu_ms_per_ok']} ms/ok", file=sys.stderr)
        finally:
            stop_all(query, index, redis)
    rows = [[name, *(p["goodput_qps"] for p in phases)] for name, phases in results["runs"].items()]
    print(table(rows, ["run", *(f"{m:g}x" for m in MULTIPLES)]), file=sys.stderr)
    text = write_json(results, args.out)
    if not args.out:
        print(text)


if __name__ == "__main__":
    main()
