"""Swap benchmark: a blue-green rollout of a 1M-candidate version under steady
load, then a rollback.

Builds two large versions from a small trained one: the small version's query
tower, and 1M (``--candidates``) clustered synthetic candidate embeddings of the
tower's dimension indexed by the trainer's own ScaNN builder (so index build,
recall self-test, checksums and load costs are those of a real version of that
size; only the candidates' meaning is synthetic). The stack is two index slots
(blue holds the first version and serves it, green starts empty) and a query
replica routing over both. After a warm-up (caches filled, connections up),
``recsys-loadtest --swap`` runs ``recsys-publish``: green loads the second
version while blue serves, the query replica switches routing, and later rolls
back. Reports the rollout's duration, p99 before / during / after it, every
process's memory (each slot's steady and peak RSS) and the query replica's.

    python -m bench.swap [--quick] [--candidates 1000000] [--qps 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from model_registry import Manifest, Registry
from model_registry import manifest as files
from bench.ann import synthetic_clustered
from bench.common import rss_mb, write_json
from tests.processes import RedisProcess, ServiceProcess, console_script, start_all
from trainer.export import index as index_builder

MODEL = "swapbench"
COPIED = (files.QUERY_TOWER_DIR, files.POPULAR_FILE, files.CUSTOMER_STORE_FILE)


def publish_built(registry: Registry, base: Path, ids: np.ndarray, embeddings: np.ndarray, probes: np.ndarray,
                  shards: list[index_builder.Shard], spec, dataset: str) -> Manifest:
    """Publishes base's tower (and customer store, popularity list) with the
    given candidates and their built searchers (``index_builder.build_shards``);
    not made current."""
    base_manifest = files.read_manifest(base)

    def write(staging: Path):
        for name in COPIED:
            source = base / name
            if source.is_dir():
                shutil.copytree(source, staging / name)
            elif source.exists():
                shutil.copy2(source, staging / name)
        np.save(staging / files.PROBE_QUERIES_FILE, probes)
        specs = index_builder.save_candidates(staging, ids, embeddings, shards)
        return lambda version, checksums: Manifest(
            model=registry.model, version=version, embedding_dim=base_manifest.embedding_dim,
            num_candidates=len(ids), tower=base_manifest.tower, dataset=dataset,
            created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(), index=spec, files=checksums,
            shards=specs)

    return registry.publish(write)


def large_candidates(num_candidates: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, embeddings, probe queries) of a large synthetic catalogue. A
    trained-like variance spectrum (see bench/ann.py): isotropic clusters are
    the worst case for partitioning and not what a trained model produces."""
    embeddings, probes, _ = synthetic_clustered(num_candidates, dim, clusters=2000, spread=0.3, num_queries=0,
                                                num_probes=1000, seed=seed, decay=0.6)
    return np.char.add("x", np.arange(num_candidates).astype(str)), embeddings, probes


def publish_large(registry: Registry, base: Path, num_candidates: int, seed: int) -> Manifest:
    """Publishes base's tower with a large synthetic candidate set (not made current)."""
    ids, embeddings, probes = large_candidates(num_candidates, files.read_manifest(base).embedding_dim, seed)
    shards, spec = index_builder.build_shards(embeddings, probes, ids)
    return publish_built(registry, base, ids, embeddings, probes, shards, spec, f"synthetic-{num_candidates}")


def loadtest_command(address: str, qps: float, duration_s: float, out: Path, *extra: str) -> list[str]:
    """An open-loop ``recsys-loadtest`` run over 2,000 customers writing its report to ``out``."""
    return [console_script("recsys-loadtest"), "--address", address, "--qps", str(qps), "--duration-s",
            str(duration_s), "--num-customers", "2000", "--channels", "2", "--timeout-s", "5", "--concurrency", "2000",
            "--quiet", "--out", str(out), *extra]


def loadtest(address: str, qps: float, duration_s: float, out: Path, *extra: str) -> subprocess.CompletedProcess:
    out.unlink(missing_ok=True)  # what the caller reads from ``out`` afterwards is this run's report or nothing
    return subprocess.run(loadtest_command(address, qps, duration_s, out, *extra), capture_output=True, text=True,
                          timeout=duration_s + 900)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="30k candidates, a tower trained on 8,000 interactions, a short run (smoke test)")
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--qps", type=int, default=300)
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--swap-at-s", type=float, default=15.0)
    parser.add_argument("--rollback-at-s", type=float, default=45.0)
    parser.add_argument("--warmup-s", type=float, default=15.0,
                        help="load before the measured run (same rate), so 'before' is steady state")
    parser.add_argument("--query-flags", default="", help="more flags for the query replica, space-separated")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.qps, args.duration_s, args.swap_at_s, args.rollback_at_s = 30_000, 50, 5.0, 1.0, 4.0
        args.warmup_s = 1.0

    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry", MODEL)
        subprocess.run([console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(registry.root),
                        "--model", MODEL, "--epochs", "1", "--tune-budget-s", "0", "--quiet",
                        # The tower only embeds customers here: a smoke test's needs no more training than that.
                        *(["--synthetic-interactions", "8000"] if args.quick else [])],
                       check=True, capture_output=True, timeout=1800)
        t0 = time.perf_counter()
        large = [publish_large(registry, registry.version_dir(1), args.candidates, seed) for seed in (1, 2)]
        build_s = (time.perf_counter() - t0) / 2
        live, new = large[0].version, large[1].version
        common = ["--registry", str(registry.root), "--model", MODEL]
        redis = RedisProcess().start()
        blue = green = query = None
        try:
            # The state a first rollout leaves: blue holds the live version, CURRENT names it.
            registry.set_current(live)
            blue = ServiceProcess("recsys-index-service", [*common, "--slot", "blue", "--version", str(live)],
                                  work / "blue.log")
            green = ServiceProcess("recsys-index-service", [*common, "--slot", "green"], work / "green.log")
            query = ServiceProcess("recsys-query-service", [*common, "--index-address",
                                                            f"{blue.address},{green.address}",
                                                            "--redis-url", redis.url, *args.query_flags.split()],
                                  work / "query.log")
            start_all(blue, green, query, timeout_s=600)
            green_empty = rss_mb(green.proc.pid)  # nothing is rolled out to green until the swap
            loadtest(query.address, args.qps, args.warmup_s, work / "warmup.json")
            steady = {"blue": rss_mb(blue.proc.pid), "query": rss_mb(query.proc.pid)}
            out = work / "load.json"
            load = loadtest(query.address, args.qps, args.duration_s, out, "--swap", "--registry", str(registry.root),
                            "--model", MODEL, "--index-admin", f"{blue.admin_address},{green.admin_address}",
                            "--query-admin", query.admin_address, "--swap-version", str(new),
                            "--swap-at-s", str(args.swap_at_s), "--rollback-at-s", str(args.rollback_at_s))
            report = json.loads(out.read_text())
            after = {"blue": rss_mb(blue.proc.pid), "green": rss_mb(green.proc.pid), "query": rss_mb(query.proc.pid)}
        finally:
            for process in (query, green, blue):
                if process is not None:
                    process.stop()
            redis.stop()

    phases = report["swap"].get("phases", {})
    result = {
        "candidates": args.candidates, "qps": args.qps, "duration_s": args.duration_s,
        "index": {"kind": large[1].index.kind, "num_leaves": large[1].index.num_leaves,
                  "leaves_to_search": large[1].index.num_leaves_to_search, "reorder": large[1].index.reorder,
                  "recall_at_10": large[1].index.recall_at_10},
        "version_build_s": round(build_s, 1),
        "swap_s": report["swap"]["duration_s"], "rollback_s": report["rollback"]["duration_s"],
        # Where the rollout's and the rollback's time went (connect: the admin tool's channels).
        "swap_steps_s": (report["swap"]["result"] or {}).get("steps_s"),
        "rollback_steps_s": (report["rollback"]["result"] or {}).get("steps_s"),
        "requests": report["requests"], "errors_by_code": report["errors_by_code"],
        "model_versions": report["model_versions"],
        "p99_ms": {phase: stats["latency_ms"]["p99_ms"] for phase, stats in phases.items()},
        # blue: the live slot, before the rollout; green: the slot that loaded, empty before it and
        # holding the new version after (its peak is the rollout's peak: it started empty).
        "index_memory_mb": {"one_version_steady": steady["blue"], "after_swap": after["green"],
                            "slots": {"blue": {"before": steady["blue"], "after": after["blue"]},
                                      "green": {"empty": green_empty, "after": after["green"]}},
                            "loading_slot_peak_vs_steady": round(after["green"]["peak_rss_mb"]
                                                                 / after["green"]["rss_mb"], 3)},
        "query_memory_mb": {"before": steady["query"], "after": after["query"]},
        "warmup_s": args.warmup_s,
        # Per second of the run (by scheduled send time): p99 and the versions that answered.
        "timeline": [{k: row[k] for k in ("second", "ok", "p99_ms", "errors", "versions")}
                     for row in report["timeline"]],
        "swap_at_s": report["swap"]["start_s"], "rollback_at_s": report["rollback"]["start_s"],
        "loadtest_exit_code": load.returncode,
    }
    print(write_json(result, args.out))


if __name__ == "__main__":
    main()
