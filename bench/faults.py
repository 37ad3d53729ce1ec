"""Fault matrix: what the services do when their dependencies fail or a caller
attacks them, under load, measured.

Stack: a small model trained by ``recsys-train`` with a signing key, one index
slot and one query replica (both verifying signatures), a private Redis, all on
loopback. A closed loop of Recommend calls from a few threads runs through each
scenario, half of them cache misses (an exclusion of an id no catalogue
holds, new each time, changes the cache key and not the answer); every OK
answer is compared with the healthy stack's top-K for that customer, taken
before any fault (the index is exact, so a top-k is its first k): a difference
is a wrong answer. Each scenario reports the
status codes seen, wrong answers and its own figures, and the table in
docs/RELIABILITY.md is this script's ``--markdown`` output.

    python -m bench.faults [--quick] [--out FILE] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from bench.common import git_commit, machine_info, rss_mb
from model_registry import Registry
from model_registry import manifest as files
from protos.recsys.v1 import admin_pb2 as apb
from protos.recsys.v1 import admin_pb2_grpc as apb_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.storage.cache import cache_key
from tests.processes import RedisProcess, ServiceProcess, console_script, is_serving, start_all, wait_until

MODEL = "faults"
INDEX_TIMEOUT_S = 1.0  # the query service's index deadline in this stack
CUSTOMERS = [f"c{i:06d}" for i in range(200)] + [f"stranger-{i}" for i in range(20)]  # known, and fallbacks
TOP_K = 50  # the reference answer's length; requests ask for k in 1..TOP_K
ADVERSARIAL_CACHE_MB = 32  # the local cache the adversarial mix's replica may fill
# The query replicas scenarios start of their own beside the stack's: (log name, extra flags).
DRAIN_REPLICA = ("query-drain", "--shutdown-drain-s", "1.0")
ROLLING_REPLICAS = [(f"query-roll-{i}", "--shutdown-drain-s", "1.0") for i in range(2)]
ADVERSARIAL_REPLICA = ("query-adversarial", "--local-cache-mb", str(ADVERSARIAL_CACHE_MB))
QUICK_ATTACK_S = 5.0  # the adversarial mix's attack in a smoke test (a full run's is 15 scenario lengths)
# A client of several query replicas as gRPC offers it: round robin over the replicas whose health says
# SERVING (client-side health checking), UNAVAILABLE retried on another one, CANCELLED too (a replica's refusal
# past --max-pending-calls reads so; gRPC never retries a call its own client cancelled), and a short reconnect
# backoff so that a restarted replica is back in the rotation within a fraction of a second.
REPLICATED_CLIENT = [("grpc.enable_retries", 1), ("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500),
                     ("grpc.service_config", json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{"name": [{"service": "recsys.v1.QueryService"}],
                      "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s",
                                      "backoffMultiplier": 2,
                                      "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"]}}]}))]


class Load:
    """Closed-loop Recommend calls from ``threads`` threads, each answer checked
    against ``reference``; ``stop_when_draining`` makes each caller stop, as a
    client behind a health-checking balancer would, once health says NOT_SERVING."""

    def __init__(self, address: str, reference: dict[str, list[str]], threads: int = 4,
                 stop_when_draining: bool = False, channel_options: list[tuple] | None = None):
        self.address, self.reference = address, reference
        self._channel_options = channel_options
        self.codes: Counter = Counter()
        self.wrong = 0
        self.latencies_ms: list[float] = []
        self.failed_latencies_ms: list[float] = []
        self.failure_messages: Counter = Counter()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        self._stop_when_draining = stop_when_draining
        self._lock = threading.Lock()

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with grpc.insecure_channel(self.address, options=self._channel_options) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            while not self._stop.is_set():
                if self._stop_when_draining and not is_serving(self.address):
                    self._draining.set()
                    return
                customer = CUSTOMERS[rng.integers(len(CUSTOMERS))]
                k = int(rng.integers(1, TOP_K + 1))
                miss = [f"nonce-{seed}-{rng.integers(1 << 62)}"] if rng.random() < 0.5 else []
                start = time.perf_counter()
                try:
                    response = stub.Recommend(pb.RecommendRequest(customer_id=customer, k=k,
                                                                  exclude_candidate_ids=miss), timeout=5)
                    code, ids = "OK", [c.candidate_id for c in response.candidates]
                except grpc.RpcError as e:
                    code, ids = e.code().name, None
                    with self._lock:
                        self.failure_messages[f"{code}: {e.details()}"[:160]] += 1
                elapsed_ms = (time.perf_counter() - start) * 1000
                with self._lock:
                    self.codes[code] += 1
                    self.latencies_ms.append(elapsed_ms)
                    if ids is None:
                        self.failed_latencies_ms.append(elapsed_ms)
                    elif ids != self.reference[customer][:k]:
                        self.wrong += 1

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms or [0.0])
        return {"requests": sum(self.codes.values()), "codes": dict(self.codes), "wrong": self.wrong,
                "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "p99_corrected_ms": corrected_p99_ms(lat),
                "slowest_failure_ms": round(max(self.failed_latencies_ms), 1) if self.failed_latencies_ms else None,
                "failures": dict(self.failure_messages.most_common(3))}


def corrected_p99_ms(latencies_ms: np.ndarray) -> float:
    """The p99 a caller sending at the loop's own pace would see. A closed loop times only the calls it sent, so a
    stall delays just the few in flight: against a server stalled 200 ms every 2 s its p99 read 18 ms, an open loop's
    190 ms. HdrHistogram's correction adds the calls each thread would have sent meanwhile, one per expected
    interval (taken here as the scenario's median latency, a thread's pace), each as late as the stall left it;
    the percentile is taken as ``p99_ms``'s, so the two differ by the held calls alone (those faster than the p99
    can lower it a little: 9.1 -> 8.9 ms in one run)."""
    interval = float(np.median(latencies_ms))
    if interval <= 0:
        return round(float(np.percentile(latencies_ms, 99)), 1)
    held = [np.arange(v - interval, interval * (1 - 1e-9), -interval) for v in latencies_ms if v >= 2 * interval]
    return round(float(np.percentile(np.concatenate([latencies_ms, *held]), 99)), 1)


class Stack:
    """Redis, one index slot and one query replica over a signed registry, and
    the scenarios' own query replicas named in ``spares`` (``(name, *flags)``,
    as ``replicas`` asks for them), started with it."""

    def __init__(self, work: Path, spares: Sequence[tuple[str, ...]] = ()):
        self.work = work
        self.registry = Registry(work / "registry", MODEL)
        key = Ed25519PrivateKey.generate()
        (work / "signing.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        (work / "signing.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                                         PublicFormat.SubjectPublicKeyInfo))
        (work / "cache.key").write_text(os.urandom(16).hex())
        subprocess.run([console_script("recsys-train"), "--dataset", "synthetic", "--registry", str(self.registry.root),
                        "--model", MODEL, "--synthetic-customers", "300", "--synthetic-candidates", "500",
                        "--synthetic-interactions", "8000", "--epochs", "2", "--embedding-dim", "16",
                        "--signing-key-file", str(work / "signing.pem"), "--tune-budget-s", "0", "--quiet"],
                       check=True, capture_output=True, timeout=600)
        self.registry.set_slot_version("blue", 1)
        self.registry.set_current(1)
        self.common = ["--registry", str(self.registry.root), "--model", MODEL,
                       "--manifest-public-key", str(work / "signing.pub")]
        self.redis = RedisProcess().start()
        self.index = ServiceProcess("recsys-index-service", [*self.common, "--slot", "blue"], work / "index.log")
        self.query = self.query_replica("query")
        self.spares = {spec[0]: self.query_replica(*spec) for spec in spares}
        start_all(self.index, self.query, *self.spares.values())

    def query_replica(self, name: str, *extra: str) -> ServiceProcess:
        return ServiceProcess("recsys-query-service",
                              [*self.common, "--index-address", self.index.address, "--redis-url", self.redis.url,
                               "--cache-key-file", str(self.work / "cache.key"),
                               "--index-timeout-s", str(INDEX_TIMEOUT_S), *extra], self.work / f"{name}.log")

    def replicas(self, *specs: tuple[str, ...]) -> list[ServiceProcess]:
        """SERVING query replicas of a scenario's own, one per ``(name, *flags)``:
        the spare started with the stack, else one started now (together)."""
        out = [self.spares.pop(spec[0], None) or self.query_replica(*spec) for spec in specs]
        start_all(*(replica for replica in out if replica.proc is None))
        return out

    def reference(self) -> dict[str, list[str]]:
        with grpc.insecure_channel(self.query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            return {c: [x.candidate_id for x in stub.Recommend(pb.RecommendRequest(customer_id=c, k=TOP_K),
                                                               timeout=10).candidates] for c in CUSTOMERS}


    def stop(self) -> None:
        for process in (self.query, self.index, *self.spares.values()):
            process.stop()
        self.redis.stop()


def _signal(process, sig: int) -> None:
    os.kill(process.proc.pid, sig)


def redis_killed(stack: Stack, reference, seconds: float) -> dict:
    with Load(stack.query.address, reference) as load:
        time.sleep(seconds / 3)
        stack.redis.proc.kill()
        stack.redis.proc.wait(10)
        time.sleep(seconds / 3)
        stack.redis.start()
        time.sleep(seconds / 3)
    return load.summary()


def redis_paused(stack: Stack, reference, seconds: float) -> dict:
    with Load(stack.query.address, reference) as load:
        time.sleep(seconds / 3)
        _signal(stack.redis, signal.SIGSTOP)
        time.sleep(seconds / 3)
        _signal(stack.redis, signal.SIGCONT)
        time.sleep(seconds / 3)
    return load.summary()


def redis_values_forged(stack: Stack, reference, seconds: float) -> dict:
    """Whoever can write to Redis writes a plausible answer under every key the
    service will look up (they are predictable), and keeps overwriting what it writes."""
    raw = redis.Redis.from_url(stack.redis.url)
    fake = json.dumps([[f"fake-{i}" for i in range(TOP_K)], [1.0] * TOP_K, "model"])
    identity = stack.registry.manifest(1).digest  # readable by anyone who can read the registry
    with raw.pipeline(transaction=False) as pipe:
        for customer in CUSTOMERS:
            for k in range(1, TOP_K + 1):
                pipe.set(cache_key(MODEL, 1, customer, k, frozenset(), identity=identity), fake, ex=300)
        pipe.execute()
    forged = len(CUSTOMERS) * TOP_K
    with Load(stack.query.address, reference) as load:
        deadline = time.monotonic() + seconds + 2.0  # beyond the 2 s a Redis error (the pause) turns the cache off
        while time.monotonic() < deadline:
            for key in raw.scan_iter("recsys:*"):
                raw.set(key, fake, ex=300)
                forged += 1
            time.sleep(0.05)
    raw.close()
    return {**load.summary(), "values_forged": forged}


def index_hung(stack: Stack, reference, seconds: float) -> dict:
    with Load(stack.query.address, reference) as load:
        time.sleep(1.0)
        _signal(stack.index, signal.SIGSTOP)
        time.sleep(seconds)
        _signal(stack.index, signal.SIGCONT)
        time.sleep(2.0)
    return {**load.summary(), "index_deadline_s": INDEX_TIMEOUT_S}


def index_killed(stack: Stack, reference, seconds: float) -> dict:
    with Load(stack.query.address, reference) as load:
        time.sleep(1.0)
        stack.index.kill()
        time.sleep(seconds)
        restarted = time.monotonic()
        stack.index.start()
        probe = pb.RecommendRequest(customer_id=CUSTOMERS[0], k=10)

        def answers() -> bool:
            with grpc.insecure_channel(stack.query.address) as channel:
                try:
                    return len(pb_grpc.QueryServiceStub(channel).Recommend(probe, timeout=2).candidates) == 10
                except grpc.RpcError:
                    return False

        wait_until(answers, 30, "the query service to reach the restarted slot", interval_s=0.1)
        recovered_s = time.monotonic() - restarted
        time.sleep(1.0)
    return {**load.summary(), "recovered_s_after_slot_serving": round(recovered_s, 2)}


def amplification(stack: Stack, reference, seconds: float) -> dict:
    """One BatchSearch asking 10,000 queries x k = 1000 of 64 dimensions (the
    2.65 MB request of the hardening issue), straight to the index, sent as
    bytes made beforehand so that the time is the server's and the wire's."""
    payload = pb.BatchSearchRequest(queries=[pb.SearchRequest(vector=[0.1] * 64, k=1000)] * 10_000).SerializeToString()
    with Load(stack.query.address, reference) as load, grpc.insecure_channel(stack.index.address) as channel:
        send = channel.unary_unary("/recsys.v1.IndexService/BatchSearch")
        with contextlib.suppress(grpc.RpcError):  # connect before the clock starts (an empty batch is refused)
            send(b"", timeout=10)
        time.sleep(seconds / 2)
        start = time.perf_counter()
        try:
            send(payload, timeout=30)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        refused_ms = (time.perf_counter() - start) * 1000
        time.sleep(seconds / 2)
    return {**load.summary(), "attack": code, "attack_answered_ms": round(refused_ms, 1),
            "request_bytes": len(payload)}


def garbage_bytes(stack: Stack, reference, seconds: float) -> dict:
    rng = np.random.default_rng(0)
    codes: Counter = Counter()
    with Load(stack.query.address, reference) as load, grpc.insecure_channel(stack.query.address) as channel:
        send = channel.unary_unary("/recsys.v1.QueryService/Recommend")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                send(rng.bytes(int(rng.integers(1, 200))), timeout=5)
                codes["OK"] += 1
            except grpc.RpcError as e:
                codes[e.code().name] += 1
    return {**load.summary(), "attack_codes": dict(codes)}


def tampered_version(stack: Stack, reference, seconds: float) -> dict:
    """Version 2: version 1 with candidate ids shifted by one and every sha256 recomputed,
    its old signature kept; then version 3 with a truncated manifest. Both offered to the replica."""
    source = stack.registry.version_dir(1)
    shifted, truncated = stack.registry.version_dir(2), stack.registry.version_dir(3)
    for target in (shifted, truncated):
        shutil.copytree(source, target)
    ids = np.load(shifted / files.CANDIDATE_IDS_FILE)
    np.save(shifted / files.CANDIDATE_IDS_FILE, np.roll(ids, 1), allow_pickle=False)
    manifest = json.loads((shifted / files.MANIFEST_FILE).read_text())
    manifest["version"] = 2
    manifest["files"] = files.checksum_tree(shifted)
    (shifted / files.MANIFEST_FILE).write_text(json.dumps(manifest))
    (truncated / files.MANIFEST_FILE).write_text((truncated / files.MANIFEST_FILE).read_text()[:200])
    outcomes = {}
    with Load(stack.query.address, reference) as load, grpc.insecure_channel(stack.query.admin_address) as channel:
        time.sleep(seconds / 3)
        for version in (2, 3):
            try:
                apb_grpc.AdminServiceStub(channel).LoadVersion(apb.LoadVersionRequest(version=version), timeout=30)
                outcomes[version] = "OK"
            except grpc.RpcError as e:
                outcomes[version] = f"{e.code().name}: {e.details()[:120]}"
        time.sleep(seconds / 3)
    return {**load.summary(), "shifted_ids_load": outcomes[2], "truncated_manifest_load": outcomes[3]}


def query_sigterm(stack: Stack, reference, seconds: float) -> dict:
    """A second replica with a drain window gets SIGTERM while callers are busy on it."""
    (replica,) = stack.replicas(DRAIN_REPLICA)
    with Load(replica.address, reference, stop_when_draining=True) as load:
        time.sleep(seconds)
        replica.proc.send_signal(signal.SIGTERM)
        exit_code = replica.proc.wait(30)
    return {**load.summary(), "exit_code": exit_code}


def rolling_restart(stack: Stack, reference, seconds: float) -> dict:
    """Two query replicas behind one replicated client; each in turn gets SIGTERM
    (1 s drain), exits and is started again while the other serves; the next one
    goes 1 s after the previous one reports SERVING (a readiness delay, as
    Kubernetes' minReadySeconds gives, so the client has reconnected to it)."""
    replicas = stack.replicas(*ROLLING_REPLICAS)
    target = "ipv4:" + ",".join(replica.address for replica in replicas)
    exit_codes = []
    try:
        with Load(target, reference, channel_options=REPLICATED_CLIENT) as load:
            for replica in replicas:
                time.sleep(seconds / 3)
                replica.proc.send_signal(signal.SIGTERM)
                exit_codes.append(replica.proc.wait(30))
                replica.start()
                time.sleep(1.0)
            time.sleep(seconds / 3)
    finally:
        with ThreadPoolExecutor(len(replicas)) as pool:  # each stop waits out its drain window: together
            list(pool.map(ServiceProcess.stop, replicas))
    return {**load.summary(), "exit_codes": exit_codes}


def adversarial_mix(stack: Stack, reference, seconds: float, attack_s: float | None = None) -> dict:
    """For ``attack_s`` (by default 15x the scenario length: 60 s in a full run),
    four attackers send distinct k = 1000 Recommends (~110 KB of result each,
    every one a new cache key) and BatchSearches at the limits to a replica whose
    local cache may hold 32 MiB, beside the usual callers; its memory is sampled throughout."""
    attack_s = 15 * seconds if attack_s is None else attack_s
    (replica,) = stack.replicas(ADVERSARIAL_REPLICA)
    stop = threading.Event()
    codes: Counter = Counter()

    def attack(seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        dim = stack.registry.manifest(1).embedding_dim
        batch = pb.BatchSearchRequest(queries=[pb.SearchRequest(vector=[0.1] * dim, k=97)] * 1024)  # ~99,000 results
        with grpc.insecure_channel(replica.address) as q, grpc.insecure_channel(stack.index.address) as i:
            query, index = pb_grpc.QueryServiceStub(q), pb_grpc.IndexServiceStub(i)
            while not stop.is_set():
                try:
                    if rng.random() < 0.9:
                        query.Recommend(pb.RecommendRequest(
                            customer_id=CUSTOMERS[rng.integers(len(CUSTOMERS))], k=1000,
                            exclude_candidate_ids=[f"attack-{rng.integers(1 << 62)}"]), timeout=10)
                    else:
                        index.BatchSearch(batch, timeout=10)
                    codes["OK"] += 1
                except grpc.RpcError as e:
                    codes[e.code().name] += 1

    before = rss_mb(replica.proc.pid)["rss_mb"]
    samples = []
    attackers = [threading.Thread(target=attack, args=(i,), daemon=True) for i in range(4)]
    try:
        with Load(replica.address, reference) as load:
            for thread in attackers:
                thread.start()
            deadline = time.monotonic() + attack_s
            while time.monotonic() < deadline:
                samples.append(rss_mb(replica.proc.pid)["rss_mb"])
                time.sleep(0.5)
            stop.set()
            for thread in attackers:
                thread.join(30)
    finally:
        replica.stop()
    return {**load.summary(), "attack_codes": dict(codes), "local_cache_mb": ADVERSARIAL_CACHE_MB,
            "rss_mb_before": before, "rss_mb_peak": max(samples), "rss_mb_end": samples[-1],
            "attack_s": attack_s}


SCENARIOS = [
    # (name, function, what is expected)
    ("Redis killed, restarted", redis_killed, "0 failed, 0 wrong (cache misses)"),
    ("Redis paused (SIGSTOP)", redis_paused, "0 failed, 0 wrong (timeouts are misses)"),
    ("Redis values forged", redis_values_forged, "0 wrong (bad HMAC: misses, overwritten)"),
    ("index slot hung (SIGSTOP)", index_hung, f"failures UNAVAILABLE within the {INDEX_TIMEOUT_S:g} s index deadline"),
    ("index slot killed, restarted", index_killed, "fast UNAVAILABLE for known customers, fallbacks served, recovery"),
    ("BatchSearch 10,000 x k=1000", amplification, "refused INVALID_ARGUMENT at once; others unaffected"),
    ("garbage request bytes", garbage_bytes, "INVALID_ARGUMENT, no UNKNOWN, servers up"),
    ("tampered version offered", tampered_version, "refused FAILED_PRECONDITION; live version keeps serving"),
    ("query replica SIGTERM (drain)", query_sigterm, "0 failed for callers that follow health"),
    ("rolling restart of two query replicas", rolling_restart,
     "0 failed for a client balancing over healthy replicas with retries"),
    ("adversarial mix (k = 1000 misses, BatchSearch at the limits)", adversarial_mix,
     f"memory within the local cache's {ADVERSARIAL_CACHE_MB} MiB over the replica's start; others served"),
]


def markdown(results: list[dict]) -> str:
    """The matrix as a Markdown table (the one in docs/RELIABILITY.md)."""
    header = ["scenario", "expected", "requests", "codes", "wrong answers", "p99 ms", "p99 ms, corrected",
              "slowest failure ms", "details"]
    shown = set(header[:1]) | {"expected", "requests", "codes", "wrong", "p99_ms", "p99_corrected_ms",
                               "slowest_failure_ms"}
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        details = "; ".join(f"{k}: {v}" for k, v in r.items() if k not in shown and v not in ({}, None))
        codes = ", ".join(f"{c} {n}" for c, n in sorted(r["codes"].items()))
        cells = [r["scenario"], r["expected"], r["requests"], codes, r["wrong"], r["p99_ms"], r["p99_corrected_ms"],
                 "-" if r["slowest_failure_ms"] is None else r["slowest_failure_ms"], details]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter scenarios (smoke test)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--markdown", type=Path, help="write the matrix as a Markdown table here")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 4.0
    # A smoke test starts every replica with the stack (TensorFlow's imports side by side take less than one by
    # one), and shortens the attack: the mix's figures need its minute, its errors and wrong answers show sooner.
    spares = [DRAIN_REPLICA, *ROLLING_REPLICAS, ADVERSARIAL_REPLICA] if args.quick else []
    options = {adversarial_mix: {"attack_s": QUICK_ATTACK_S}} if args.quick else {}
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        stack = Stack(Path(tmp), spares)
        try:
            reference = stack.reference()
            results = []
            for name, scenario, expected in SCENARIOS:
                measured = scenario(stack, reference, seconds, **options.get(scenario, {}))
                results.append({"scenario": name, "expected": expected, **measured})
                print(f"{name}: {measured}", flush=True, file=sys.stderr)
        finally:
            stack.stop()
    report = {"benchmark": "faults", "commit": git_commit(), "machine": machine_info(), "seconds": seconds,
              "index_timeout_s": INDEX_TIMEOUT_S, "scenarios": results,
              "totals": {"wrong": sum(r["wrong"] for r in results),
                         "unknown_or_internal": sum(r["codes"].get(c, 0) + r.get("attack_codes", {}).get(c, 0)
                                                    for r in results for c in ("UNKNOWN", "INTERNAL"))}}
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text)
    if args.markdown:
        args.markdown.write_text(markdown(results))
    print(text)


if __name__ == "__main__":
    main()
