"""``recsys-query-service --workers 2``: two real worker processes on one port
behind a supervisor that holds the admin plane and /metrics (serving/rpc/workers.py)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import urllib.request

import grpc
import pytest

from model_registry import Registry
from protos.recsys.v1 import admin_pb2 as apb
from protos.recsys.v1 import admin_pb2_grpc as apb_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from protos.recsys.v1.versions_pb2 import VERSION_STATE_ROLLBACK_TARGET
from serving.rpc.workers import RESTART_DELAY_S
from tests.integration.conftest import MODEL, index_slot, query_replica
from tests.integration.test_admin import AUTH, copy_version, token_file
from tests.processes import alive, children, free_port, is_serving, start_all, wait_until

WORKERS = 2
# A worker silent this long is killed (the hung-worker test below keeps one stopped for ~10 s, and it must survive).
WORKER_HUNG_S = 20


@pytest.fixture(scope="module")
def registry(trained_registry, tmp_path_factory) -> Registry:
    root = tmp_path_factory.mktemp("workers-registry")
    shutil.copytree(trained_registry / MODEL, root / MODEL)
    registry = Registry(root, MODEL)
    copy_version(registry, 1, 2)
    return registry


@pytest.fixture(scope="module")
def pool(registry, redis_server, tmp_path_factory):
    """(index slot holding 1 and 2's slot, the query pool, its metrics port); stopped after, and
    the pool's workers checked to have stopped with it. The pool caches in Redis, without --cache-key-file."""
    logs = tmp_path_factory.mktemp("workers-logs")
    common = ["--admin-token-file", str(token_file(logs))]
    blue = index_slot(registry.root, "blue", logs / "blue.log", *common)
    green = index_slot(registry.root, "green", logs / "green.log", *common)
    metrics_port = free_port()
    query = query_replica(registry.root, [blue, green], logs / "query.log", *common, "--workers", str(WORKERS),
                          "--metrics-port", str(metrics_port), "--redis-url", redis_server.url,
                          "--worker-hung-s", str(WORKER_HUNG_S))
    start_all(blue, green, query)
    try:
        # The data port answers as soon as one worker serves; the admin port's health waits for all.
        wait_until(lambda: is_serving(query.admin_address), 60, "every worker to serve")
        yield blue, green, query, metrics_port
    finally:
        workers = worker_pids(query) if query.proc is not None else []
        query.stop()  # SIGTERM: passed on to every worker
        green.stop()
        blue.stop()
    wait_until(lambda: not any(alive(p) for p in workers), 30, "the workers to exit after the supervisor's SIGTERM")


def admin(service):
    return apb_grpc.AdminServiceStub(grpc.insecure_channel(service.admin_address))


def worker_pids(service) -> list[int]:
    return children(service.proc.pid)


def workers_live(service) -> list[int] | None:
    """Each worker's live version; None while a worker does not answer (restarting)."""
    try:
        reply = admin(service).GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)
    except grpc.RpcError:
        return None
    return [w.live_version for w in reply.workers]


def new_connection(address: str) -> grpc.Channel:
    """A channel on a connection of its own: channels to one address share gRPC's global pool of connections, and
    a closed channel's lingers there for the next (16 channels one after another made 6-16 connections here, 6 under
    load, where one run of the Redis test below sent all its calls to one worker)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def recommend_on_new_channels(service, calls: int) -> set[int]:
    """Recommend over a new channel (connection) per call: the kernel spreads
    connections, not calls. Returns the model versions answered."""
    versions = set()
    for i in range(calls):
        with new_connection(service.address) as channel:
            reply = pb_grpc.QueryServiceStub(channel).Recommend(
                pb.RecommendRequest(customer_id=f"c{i:06d}", k=5), timeout=10)
        assert len(reply.candidates) == 5
        versions.add(reply.model_version)
    return versions


def metric_samples(port: int, name: str) -> dict[str, float]:
    """worker label -> value of the samples called ``name`` (summed over other labels)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and 'method="Recommend"' in line:
            worker = line.split('worker="')[1].split('"')[0]
            out[worker] = out.get(worker, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_workers_share_the_port_and_metrics_name_each(pool):
    _, _, query, metrics_port = pool
    assert len(worker_pids(query)) == WORKERS
    assert recommend_on_new_channels(query, 24) == {1}
    calls = metric_samples(metrics_port, "recsys_rpc_latency_seconds_count")
    # 24 connections over 2 workers: each gets some (all on one: chance 2 * 2**-24).
    assert set(calls) == {"0", "1"} and all(n > 0 for n in calls.values()) and sum(calls.values()) >= 24


def test_admin_calls_reach_every_worker_and_failures_name_the_worker(pool):
    _, green, query, _ = pool
    with pytest.raises(grpc.RpcError) as err:  # the supervisor's admin port keeps the token
        admin(query).GetStatus(apb.GetStatusRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as err:
        admin(query).LoadVersion(apb.LoadVersionRequest(version=7), metadata=AUTH, timeout=60)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "failed on worker 0 of 2" in err.value.details() and "not published" in err.value.details()
    assert "workers [1] were not asked" in err.value.details()  # loads go one worker at a time

    admin(green).LoadVersion(apb.LoadVersionRequest(version=2), metadata=AUTH, timeout=60)
    reply = admin(query).LoadVersion(apb.LoadVersionRequest(version=2), metadata=AUTH, timeout=60)
    assert len(reply.workers) == WORKERS
    assert all(sorted(v.version for v in w.versions) == [1, 2] for w in reply.workers)
    reply = admin(query).Promote(apb.PromoteRequest(version=2), metadata=AUTH, timeout=30)
    assert reply.live_version == 2 and [w.live_version for w in reply.workers] == [2] * WORKERS
    assert recommend_on_new_channels(query, 16) == {2}


def test_a_hung_worker_shows_in_the_pools_status_and_admin_calls_name_it(pool):
    """A worker that does not answer shows as holding nothing, whether it is being replaced or hung
    (here stopped): the pool's status stays readable within the caller's deadline, and an admin call
    fails in time to name the worker and say that the others took it."""
    _, _, query, _ = pool
    hung = worker_pids(query)[-1]
    os.kill(hung, signal.SIGSTOP)
    try:
        started = time.monotonic()
        reply = admin(query).GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)
        assert sorted(w.live_version for w in reply.workers) == [0, 2] and reply.live_version == 2
        assert time.monotonic() - started < 9
        with pytest.raises(grpc.RpcError) as err:
            admin(query).Promote(apb.PromoteRequest(version=2), metadata=AUTH, timeout=5)
        assert "Promote failed on worker" in err.value.details() and "took it" in err.value.details()
    finally:
        os.kill(hung, signal.SIGCONT)
    wait_until(lambda: is_serving(query.admin_address), 60, "every worker to serve again")


def test_a_dead_worker_is_restarted_at_the_pools_version_and_callers_never_see_it(pool, registry):
    _, _, query, _ = pool
    assert registry.current_version() == 1  # the pool was promoted to 2 by admin calls alone (test above)
    outcomes: list[tuple[float, str | int]] = []  # (when, the model version or the failure's status code)
    done = threading.Event()

    def call_on_new_channels() -> None:
        i = 0
        while not done.is_set():
            with new_connection(query.address) as channel:
                try:
                    reply = pb_grpc.QueryServiceStub(channel).Recommend(
                        pb.RecommendRequest(customer_id=f"c{i:06d}", k=5), timeout=10)
                    outcomes.append((time.monotonic(), reply.model_version))
                except grpc.RpcError as e:
                    outcomes.append((time.monotonic(), e.code().name))
            i += 1

    caller = threading.Thread(target=call_on_new_channels)
    caller.start()
    try:
        victim = worker_pids(query)[0]
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        # While it is replaced, the pool's status answers, showing the worker holding nothing.
        wait_until(lambda: sorted(workers_live(query) or []) == [0, 2], 30,
                   "the pool's status to show the killed worker holding nothing", interval_s=0.2)
        # Restarted at what its sibling serves (2), not CURRENT (1).
        wait_until(lambda: victim not in worker_pids(query) and workers_live(query) == [2] * WORKERS,
                   120, "the dead worker to be replaced at version 2", interval_s=0.5)
        wait_until(lambda: is_serving(query.admin_address), 60, "every worker to serve again")
        # Its start-up loads the rollback target (1) first, then 2: nothing loads 2 into it a second time.
        assert "loading and promoting" not in query.log_path.read_text()
        # The new worker takes connections only once it serves: calls keep spreading over both.
        before = len(outcomes)
        wait_until(lambda: len(outcomes) >= before + 16, 60, "calls after the restart")
    finally:
        done.set()
        caller.join()
    # The calls the killed process held fail (its accept queue is reset); once it is gone the kernel
    # gives its sibling every connection, and the replacement none before it serves, at version 2.
    late = [(round(t - killed, 3), outcome) for t, outcome in outcomes if t > killed + RESTART_DELAY_S]
    assert len(late) > 16 and {outcome for _, outcome in late} == {2}, [x for x in late if x[1] != 2][:10]
    assert {outcome for _, outcome in outcomes if isinstance(outcome, int)} == {2}
    assert recommend_on_new_channels(query, 16) == {2}
    # The replacement holds its siblings' rollback target too, so the pool can still roll back.
    reply = admin(query).GetStatus(apb.GetStatusRequest(), metadata=AUTH, timeout=10)
    rollback_target = (1, VERSION_STATE_ROLLBACK_TARGET)
    assert all(rollback_target in {(v.version, v.state) for v in w.versions} for w in reply.workers)
    reply = admin(query).Rollback(apb.RollbackRequest(), metadata=AUTH, timeout=30)
    assert [w.live_version for w in reply.workers] == [1] * WORKERS
    assert recommend_on_new_channels(query, 16) == {1}


def cache_events(port: int) -> dict[tuple[str, str], float]:
    """(worker, event) -> recsys_cache_events_total."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("recsys_cache_events_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1:line.index("}")].split(","))
            out[labels["worker"].strip('"'), labels["event"].strip('"')] = float(line.rsplit(" ", 1)[1])
    return out


def test_workers_share_redis_entries_without_a_cache_key_file(pool):
    """The supervisor hands its workers one random key (none was given): a result one worker wrote to Redis
    is a hit on its sibling, the restarted one included (test above), not an invalid entry; and the
    pool warns once that its key is its own, not once per worker."""
    _, _, query, metrics_port = pool
    before = cache_events(metrics_port)
    request = pb.RecommendRequest(customer_id="c000001", k=7)  # k=7: a key no other test wrote
    with grpc.insecure_channel(query.address) as channel:
        pb_grpc.QueryServiceStub(channel).Recommend(request, timeout=10)
    time.sleep(1.0)  # the write waits for others to share its pipeline
    for _ in range(16):  # 16 connections: both workers take some (all on one: chance 2**-15)
        with new_connection(query.address) as channel:
            pb_grpc.QueryServiceStub(channel).Recommend(request, timeout=10)
    after = cache_events(metrics_port)
    grew = {key: value - before.get(key, 0.0) for key, value in after.items() if value > before.get(key, 0.0)}
    assert grew.get(("0", "hit"), 0) + grew.get(("1", "hit"), 0) >= 1, grew
    assert not any(event == "invalid" for _, event in grew), grew
    assert query.log_path.read_text().count("no --cache-key-file") == 1


def test_a_killed_supervisor_takes_its_workers_with_it(pool, registry, tmp_path):
    blue = pool[0]
    query = query_replica(registry.root, [blue], tmp_path / "query.log", "--workers", str(WORKERS)).start()
    workers = worker_pids(query)
    assert len(workers) == WORKERS
    query.kill()  # SIGKILL: nothing passes SIGTERM on but the kernel (the workers' parent-death signal)
    wait_until(lambda: not any(alive(p) for p in workers), 30, "the workers to exit after the supervisor's SIGKILL")
