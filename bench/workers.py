"""Scaling of the query service with ``--workers``: the same stack (one index
slot, Redis, a query service) with the query service run as 1, 2, ... worker
processes on one port, each measured as ``bench.serving_throughput`` measures
(the largest arrival rate of a ladder with p99 <= --p99-ms and no failures, the
most answered per second, server CPU per request):

  hit   a few warmed customers: the query workers' in-process tier answers, so
        this is the query service's own capacity
  miss  mostly distinct customers: query workers, the index slot and Redis

Everything, the load generator included, shares this machine's cores: on a
machine with fewer cores than workers plus the other processes need, the
ratios show contention as much as scaling.

    python -m bench.workers [--workers 1,2] [--quick] [--out FILE]

Prints JSON (stdout or --out) and a table on stderr.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

from bench.common import machine_info, table, write_json
from bench.serving_throughput import MODEL, add_stack_flags, load, max_sustainable, train
from tests.processes import RedisProcess, ServiceProcess, children

# A connection stays on the worker the kernel gave it: enough of them that
# every worker gets a fair share (with 4 over 2 workers, 1 run in 8 puts all on one).
CHANNELS = 16


def measure(workers: int, args: argparse.Namespace, registry: Path, index: ServiceProcess, redis: RedisProcess,
            work: Path) -> dict:
    """Hit and miss ladders against a query service of ``workers`` processes."""
    # One key for the workers, else each signs Redis values with its own and the others' are misses to it; a new
    # one per count, else a count would hit the results an earlier count cached for the same draws.
    key = work / f"cache-{workers}.key"
    key.write_text(secrets.token_hex(32))
    query = ServiceProcess("recsys-query-service",
                           ["--registry", str(registry), "--model", MODEL, "--version", "1",
                            "--index-address", index.address, "--redis-url", redis.url, "--cache-key-file", str(key),
                            "--workers", str(workers)],
                           work / f"query-{workers}.log").start()
    try:
        pids = [query.proc.pid, *children(query.proc.pid), index.proc.pid, redis.proc.pid]  # supervisor, workers
        name = f"w{workers}"
        out = {"miss": max_sustainable(query.address, args.miss_ladder, args.duration_s, args.customers,
                                       args.p99_ms, work, f"{name}-miss", pids, channels=CHANNELS)}
        hot = min(100, args.customers)
        load(query.address, 200, 1.0, hot, work / f"{name}-warm.json", seed=2, channels=CHANNELS)
        out["hit"] = max_sustainable(query.address, args.hit_ladder, args.duration_s, hot, args.p99_ms, work,
                                     f"{name}-hit", pids, channels=CHANNELS)
        return out
    finally:
        query.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    parser.add_argument("--quick", action="store_true", help="tiny model, short steps (smoke test)")
    add_stack_flags(parser)
    parser.add_argument("--miss-ladder", default="200,400,600,800,1000,1250,1500,2000")
    parser.add_argument("--hit-ladder", default="500,1000,1500,2000,2500,3000,3500,4000,5000,6000")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.customers, args.candidates, args.interactions = 300, 200, 6000
        args.miss_ladder = args.hit_ladder = "100"
        args.duration_s = 1.0
    counts = [int(n) for n in args.workers.split(",")]
    args.miss_ladder = [int(q) for q in args.miss_ladder.split(",")]
    args.hit_ladder = [int(q) for q in args.hit_ladder.split(",")]

    machine = machine_info()  # before the run: its load average is the machine's, not ours
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        work = Path(tmp)
        registry = work / "registry"
        train(registry, args.customers, args.candidates, args.interactions)
        redis = RedisProcess().start()
        index = ServiceProcess("recsys-index-service", ["--registry", str(registry), "--model", MODEL,
                                                        "--version", "1", "--slot", "blue"], work / "index.log")
        try:
            index.start()
            results = {str(n): measure(n, args, registry, index, redis, work) for n in counts}
        finally:
            index.stop()
            redis.stop()

    base = results[str(counts[0])]
    ratio = lambda a, b: round(a / b, 2) if b else None  # noqa: E731
    scaling = {str(n): {path: {"max_sustainable_qps": ratio(r[path]["max_sustainable_qps"],
                                                          base[path]["max_sustainable_qps"]),
                               "max_throughput_qps": ratio(r[path]["max_throughput_qps"],
                                                           base[path]["max_throughput_qps"])}
                            for path in ("hit", "miss")} for n, r in results.items()}
    report = {"config": {k: v for k, v in vars(args).items() if k != "out"} | {"channels": CHANNELS},
              "machine": machine,
              "results": results, "scaling_vs_first": scaling}
    print(write_json(report, args.out))
    rows = [[n, path, r[path]["max_sustainable_qps"], r[path]["max_throughput_qps"],
             r[path]["server_cpu_us_per_request"], scaling[n][path]["max_throughput_qps"]]
            for n, r in results.items() for path in ("hit", "miss")]
    print(table(rows, ["workers", "path", "max QPS at p99", "max answered/s", "server CPU us/req",
                       "throughput vs first"]), file=sys.stderr)


if __name__ == "__main__":
    main()
