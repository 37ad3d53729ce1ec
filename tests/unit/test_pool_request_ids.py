"""A ``--workers`` supervisor's admin calls carry the caller's request id on to
every worker, so one rollout is one id in every worker's log: the supervisor's
``PoolAdmin`` in front of two in-process admin servers on private unix sockets,
as its workers serve theirs."""

from __future__ import annotations

import grpc
import pytest

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from serving.config import AdminConfig
from serving.rpc.admin_rpc import start_admin_server
from serving.rpc.workers import PoolAdmin, Worker
from serving.telemetry.observability import REQUEST_ID, REQUEST_ID_KEY


class SeesRequestId(pb_grpc.AdminServiceServicer):
    """A worker's admin plane whose every answer names the request id it saw (in ``model_name``)."""

    async def _seen(self, request, context):
        return pb.ServiceStatus(model_name=REQUEST_ID.get())

    LoadVersion = Promote = UnloadVersion = GetStatus = ApplyCatalogue = _seen

    async def Rollback(self, request, context):
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no rollback target is loaded")


async def through_the_pool(tmp_path, method: str, request_message, metadata=None) -> pb.ServiceStatus:
    """``method`` called on a supervisor of two workers; its answer lists what each worker answered."""
    prefixes = [str(tmp_path / f"worker-{i}") for i in range(2)]
    servers = [await start_admin_server(SeesRequestId(), AdminConfig(), private_socket=f"{p}.admin")
               for p in prefixes]
    workers = [Worker(i, [], prefix, 0) for i, prefix in enumerate(prefixes)]
    supervisor = await start_admin_server(PoolAdmin(workers), AdminConfig())
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
            reply = await getattr(pb_grpc.AdminServiceStub(channel), method)(
                request_message, metadata=metadata, timeout=10)
    finally:
        await supervisor.stop(0)
        for worker in workers:
            await worker.close()
        for server in servers:
            await server.stop(0)
    return reply


@pytest.mark.parametrize("method, request_message", [
    ("LoadVersion", pb.LoadVersionRequest(version=2)), ("Promote", pb.PromoteRequest(version=2)),
    ("GetStatus", pb.GetStatusRequest())])
async def test_every_worker_sees_the_callers_request_id(tmp_path, method, request_message):
    reply = await through_the_pool(tmp_path, method, request_message, ((REQUEST_ID_KEY, "rollout-42"),))
    assert [w.model_name for w in reply.workers] == ["rollout-42", "rollout-42"]


async def test_without_one_every_worker_sees_the_supervisors_id_for_the_call(tmp_path):
    reply = await through_the_pool(tmp_path, "Promote", pb.PromoteRequest(version=2))
    seen = {w.model_name for w in reply.workers}
    assert len(seen) == 1 and seen != {""}


async def test_a_call_a_worker_fails_returns_the_request_id_to_quote(tmp_path):
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await through_the_pool(tmp_path, "Rollback", pb.RollbackRequest(), ((REQUEST_ID_KEY, "rollback-9"),))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert dict(failed.value.trailing_metadata()).get(REQUEST_ID_KEY) == "rollback-9"
