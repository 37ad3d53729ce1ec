"""Live catalogue benchmark: filtered search, and a stream of candidate upserts
and deletes into a loaded 1M-candidate version served by two index replicas.

Publishes a version of ``--candidates`` synthetic clustered embeddings (64
dims, the trainer's ScaNN builder) with attributes: ``category`` (10 tokens,
10% each), ``flag`` (a token on 1% of candidates) and a numeric ``price``
(uniform 0..100). Then:

1. filters, in process: recall@10 against exact filtered search and
   single-thread QPS at selectivity 100% (none), 50% (price <= 50), 10% (one
   category) and 1% (flag), and crowding (at most 2 per category); then half
   as many deltas as the stream's applied in process while another thread
   sleeps 0.2 ms at a time: how late it wakes (its waits for the GIL);
2. two index replicas (slots blue and green) load the version; open-loop
   searches at ``--qps`` run against blue: ``--phase-s`` steady, then while
   ``recsys-catalogue``'s library streams deltas of ``--batch`` changes to both
   replicas at ``--upsert-rate`` upserts/s (of each delta's changes, half are
   new candidates, a quarter updates, a quarter deletes) until the catalogue has
   churned ``--churn`` of its size, then ``--phase-s`` again;
3. after every delta returns, each replica is asked for one of its new
   candidates (``SearchSimilar``: NOT_FOUND until applied): the time until
   every replica answers;
4. green restarts (it replays the log) and must answer 200 queries exactly as
   blue does; the recall of the churned index against exact search over its
   current rows is measured in process on a third replay.

    python -m bench.catalogue [--quick] [--candidates 1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import multiprocessing
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np

from bench.ann import synthetic_clustered
from bench.common import cpu_seconds, write_json
from index_service.searcher import CandidateIndex
from model_registry import Manifest, Registry
from model_registry import manifest as files
from model_registry.attributes import Attributes
from model_registry.deltas import Delta
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.delta_rollout import publish_delta
from recsys_client.fleet import Fleet
from serving.filters import NO_FILTER, check_filter
from tests.processes import ServiceProcess, start_all
from trainer.export import index as index_builder

MODEL = "catbench"
DIM = 64
CATEGORIES = [f"cat{j}" for j in range(10)]
FILTERS = {
    "none": NO_FILTER,
    "50%": check_filter([], [("price", None, 50.0)], "", 0),
    "10%": check_filter([("category", ["cat3"], [])], [], "", 0),
    "1%": check_filter([("flag", ["yes"], [])], [], "", 0),
    "crowding 2 per category": check_filter([], [], "category", 2),
}


def _attributes(rng, n: int) -> Attributes:
    category = rng.integers(0, 10, n)
    flag = rng.random(n) < 0.01
    return Attributes.from_lists(n, {"category": [[CATEGORIES[c]] for c in category],
                                     "flag": [["yes"] if f else [] for f in flag]},
                                 {"price": (rng.random(n) * 100).astype(np.float32)})


def publish_version(registry: Registry, n: int, seed: int = 1) -> tuple[Manifest, np.ndarray]:
    """A version of n clustered candidates with attributes; returns (manifest, evaluation queries)."""
    embeddings, probes, queries = synthetic_clustered(n, DIM, clusters=2000, spread=0.3, num_queries=1000,
                                                      num_probes=1000, seed=seed, decay=0.6)
    searcher, spec = index_builder.build_index(embeddings, probes)
    attributes = _attributes(np.random.default_rng(seed), n)

    def write(staging: Path):
        np.save(staging / files.CANDIDATE_IDS_FILE, np.char.add("x", np.arange(n).astype(str)))
        np.save(staging / files.CANDIDATE_EMBEDDINGS_FILE, embeddings)
        np.save(staging / files.PROBE_QUERIES_FILE, probes)
        files.write_popular(staging, np.char.add("x", np.arange(100).astype(str)), np.linspace(0.01, 0.001, 100))
        attributes.save(staging / files.ATTRIBUTES_FILE)
        index_builder.save_searcher(searcher, staging / files.SCANN_DIR)
        return lambda version, checksums: Manifest(
            model=registry.model, version=version, embedding_dim=DIM, num_candidates=n, tower="none",
            dataset=f"synthetic-{n}", created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            index=spec, files=checksums)

    return registry.publish(write), queries


def filter_figures(index: CandidateIndex, queries: np.ndarray, k: int = 10) -> dict:
    out = {}
    n = index.num_candidates
    for name, f in FILTERS.items():
        passing = int(index.attributes.mask(f).sum()) if f.selects else n
        start = time.perf_counter()
        for q in queries[:500]:
            index.search(q[None], k, f=f)
        qps = 500 / (time.perf_counter() - start)
        estimated = index.attributes.selectivity(f) if f.selects else 1.0
        out[name] = {"selectivity": round(passing / n, 4), "recall_at_10": round(index.recall(queries[:200], k, f), 4),
                     "qps_one_thread": round(qps, 1),
                     "path": "exact over passing rows" if f.selects and estimated * n <= 20_000 else "ann over-fetch"}
    return out


def _search_load(address: str, queries: np.ndarray, qps: float, stop, samples) -> None:
    """Open-loop Search calls at ``qps`` (run in a child process, so the client's latency
    never waits on the GIL of the process writing deltas); sends (due at, latency from then or -1)."""
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.IndexServiceStub(channel)
    requests = [pb.SearchRequest(vector=q.tolist(), k=10) for q in queries]
    out: list[tuple[float, float]] = []

    def record(sent_wall: float, sent: float, future) -> None:
        out.append((sent_wall, -1.0 if future.exception() is not None else time.perf_counter() - sent))

    start, start_wall, i = time.perf_counter(), time.time(), 0
    while not stop.is_set():
        due = start + i / qps
        time.sleep(max(0.0, due - time.perf_counter()))
        # Timed from when the call was due, not from when it went out: a client that fell behind (the servers and
        # the delta writer share this machine's cores with it) would else leave its own lag out of the tail.
        future = stub.Search.future(requests[i % len(requests)], timeout=5)
        future.add_done_callback(lambda fut, w=start_wall + i / qps, s=due: record(w, s, fut))
        i += 1
    time.sleep(1.0)
    channel.close()
    samples.send(out)


class SearchLoad:
    """``_search_load`` in a child process; latencies split by phase (wall-clock boundaries)."""

    def __init__(self, address: str, queries: np.ndarray, qps: float):
        context = multiprocessing.get_context("spawn")
        self.qps = qps
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_search_load, args=(address, queries, qps, self._stop, send))
        self.marks: list[tuple[str, float]] = []
        self.samples: list[tuple[float, float]] = []

    def start(self) -> "SearchLoad":
        self._process.start()
        return self

    def mark(self, phase: str) -> None:
        """Requests sent from now on belong to ``phase``."""
        self.marks.append((phase, time.time()))

    def stop(self) -> None:
        self._stop.set()
        self.samples = self._receive.recv()
        self._process.join()

    def phases(self) -> dict:
        out = {}
        ends = [t for _, t in self.marks[1:]] + [float("inf")]
        for (phase, begin), end in zip(self.marks, ends):
            latencies = [lat for sent, lat in self.samples if begin <= sent < end]
            ok = [lat for lat in latencies if lat >= 0]
            out[phase] = {"requests": len(latencies), "errors": len(latencies) - len(ok),
                          "p50_ms": round(float(np.percentile(ok, 50)) * 1e3, 3) if ok else None,
                          "p99_ms": round(float(np.percentile(ok, 99)) * 1e3, 3) if ok else None}
        return out


def _visible_after(stubs, candidate: str, version: int) -> float:
    """Seconds until every replica answers SearchSimilar for ``candidate`` (it holds it)."""
    start = time.perf_counter()
    for stub in stubs:
        while True:
            try:
                stub.SearchSimilar(pb.SearchSimilarRequest(candidate_id=candidate, k=1, model_version=version),
                                   timeout=5)
                break
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND or time.perf_counter() - start > 10:
                    raise
                time.sleep(0.005)
    return time.perf_counter() - start


def churn(rng, n: int, batch: int) -> Iterator[Delta]:
    """Deltas of ``batch`` changes to a version of ``n`` candidates (ids "x<j>"): half new candidates
    ("new<j>", in order), a quarter updates and a quarter deletes of base candidates still present."""
    live = list(range(n))  # row numbers of base candidates still present
    new_count = 0
    while True:
        fresh = [f"new{new_count + j}" for j in range(batch // 2)]
        new_count += len(fresh)
        picks = rng.choice(len(live), batch // 2, replace=False)
        chosen = [live[p] for p in picks]
        updated, deleted = chosen[:batch // 4], chosen[batch // 4:]
        for p in sorted(picks[batch // 4:], reverse=True):
            live[p] = live[-1]
            live.pop()
        ids = fresh + [f"x{j}" for j in updated]
        vectors = rng.standard_normal((len(ids), DIM)).astype(np.float32) * 0.3
        yield Delta.make(ids, vectors, _attributes(rng, len(ids)), [f"x{j}" for j in deleted], dim=DIM)


def apply_gil_waits(index: CandidateIndex, deltas: list[Delta], tick_s: float = 0.0002) -> dict:
    """How late a thread beside the applier wakes from ``tick_s`` sleeps while ``deltas`` apply in process:
    its waits for the GIL. A search's gRPC path takes the GIL several times, each time a wait like these."""
    done = threading.Event()
    apply_s: list[float] = []

    def apply() -> None:
        for generation, delta in enumerate(deltas, index.catalogue_generation + 1):
            t0 = time.perf_counter()
            index.apply_catalogue([delta], generation)
            apply_s.append(time.perf_counter() - t0)
            time.sleep(0.05)
        done.set()

    late = []
    threading.Thread(target=apply, daemon=True).start()
    while not done.is_set():
        t0 = time.perf_counter()
        time.sleep(tick_s)
        late.append(time.perf_counter() - t0 - tick_s)
    late_ms = np.array(late) * 1e3
    return {"deltas": len(deltas), "apply_s_p50": round(float(np.median(apply_s)), 4), "wakes": len(late_ms),
            **{f"late_ms_{name}": round(float(np.percentile(late_ms, q)), 3)
               for name, q in (("p50", 50), ("p99", 99), ("p999", 99.9))},
            "late_ms_max": round(float(late_ms.max()), 3), "wakes_over_2ms": int((late_ms > 2).sum())}


def stream_deltas(fleet: Fleet, registry: Registry, version: int, rate: float, changes: int, batch: int,
                  stubs, rng, n: int) -> dict:
    """Streams deltas of ``batch`` changes (3/4 upserts) at ``rate`` upserts/s until ``changes`` are applied."""
    deltas = churn(rng, n, batch)
    applied, visibility, apply_s, failed = 0, [], [], 0
    start = time.perf_counter()
    while applied < changes:
        due = start + applied * 0.75 / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        delta = next(deltas)
        t0 = time.perf_counter()
        rollout = publish_delta(fleet, registry, version, delta)
        apply_s.append(time.perf_counter() - t0)
        failed += len(rollout.failed)
        visibility.append(_visible_after(stubs, str(delta.ids[batch // 2 - 1]), version))  # its last new candidate
        applied += len(delta.ids) + len(delta.deleted)
    elapsed = time.perf_counter() - start
    return {"changes": applied, "deltas": len(apply_s), "changes_per_delta": batch, "seconds": round(elapsed, 2),
            "changes_per_s": round(applied / elapsed, 1), "upserts_per_s": round(applied * 0.75 / elapsed, 1),
            "delta_publish_and_apply_s": {"p50": round(float(np.median(apply_s)), 4),
                                          "max": round(float(np.max(apply_s)), 4)},
            "visible_on_every_replica_after_return_s": {"max": round(float(np.max(visibility)), 4),
                                                        "p50": round(float(np.median(visibility)), 4)},
            "replicas_failed": failed}


def search_figures(phases: dict, qps: float) -> dict:
    """The report's ``searches_during_stream`` from ``SearchLoad.phases``: each phase's figures, their errors, and
    the p99 while the deltas streamed over the p99 of the steady phases before and after (None where a phase
    answered no search: its p99 is None)."""
    p99 = {p: phases[p]["p99_ms"] for p in ("steady", "upserts", "after")}
    searches = {"qps": qps, "errors": sum(p["errors"] for p in phases.values()), "p99_ms": p99,
                "requests": {p: v["requests"] for p, v in phases.items()}, "phases": phases}
    for other in ("steady", "after"):
        searches[f"p99_upserts_vs_{other}"] = (None if p99["upserts"] is None or p99[other] is None
                                               else round(p99["upserts"] / p99[other], 2))
    return searches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50k candidates, short phases (smoke test)")
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--qps", type=float, default=400.0)
    parser.add_argument("--upsert-rate", type=float, default=10_000.0,
                        help="upserts per second streamed (deletes come on top: a third as many)")
    parser.add_argument("--batch", type=int, default=4000, help="changes per delta")
    parser.add_argument("--churn", type=float, default=0.10, help="share of the catalogue changed in all")
    parser.add_argument("--phase-s", type=float, default=20.0,
                        help="steady search phases before and after the stream")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.candidates, args.qps, args.phase_s, args.upsert_rate = 50_000, 50.0, 1.0, 5000.0
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp:
        work = Path(tmp)
        registry = Registry(work / "registry", MODEL)
        t0 = time.perf_counter()
        manifest, queries = publish_version(registry, args.candidates)
        build_s = time.perf_counter() - t0
        version = manifest.version
        index = CandidateIndex.load(registry.version_dir(version), manifest)
        filters = filter_figures(index, queries)
        # In process, on a copy of its own (its deltas go to no log): deltas like the stream's, half as many.
        deltas = churn(np.random.default_rng(11), args.candidates, args.batch)
        gil_waits = apply_gil_waits(index, list(itertools.islice(
            deltas, max(1, int(args.churn * args.candidates) // args.batch // 2))))
        del index
        common = ["--registry", str(registry.root), "--model", MODEL, "--version", str(version)]
        replicas = [ServiceProcess("recsys-index-service", [*common, "--slot", slot], work / f"{slot}.log")
                    for slot in ("blue", "green")]
        load = fleet = None
        try:
            start_all(*replicas, timeout_s=900)
            channels = [grpc.insecure_channel(r.address) for r in replicas]
            stubs = [pb_grpc.IndexServiceStub(c) for c in channels]
            fleet = Fleet.connect([r.admin_address for r in replicas], [])
            load = SearchLoad(replicas[0].address, queries, args.qps).start()
            load.mark("warmup")
            time.sleep(args.phase_s / 2)
            load.mark("steady")
            time.sleep(args.phase_s)
            load.mark("upserts")
            # Where the machine's cores go during the stream: each process's CPU seconds over its wall time.
            pids = {"searched_replica": replicas[0].proc.pid, "other_replica": replicas[1].proc.pid,
                    "search_load_generator": load._process.pid, "delta_writer_and_client": os.getpid()}
            cpu_before = {name: cpu_seconds([pid]) for name, pid in pids.items()}
            stream = stream_deltas(fleet, registry, version, args.upsert_rate, int(args.churn * args.candidates),
                                   args.batch, stubs, rng, args.candidates)
            stream["cpu_cores_used"] = {name: round((cpu_seconds([pid]) - cpu_before[name]) / stream["seconds"], 2)
                                        for name, pid in pids.items()}
            load.mark("after")
            time.sleep(args.phase_s)
            load.stop()
            searches = search_figures(load.phases(), args.qps)
            # A restarted replica replays the log: it must answer exactly as the one that applied it live.
            replicas[1].stop()
            t0 = time.perf_counter()
            replicas[1].start(timeout_s=900)
            restart_s = time.perf_counter() - t0
            stubs[1] = pb_grpc.IndexServiceStub(channels[1])
            same = 0
            for q in queries[:200]:
                a, b = (s.Search(pb.SearchRequest(vector=q.tolist(), k=10, model_version=version), timeout=10)
                        for s in stubs)
                same += [(c.candidate_id, c.score) for c in a.candidates] == \
                    [(c.candidate_id, c.score) for c in b.candidates] and \
                    a.catalogue_generation == b.catalogue_generation
            for channel in channels:
                channel.close()
        finally:
            if load is not None and load._process.is_alive():
                load._process.terminate()
            if fleet is not None:
                fleet.close()
            for replica in replicas:
                replica.stop()
        replayed = CandidateIndex.load(registry.version_dir(version), manifest)
        churned = {"candidates": replayed.num_candidates, "generation": replayed.catalogue_generation,
                   "recall_at_10": round(replayed.recall(queries[:300], 10), 4),
                   "recall_at_10_filter_10%": round(replayed.recall(queries[:300], 10, FILTERS["10%"]), 4)}
    result = {"candidates": args.candidates, "dim": DIM, "version_build_s": round(build_s, 1),
              "index": {"kind": manifest.index.kind, "leaves_to_search": manifest.index.num_leaves_to_search,
                        "num_leaves": manifest.index.num_leaves, "reorder": manifest.index.reorder,
                        "recall_at_10_at_publish": manifest.index.recall_at_10},
              "filters": filters, "apply_gil_waits": gil_waits, "stream": stream, "searches_during_stream": searches,
              "after_churn": churned,
              "restarted_replica": {"restart_s": round(restart_s, 1), "identical_answers": same, "of": 200}}
    print(write_json(result, args.out))


if __name__ == "__main__":
    main()
