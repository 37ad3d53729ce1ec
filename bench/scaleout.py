"""Scale-out benchmark: a version split into index shards, served by one
index process per shard, against one shard's worth served alone; and replica
failover of a shard under load.

Builds, from a small trained model's query tower, a version of
``--candidates`` synthetic clustered embeddings (as ``bench.swap``) split into
``--shards`` shards by the trainer's own builder (a ScaNN searcher per shard,
the merged recall@10 against exact search over every candidate measured at
publish), and a second, unsharded version holding only shard 0's candidates
and searcher ("one shard alone"). Then, through the real query service (no
result cache: every request searches the index):

1. the sharded version on one index process per shard (plus a second replica
   of shard 0): ``recsys-loadtest`` at ``--qps`` for ``--duration-s``;
2. failover at ``--failover-qps``: a steady run, a run in which shard 0's
   second replica is stopped (SIGSTOP) 2 s in, and a run in which it is
   killed (SIGKILL) 2 s in; requests, failures and p99 of each;
3. the one-shard version on one index process, at ``--qps`` as in 1.

Reports per shard its candidates, build and load seconds and RSS.

    python -m bench.scaleout [--quick] [--candidates 10000000] [--shards 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import rss_mb, write_json
from bench.swap import large_candidates, publish_built
from model_registry import Registry
from model_registry import manifest as files
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc
from tests.processes import ServiceProcess, console_script
from trainer.export import index as index_builder

MODEL = "scalebench"
FAULT_AT_S = 2.0


def loadtest(address: str, qps: float, duration_s: float, out: Path) -> dict:
    """A ``recsys-loadtest`` run's report (open loop, 2,000 customers)."""
    run = subprocess.run(
        [console_script("recsys-loadtest"), "--address", address, "--qps", str(qps), "--duration-s", str(duration_s),
         "--num-customers", "2000", "--channels", "2", "--timeout-s", "5", "--concurrency", "2000", "--out", str(out)],
        capture_output=True, text=True, timeout=duration_s + 600)
    if not out.exists():
        raise RuntimeError(f"recsys-loadtest wrote no report (exit {run.returncode}):\n{run.stderr[-2000:]}")
    return json.loads(out.read_text())


def loadtest_with_fault(address: str, qps: float, duration_s: float, out: Path, fault) -> dict:
    """``loadtest``, calling ``fault()`` ``FAULT_AT_S`` into the run."""
    command = [console_script("recsys-loadtest"), "--address", address, "--qps", str(qps), "--duration-s",
               str(duration_s), "--num-customers", "2000", "--channels", "2", "--timeout-s", "5",
               "--concurrency", "2000", "--out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as run:
        time.sleep(FAULT_AT_S + 1.0)  # the load generator's start-up (~1 s) precedes its first request
        fault()
        _, stderr = run.communicate(timeout=duration_s + 600)
    if not out.exists():
        raise RuntimeError(f"recsys-loadtest wrote no report (exit {run.returncode}):\n{stderr[-2000:]}")
    return json.loads(out.read_text())


def summary(report: dict) -> dict:
    requests = report["requests"]
    return {"requests": requests["scheduled"], "ok": requests["ok"],
            "failed": requests["scheduled"] - requests["ok"], "errors_by_code": report["errors_by_code"],
            "achieved_qps": report["achieved_qps"], "p50_ms": report["latency_ms"]["p50_ms"],
            "p99_ms": report["latency_ms"]["p99_ms"], "max_ms": report["latency_ms"]["max_ms"]}


def load_seconds(process: ServiceProcess) -> float:
    """The load time the index process reports for the version it holds."""
    with grpc.insecure_channel(process.admin_address) as channel:
        status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
    return round(max((v.load_seconds for v in status.versions), default=0.0), 2)


def serve(registry: Registry, work: Path, version: int, slots: list[tuple[str, int | None]]) -> list[ServiceProcess]:
    """Index processes holding ``version`` (one per (slot, shard)), started one at a time (each load is a
    ScaNN deserialization holding one core), and a query replica over them without a result cache, started."""
    common = ["--registry", str(registry.root), "--model", MODEL]
    registry.set_current(version)
    index = []
    for n, (slot, shard) in enumerate(slots):
        extra = [] if shard is None else ["--shard", str(shard)]
        index.append(ServiceProcess("recsys-index-service", [*common, "--slot", slot, "--version", str(version), *extra],
                                    work / f"index-{version}-{n}.log").start(timeout_s=1200))
    query = ServiceProcess("recsys-query-service", [*common, "--index-address", ",".join(p.address for p in index),
                                                    "--local-cache-mb", "0"], work / f"query-{version}.log").start()
    return [*index, query]


def stop_all(processes: list[ServiceProcess]) -> None:
    for process in reversed(processes):
        process.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40k candidates, short runs (smoke test)")
    parser.add_argument("--candidates", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--qps", type=float, default=200.0, help="offered load of the sharded vs one-shard runs")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--failover-qps", type=float, default=500.0)
    parser.add_argument("--failover-s", type=float, default=10.0, help="each failover run's length")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.qps, args.duration_s, args.failover_qps, args.failover_s = 40_000, 50, 3.0, 50, 5.0

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry", MODEL)
        subprocess.run([console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry.root),
                        "--model", MODEL, "--epochs", "1", "--tune-budget-s", "0", "--embedding-dim", "64",
                        "--prior-weight", "0", "--quiet"], check=True, capture_output=True, timeout=1800)
        base = registry.version_dir(1)
        dim = files.read_manifest(base).embedding_dim
        t0 = time.perf_counter()
        ids, embeddings, probes = large_candidates(args.candidates, dim, seed=1)
        generate_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        shards, spec = index_builder.build_shards(embeddings, probes, ids, args.shards)
        sharded = publish_built(registry, base, ids, embeddings, probes, shards, spec,
                                f"synthetic-{args.candidates}")
        publish_s = time.perf_counter() - t0
        build_s = [shard.build_seconds for shard in shards]
        first = shards[0]
        alone = publish_built(registry, base, ids[first.rows], embeddings[first.rows], probes,
                              [index_builder.Shard(np.arange(len(first.rows)), first.searcher, first.spec)],
                              first.spec, f"synthetic-{args.candidates}-shard-0")
        del embeddings, shards, first

        processes = serve(registry, work, sharded.version,
                          [("blue", s) for s in range(args.shards)] + [("blue", 0)])
        try:
            *index, spare, query = processes
            per_shard = [{"shard": s, "candidates": sharded.shards[s].num_candidates,
                          "recall_at_10": round(sharded.shards[s].index.recall_at_10, 4),
                          "build_s": round(build_s[s], 1), "load_s": load_seconds(p),
                          "rss_mb": rss_mb(p.proc.pid)["rss_mb"]} for s, p in enumerate(index)]
            loadtest(query.address, args.qps, 5.0, work / "warmup.json")
            sharded_run = summary(loadtest(query.address, args.qps, args.duration_s, work / "sharded.json"))
            steady = summary(loadtest(query.address, args.failover_qps, args.failover_s, work / "steady.json"))
            stopped = summary(loadtest_with_fault(query.address, args.failover_qps, args.failover_s,
                                                  work / "stop.json", lambda: spare.proc.send_signal(signal.SIGSTOP)))
            spare.proc.send_signal(signal.SIGCONT)
            time.sleep(2.0)
            killed = summary(loadtest_with_fault(query.address, args.failover_qps, args.failover_s,
                                                 work / "kill.json", spare.kill))
        finally:
            stop_all(processes)

        processes = serve(registry, work, alone.version, [("green", None)])
        try:
            alone_load_s = load_seconds(processes[0])
            loadtest(processes[-1].address, args.qps, 5.0, work / "warmup-alone.json")
            alone_run = summary(loadtest(processes[-1].address, args.qps, args.duration_s, work / "alone.json"))
        finally:
            stop_all(processes)

    result = {
        "candidates": args.candidates, "shards": args.shards, "dim": dim,
        "recall_at_10": round(spec.recall_at_10, 4),
        "qps": sharded_run["achieved_qps"], "p99_ms": sharded_run["p99_ms"], "offered_qps": args.qps,
        "sharded": sharded_run,
        "per_shard": per_shard,
        "generate_s": round(generate_s, 1), "build_and_publish_s": round(publish_s, 1),
        "one_shard_alone": {"candidates": alone.num_candidates, "recall_at_10": round(alone.index.recall_at_10, 4),
                            "load_s": alone_load_s, **alone_run},
        "failover_qps": args.failover_qps,
        "replica_steady": steady,
        "replica_stop": {**stopped, "p99_vs_steady": round(stopped["p99_ms"] / steady["p99_ms"], 2)
                         if stopped["p99_ms"] and steady["p99_ms"] else None},
        "replica_kill": killed,
    }
    print(write_json(result, args.out))


if __name__ == "__main__":
    main()
