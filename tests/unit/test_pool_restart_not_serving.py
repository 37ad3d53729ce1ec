"""A ``--workers`` supervisor whose replaced worker has loaded its versions but does not serve (no index
holds them: the index is down): the pool passes admin calls on to it at once, rather than refusing every
call for as long as it waits for the worker to serve (ALIGN_TIMEOUT_S, 300 s); a replacement still loading
is not aligned beside its loads. The harness of tests/unit/test_pool_restarts.py: in-process admin and
health servers on the workers' private sockets, the worker being replaced a real process."""

from __future__ import annotations

import asyncio
import signal
import sys

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1.versions_pb2 import VERSION_STATE_LOADING, VersionStatus
from serving.config import AdminConfig
from serving.rpc.admin_rpc import start_admin_server
from serving.rpc.workers import POLL_S, PoolAdmin, Worker, WorkerPool
from tests.unit.test_pool_restarts import FakeWorker, call, serve_worker, stop, wait_for


async def replaced(tmp_path, version: int, rollback_target: int, started: FakeWorker) -> tuple[list, list]:
    """Worker 0 being replaced (started on ``version``, its admin plane ``started``, its data plane not
    serving) beside a sibling serving 3 with rollback target 1: (the workers, their servers)."""
    sibling = FakeWorker(live=3)
    sibling.serves(3, 1)
    prefixes = [str(tmp_path / f"worker-{i}") for i in range(2)]
    workers = [Worker(0, [sys.executable, "-c", "import time; time.sleep(60)"], prefixes[0], 0),
               Worker(1, [], prefixes[1], 0)]
    await workers[0].start(version, rollback_target)  # as WorkerPool.keep starts it, before it aligns it
    workers[0].restarting = True
    servers = [*await serve_worker(prefixes[0], started, serving=False), *await serve_worker(prefixes[1], sibling)]
    return workers, servers


async def test_a_replacement_loaded_but_not_serving_takes_admin_calls_at_once(tmp_path):
    started = FakeWorker(live=3)
    started.serves(3, 1)  # its start-up loads are done; no index holds 3, so it does not serve
    workers, servers = await replaced(tmp_path, 3, 1, started)
    supervisor = await start_admin_server(PoolAdmin(workers), AdminConfig())
    aligning = asyncio.get_running_loop().create_task(WorkerPool(workers).align(workers[0]))
    try:
        await wait_for(lambda: not workers[0].restarting, "worker 0 to be taken back into the pool", 5.0)
        await asyncio.wait_for(aligning, 5)
        reply = await call(supervisor, "LoadVersion", pb.LoadVersionRequest(version=4))
        assert len(reply.workers) == 2 and [m for m, _ in started.calls] == ["LoadVersion"]
    finally:
        aligning.cancel()
        await supervisor.stop(0)
        await stop(workers, servers)


async def test_a_replacement_started_on_current_is_not_aligned_while_it_loads(tmp_path):
    # Started on CURRENT (no sibling answered then): its rollback target is live while CURRENT's load runs.
    started = FakeWorker(live=1)
    started.status.versions.append(VersionStatus(version=2, state=VERSION_STATE_LOADING))
    workers, servers = await replaced(tmp_path, 0, 0, started)
    aligning = asyncio.get_running_loop().create_task(WorkerPool(workers).align(workers[0]))
    try:
        await asyncio.sleep(5 * POLL_S)
        assert workers[0].restarting and started.calls == []
        started.status = pb.ServiceStatus(live_version=2)  # CURRENT's load done: then aligned with its sibling
        await asyncio.wait_for(aligning, 5)
        assert [(m, r.version) for m, r in started.calls] == [("LoadVersion", 3), ("Promote", 3)]
        assert not workers[0].restarting
    finally:
        aligning.cancel()
        await stop(workers, servers)


async def test_a_replacement_that_never_settles_is_started_again_keeping_its_deltas(tmp_path, monkeypatch):
    """Past ALIGN_TIMEOUT_S the pool let the replacement in, on whatever it served, and dropped the catalogue
    deltas taken while it restarted."""
    from serving.rpc import workers as pool_module

    monkeypatch.setattr(pool_module, "ALIGN_TIMEOUT_S", 10 * POLL_S)
    started = FakeWorker(live=1)
    started.status.versions.append(VersionStatus(version=3, state=VERSION_STATE_LOADING))  # a load that never ends
    workers, servers = await replaced(tmp_path, 3, 1, started)
    due = pb.ApplyCatalogueRequest(version=3, generation=5)
    workers[0].catalogue_due.append(due)
    try:
        await asyncio.wait_for(WorkerPool(workers).align(workers[0]), 20)
        assert workers[0].restarting and workers[0].catalogue_due == [due] and started.calls == []
        assert await asyncio.wait_for(workers[0].process.wait(), 10) == -signal.SIGTERM  # keep() starts it again
    finally:
        await stop(workers, servers)
