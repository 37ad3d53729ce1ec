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

1. the sharded version on one index process per shard (with ``--failover-on
   sharded``, plus a second replica of shard 0): ``recsys-loadtest`` at
   ``--qps`` for ``--duration-s``;
2. the one-shard version on one index process (with the default ``--failover-on
   alone``, plus its second replica), at ``--qps`` as in 1;
3. failover at ``--failover-qps``, with a second replica of shard 0 (of the
   one-shard version by default, ``--failover-on alone``; of the sharded
   version with ``--failover-on sharded``): a steady run, a run in which the second replica is stopped (SIGSTOP) 2 s
   in, and a run in which it is killed (SIGKILL) 2 s in; requests, failures
   and p99 of each.

Reports per shard its candidates, build and load seconds and RSS.

    python -m bench.scaleout [--quick] [--candidates 10000000] [--shards 4] [--work DIR] [--out FILE]
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

from bench.common import loadtest_report, rss_mb, write_json
from bench import swap
from bench.swap import large_candidates, publish_built
from model_registry import Registry
from model_registry import manifest as files
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc
from tests.processes import ServiceProcess, console_script
from trainer.export import index as index_builder

MODEL = "scalebench"
FAULT_AT_S = 2.0


def loadtest(address: str, qps: float, duration_s: float, out: Path) -> dict:
    """A ``recsys-loadtest`` run's report."""
    run = swap.loadtest(address, qps, duration_s, out)
    return loadtest_report(out, run.returncode, run.stderr)


def loadtest_with_fault(address: str, qps: float, duration_s: float, out: Path, fault) -> dict:
    """``loadtest``, calling ``fault()`` ``FAULT_AT_S`` into the run."""
    out.unlink(missing_ok=True)  # a kept --work holds the previous run's report under the same name
    with subprocess.Popen(swap.loadtest_command(address, qps, duration_s, out), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as run:
        time.sleep(FAULT_AT_S + 1.0)  # the load generator's start-up (~1 s) precedes its first request
        fault()
        _, stderr = run.communicate(timeout=duration_s + 600)
    return loadtest_report(out, run.returncode, stderr)


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
        index.append(ServiceProcess("recsys-index-service",
                                    [*common, "--slot", slot, "--version", str(version), *extra],
                                    work / f"index-{version}-{n}.log").start(timeout_s=1200))
    query = ServiceProcess("recsys-query-service", [*common, "--index-address", ",".join(p.address for p in index),
                                                    "--local-cache-mb", "0"], work / f"query-{version}.log").start()
    return [*index, query]


def stop_all(processes: list[ServiceProcess]) -> None:
    for process in reversed(processes):
        process.stop()


def build(registry: Registry, candidates: int, shards: int) -> dict:
    """Trains the small model whose tower serves, builds the sharded version and
    the one-shard version; returns their numbers and the build's timings."""
    subprocess.run([console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry.root),
                    "--model", MODEL, "--epochs", "1", "--tune-budget-s", "0", "--embedding-dim", "64",
                    "--prior-weight", "0", "--quiet"], check=True, capture_output=True, timeout=1800)
    base = registry.version_dir(1)
    t0 = time.perf_counter()
    ids, embeddings, probes = large_candidates(candidates, files.read_manifest(base).embedding_dim, seed=1)
    generate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    built, spec = index_builder.build_shards(embeddings, probes, ids, shards)
    sharded = publish_built(registry, base, ids, embeddings, probes, built, spec, f"synthetic-{candidates}")
    publish_s = time.perf_counter() - t0
    first = built[0]
    alone = publish_built(registry, base, ids[first.rows], embeddings[first.rows], probes,
                          [index_builder.Shard(np.arange(len(first.rows)), first.searcher, first.spec)],
                          first.spec, f"synthetic-{candidates}-shard-0")
    return {"sharded": sharded.version, "alone": alone.version, "generate_s": round(generate_s, 1),
            "build_and_publish_s": round(publish_s, 1), "build_s": [round(b.build_seconds, 1) for b in built]}


def failover_runs(query: ServiceProcess, spare: ServiceProcess, args: argparse.Namespace, work: Path) -> dict:
    """Steady, then ``spare`` stopped (SIGSTOP) and, after it resumed, killed
    (SIGKILL), each ``FAULT_AT_S`` into a run at ``--failover-qps``."""
    steady = summary(loadtest(query.address, args.failover_qps, args.failover_s, work / "steady.json"))
    stopped = summary(loadtest_with_fault(query.address, args.failover_qps, args.failover_s, work / "stop.json",
                                          lambda: spare.proc.send_signal(signal.SIGSTOP)))
    spare.proc.send_signal(signal.SIGCONT)
    time.sleep(2.0)
    killed = summary(loadtest_with_fault(query.address, args.failover_qps, args.failover_s, work / "kill.json",
                                         spare.kill))
    return {"replica_steady": steady,
            "replica_stop": {**stopped, "p99_vs_steady": round(stopped["p99_ms"] / steady["p99_ms"], 2)
                             if stopped["p99_ms"] and steady["p99_ms"] else None},
            "replica_kill": killed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="40k candidates, short runs (smoke test)")
    parser.add_argument("--candidates", type=int, default=10_000_000)
    parser.add_argument("--shards", type=int, default=4)
    # 100: below where 4 index searches per request saturate 2 cores (between 100 and 200 QPS).
    parser.add_argument("--qps", type=float, default=100.0, help="offered load of the sharded vs one-shard runs")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--failover-qps", type=float, default=500.0)
    parser.add_argument("--failover-s", type=float, default=10.0, help="each failover run's length")
    parser.add_argument("--failover-on", choices=("sharded", "alone"), default="alone",
                        help="whose shard 0 gets a second replica for the failover runs: the sharded version's, or "
                             "the one-shard version's (one search per request instead of one per shard)")
    parser.add_argument("--work", type=Path, help="keep the registry here; a later run with the same --work "
                                                  "serves what the first built instead of building again")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.qps, args.duration_s, args.failover_qps, args.failover_s = 40_000, 50, 3.0, 50, 5.0

    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        work = args.work or Path(tmp)
        registry = Registry(work / "registry", MODEL)
        built = work / "built.json"
        if built.exists():  # a kept --work: serve what an earlier run built
            facts = json.loads(built.read_text())
            sharded, alone = registry.manifest(facts["sharded"]), registry.manifest(facts["alone"])
        else:
            facts = build(registry, args.candidates, args.shards)
            built.write_text(json.dumps(facts))
            sharded, alone = registry.manifest(facts["sharded"]), registry.manifest(facts["alone"])

        failover = {}
        processes = serve(registry, work, sharded.version, [("blue", s) for s in range(args.shards)]
                          + ([("blue", 0)] if args.failover_on == "sharded" else []))
        try:
            index, query = processes[:args.shards], processes[-1]
            per_shard = [{"shard": s, "candidates": sharded.shards[s].num_candidates,
                          "recall_at_10": round(sharded.shards[s].index.recall_at_10, 4),
                          "build_s": facts["build_s"][s], "load_s": load_seconds(p),
                          "rss_mb": rss_mb(p.proc.pid)["rss_mb"]} for s, p in enumerate(index)]
            loadtest(query.address, args.qps, 5.0, work / "warmup.json")
            sharded_run = summary(loadtest(query.address, args.qps, args.duration_s, work / "sharded.json"))
            if args.failover_on == "sharded":
                failover = failover_runs(query, processes[args.shards], args, work)
        finally:
            stop_all(processes)

        processes = serve(registry, work, alone.version,
                          [("green", None)] * (2 if args.failover_on == "alone" else 1))
        try:
            alone_load_s = load_seconds(processes[0])
            loadtest(processes[-1].address, args.qps, 5.0, work / "warmup-alone.json")
            alone_run = summary(loadtest(processes[-1].address, args.qps, args.duration_s, work / "alone.json"))
            if args.failover_on == "alone":
                failover = failover_runs(processes[-1], processes[1], args, work)
        finally:
            stop_all(processes)

    result = {
        "candidates": args.candidates, "shards": args.shards, "dim": sharded.embedding_dim,
        "recall_at_10": round(sharded.index.recall_at_10, 4),
        "qps": sharded_run["achieved_qps"], "p99_ms": sharded_run["p99_ms"], "offered_qps": args.qps,
        "sharded": sharded_run,
        "per_shard": per_shard,
        "generate_s": facts["generate_s"], "build_and_publish_s": facts["build_and_publish_s"],
        "one_shard_alone": {"candidates": alone.num_candidates, "recall_at_10": round(alone.index.recall_at_10, 4),
                            "load_s": alone_load_s, **alone_run},
        "failover_qps": args.failover_qps, "failover_on": args.failover_on,
        **failover,
    }
    print(write_json(result, args.out))


if __name__ == "__main__":
    main()
