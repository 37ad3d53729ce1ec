"""A ``--workers`` supervisor while one of its workers is replaced: admin calls
say the worker is restarting (the pool's versions and catalogue come to it by
themselves), and the replacement is not loaded again once its own start-up
serves the pool's version. The supervisor's ``WorkerPool`` and ``PoolAdmin``
in front of in-process admin and health servers on the workers' private unix
sockets, as its workers serve theirs; the worker being replaced is a real
process the test kills."""

from __future__ import annotations

import asyncio
import signal
import sys

import grpc
import pytest

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1.versions_pb2 import VERSION_STATE_ROLLBACK_TARGET, VersionStatus
from serving.config import AdminConfig
from serving.rpc.admin_rpc import start_admin_server
from serving.rpc.workers import POLL_S, PoolAdmin, Worker, WorkerPool

RESTARTING = "worker 0 is restarting (it loads the pool's versions and replays the registry when it starts)"


class FakeWorker(pb_grpc.AdminServiceServicer):
    """A worker's admin plane: answers with ``status`` and records each call it takes."""

    def __init__(self, live: int):
        self.status = pb.ServiceStatus(live_version=live)
        self.calls: list[tuple[str, object]] = []

    def serves(self, live: int, rollback_target: int) -> None:
        self.status = pb.ServiceStatus(live_version=live, versions=[
            VersionStatus(version=rollback_target, state=VERSION_STATE_ROLLBACK_TARGET)])

    async def GetStatus(self, request, context):
        return self.status

    def _taking(method: str):  # noqa: N805 - builds the methods below
        async def take(self, request, context):
            self.calls.append((method, request))
            return self.status
        return take

    LoadVersion = _taking("LoadVersion")
    Promote = _taking("Promote")
    ApplyCatalogue = _taking("ApplyCatalogue")


async def serve_worker(prefix: str, fake: FakeWorker, serving: bool = True) -> list:
    """``fake``'s admin plane on ``prefix``.admin and a health server on ``prefix``.data, as a worker serves them."""
    servers = [await start_admin_server(fake, AdminConfig(), private_socket=f"{prefix}.{plane}")
               for plane in ("admin", "data")]
    await servers[1].set_serving(serving)
    return servers


async def call(supervisor, method: str, request) -> pb.ServiceStatus:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
        return await getattr(pb_grpc.AdminServiceStub(channel), method)(request, timeout=10)


async def wait_for(predicate, what: str, timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def stop(workers: list[Worker], servers: list) -> None:
    """Kills worker 0's process (the others have none), closes every worker's channels and stops the fake workers'
    servers."""
    workers[0].signal(signal.SIGKILL)
    await workers[0].process.wait()
    for worker in workers:
        await worker.close()
    for server in servers:
        await server.stop(0)


async def test_admin_calls_while_a_worker_restarts_say_so_and_it_catches_up_by_itself(tmp_path):
    sibling = FakeWorker(live=3)
    sibling.serves(3, 1)
    prefixes = [str(tmp_path / f"worker-{i}") for i in range(2)]
    servers = await serve_worker(prefixes[1], sibling)
    # Worker 0 is a real process that has served; its replacement is one too (it takes --version 3 in argv).
    workers = [Worker(0, [sys.executable, "-c", "import time; time.sleep(60)"], prefixes[0], 0),
               Worker(1, [], prefixes[1], 0)]
    await workers[0].start()
    workers[0].has_served = True
    pool = WorkerPool(workers)
    keeping = asyncio.get_running_loop().create_task(pool.keep(workers[0]))
    supervisor = await start_admin_server(PoolAdmin(workers), AdminConfig())
    killed = workers[0].process
    try:
        killed.send_signal(signal.SIGKILL)
        await killed.wait()
        await asyncio.sleep(POLL_S)

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(supervisor, "LoadVersion", pb.LoadVersionRequest(version=4))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert RESTARTING in failed.value.details() and "retry in a few seconds" in failed.value.details()
        assert sibling.calls == []  # a load on a partial pool is refused: no worker took it

        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(supervisor, "ApplyCatalogue", pb.ApplyCatalogueRequest(version=3, generation=5))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert RESTARTING in failed.value.details() and "catch up by itself" in failed.value.details()
        assert "now differ" not in failed.value.details()
        assert [method for method, _ in sibling.calls] == ["ApplyCatalogue"]

        # The replacement starts on its sibling's versions; once it serves them it takes the delta it missed.
        await wait_for(lambda: workers[0].process is not killed, "worker 0 to be started again")
        replacement = FakeWorker(live=3)
        replacement.serves(3, 1)
        servers += await serve_worker(prefixes[0], replacement)
        await wait_for(lambda: not workers[0].restarting, "worker 0 to be aligned")
        assert [(method, request.generation) for method, request in replacement.calls] == [("ApplyCatalogue", 5)]
        reply = await call(supervisor, "LoadVersion", pb.LoadVersionRequest(version=4))
        assert len(reply.workers) == 2
    finally:
        await pool.stop(5.0)
        keeping.cancel()
        await asyncio.gather(keeping, return_exceptions=True)
        await supervisor.stop(0)
        for worker in workers:
            await worker.close()
        for server in servers:
            await server.stop(0)


async def test_a_restarted_worker_whose_start_up_serves_the_pools_version_gets_no_extra_load(tmp_path):
    """Its start-up loads the rollback target first: a live version other than its siblings' while it
    starts is not a reason to load theirs beside its own start-up."""
    starting, sibling = FakeWorker(live=1), FakeWorker(live=3)  # the rollback target is loaded first
    sibling.serves(3, 1)
    prefixes = [str(tmp_path / f"worker-{i}") for i in range(2)]
    workers = [Worker(0, [sys.executable, "-c", "import time; time.sleep(60)"], prefixes[0], 0),
               Worker(1, [], prefixes[1], 0)]
    await workers[0].start(3, 1)  # as WorkerPool.keep starts it, before it aligns it
    servers = [*await serve_worker(prefixes[0], starting, serving=False), *await serve_worker(prefixes[1], sibling)]
    try:
        aligning = asyncio.get_running_loop().create_task(WorkerPool(workers).align(workers[0]))
        await asyncio.sleep(5 * POLL_S)
        starting.serves(3, 1)  # its start-up load of the live version is done, and then it serves
        await servers[1].set_serving(True)
        await asyncio.wait_for(aligning, 10)
        assert starting.calls == []
    finally:
        await stop(workers, servers)


async def test_a_restarted_worker_that_cannot_take_its_siblings_version_is_started_again_not_left_on_another(
        tmp_path):
    """Its LoadVersion of the siblings' version failed, and it was marked aligned all the same: the pool served two
    versions, and its status named only the first worker's."""
    class RefusingLoad(FakeWorker):
        async def LoadVersion(self, request, context):
            self.calls.append(("LoadVersion", request))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "version 3 failed its checksum")

    starting, sibling = RefusingLoad(live=2), FakeWorker(live=3)
    starting.serves(2, 1)
    sibling.serves(3, 2)
    prefixes = [str(tmp_path / f"worker-{i}") for i in range(2)]
    workers = [Worker(0, [sys.executable, "-c", "import time; time.sleep(60)"], prefixes[0], 0),
               Worker(1, [], prefixes[1], 0)]
    await workers[0].start()  # on CURRENT (2), as WorkerPool.keep starts it when no sibling answered
    workers[0].restarting = True
    servers = [*await serve_worker(prefixes[0], starting), *await serve_worker(prefixes[1], sibling)]
    try:
        await asyncio.wait_for(WorkerPool(workers).align(workers[0]), 20)
        assert [(method, r.version) for method, r in starting.calls] == [("LoadVersion", 3)]
        assert workers[0].restarting  # admin calls still say so, until its next start serves 3
        assert await asyncio.wait_for(workers[0].process.wait(), 10) == -signal.SIGTERM  # keep() starts it again
    finally:
        await stop(workers, servers)


async def test_an_admin_call_without_a_deadline_to_a_hung_worker_ends_naming_it(tmp_path, monkeypatch):
    """With no deadline from the caller (grpcurl, a script), a stopped worker held the call for ever."""
    from serving.rpc import workers as pool_module

    class Hung(FakeWorker):
        async def Promote(self, request, context):
            await asyncio.Event().wait()

    monkeypatch.setattr(pool_module, "WORKER_CALL_CAP_S", 0.5)
    prefixes = [str(tmp_path / f"worker-{i}") for i in range(2)]
    workers = [Worker(0, [sys.executable, "-c", "import time; time.sleep(60)"], prefixes[0], 0),
               Worker(1, [], prefixes[1], 0)]
    await workers[0].start()
    servers = [*await serve_worker(prefixes[0], FakeWorker(live=3)), *await serve_worker(prefixes[1], Hung(live=3))]
    supervisor = await start_admin_server(PoolAdmin(workers), AdminConfig())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await asyncio.wait_for(pb_grpc.AdminServiceStub(channel).Promote(pb.PromoteRequest(version=3)), 20)
        assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert failed.value.details().startswith("Promote failed on worker 1 of 2"), failed.value.details()
        assert "workers [0] took it" in failed.value.details()
    finally:
        await supervisor.stop(0)
        await stop(workers, servers)
