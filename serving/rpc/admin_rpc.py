"""gRPC AdminService over a ``VersionAdmin``, on its own server and port so the
admin plane can be bound to loopback and guarded by a bearer token while the
data plane faces clients."""

from __future__ import annotations

import hmac
from typing import Awaitable, Callable

import grpc

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from serving.config import AdminConfig, ServiceConfig
from serving.lifecycle.admin import StatusReport, VersionAdmin, VersionInfo
from serving.lifecycle.versions import State
from serving.rpc.enum_names import enum_name
from serving.rpc.grpc_server import RunningServer, ServiceSpec, WorkerDataPlane, map_errors, start_server
from serving.telemetry.observability import VERSIONS

SERVICE_NAME = "recsys.v1.AdminService"


def state_name(state: int) -> str:
    """A ``VersionState``'s name as people read it (``SERVING``), for logs and messages: not its number. A number
    this release names no state for (one a newer release added) reads ``UNKNOWN_<number>``."""
    return enum_name(versions_pb2.VersionState, state, "VERSION_STATE_")


def version_state(state: int) -> State | None:
    """The ``State`` of a ``VersionState`` number, as a status message carries it; None for ``UNSPECIFIED`` and for
    a number this release names no state for."""
    try:
        return State(state_name(state))
    except ValueError:
        return None


def version_protos(infos: list[VersionInfo]) -> list[versions_pb2.VersionStatus]:
    out = []
    for v in infos:
        report = v.report
        out.append(versions_pb2.VersionStatus(
            version=v.version, state=versions_pb2.VersionState.Value(f"VERSION_STATE_{v.state.value}"),
            num_candidates=v.num_candidates, embedding_dim=v.embedding_dim,
            self_test_recall_at_10=(report.self_test_recall or 0.0) if report else 0.0,
            memory_bytes=report.memory_bytes if report else 0, load_seconds=report.load_seconds if report else 0.0,
            catalogue_generation=v.catalogue_generation,
            self_test_generation=report.recall_generation if report else 0))
    return out


def status_proto(report: StatusReport) -> pb.ServiceStatus:
    shard, shards = report.shard or (0, 0)
    endpoints = [pb.IndexEndpointStatus(address=e.address, slot=e.slot, shard=e.shard, shards=e.shards,
                                        versions=version_protos(e.versions), problem=e.problem)
                 for e in report.index_endpoints]
    return pb.ServiceStatus(model_name=report.model, service=report.service, live_version=report.live_version,
                            versions=version_protos(report.versions), slot=report.slot, shard=shard, shards=shards,
                            status_watchers=report.status_watchers, index_endpoints=endpoints)


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, admin: VersionAdmin):
        self.admin = admin

    @map_errors
    async def LoadVersion(self, request, context):
        return status_proto(await self.admin.load(request.version))

    @map_errors
    async def Promote(self, request, context):
        return status_proto(await self.admin.promote(request.version))

    @map_errors
    async def Rollback(self, request, context):
        return status_proto(await self.admin.rollback())

    @map_errors
    async def UnloadVersion(self, request, context):
        return status_proto(await self.admin.unload(request.version))

    @map_errors
    async def GetStatus(self, request, context):
        return status_proto(self.admin.full_status())

    @map_errors
    async def ApplyCatalogue(self, request, context):
        return status_proto(await self.admin.apply_catalogue(request.version, request.generation))


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).
    Health checks stay open so orchestrators can probe the admin port."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        # A method the server lacks is UNIMPLEMENTED, as without a token: denied under its own name, each name a
        # caller made up became a latency series and a cached handler (3,000 calls: 150 MB of /metrics).
        if handler is None or handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return handler

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "admin calls need metadata 'authorization: Bearer <token>' with the configured token")

        return grpc.unary_unary_rpc_method_handler(deny)


# Calls the public admin port runs at once (and that wait on their requests): rollouts, status polls and catalogue
# runs make a few; unbounded, 20,000 calls held open without a token grew a replica by 272 MB.
ADMIN_MAX_CONCURRENT_RPCS = 100


async def start_admin_server(servicer: pb_grpc.AdminServiceServicer, config: AdminConfig,
                             credentials: grpc.ServerCredentials | None = None,
                             private_socket: str = "") -> RunningServer:
    """Starts the admin server; with a non-empty token every admin call must
    carry it. With ``private_socket`` (a worker of ``--workers``) it listens on
    that unix socket only, without token or TLS: only its supervisor, which
    holds the public admin port, reaches it."""
    if private_socket:
        host, port, interceptors, credentials, limit = f"unix:{private_socket}", 0, [], None, None
    else:
        host, port, limit = config.host, config.port, ADMIN_MAX_CONCURRENT_RPCS
        interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    running = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server, servicer, SERVICE_NAME)],
                                 host, port, interceptors=interceptors, credentials=credentials,
                                 max_concurrent_rpcs=limit)
    await running.set_serving(True)
    return running


class ServiceWithAdmin:
    """A data-plane server and its admin server. The data plane starts
    NOT_SERVING; the service says when it can serve (``set_serving``).
    While it runs, its versions are exported to /metrics (``VERSIONS``)."""

    def __init__(self, data: RunningServer | WorkerDataPlane, admin: RunningServer,
                 status: Callable[[], StatusReport]):
        self.data = data
        self.admin = admin
        self._status = status
        VERSIONS.track(status)

    async def set_serving(self, serving: bool, names: list[str] | None = None) -> None:
        await self.data.set_serving(serving, names)

    async def stop(self, grace_s: float = 5.0) -> None:
        VERSIONS.untrack(self._status)
        await self.admin.stop(0)
        await self.data.stop(grace_s)

    @classmethod
    async def start(cls, spec: ServiceSpec, admin: VersionAdmin, config: ServiceConfig,
                    worker_socket: str = "", max_connection_age_s: float = 0.0,
                    max_streams_per_connection: int = 0, max_pending_calls: int = 0) -> "ServiceWithAdmin":
        """Starts both servers. A worker of ``--workers`` (``worker_socket``: the
        path prefix of its private sockets, ``serving.rpc.workers``) serves both
        planes on private sockets, and its data plane on the port it shares with
        its siblings once it serves (``WorkerDataPlane``). The data plane's public
        port closes each connection after ``max_connection_age_s`` and has at most
        ``max_streams_per_connection`` calls of one connection in progress, and refuses calls past
        ``max_pending_calls`` not yet taken (``start_server``)."""
        credentials = config.tls.credentials()

        def data_server(host: str, public: bool) -> Awaitable[RunningServer]:
            # A worker's private socket, which only its supervisor reaches, carries no TLS.
            return start_server([spec], host, config.port, config.max_message_bytes,
                                max_concurrent_rpcs=config.max_concurrent_rpcs,
                                credentials=credentials if public else None, echo_request_id=config.echo_request_id,
                                share_port=public and bool(worker_socket),
                                max_connection_age_s=max_connection_age_s if public else 0.0,
                                max_streams_per_connection=max_streams_per_connection if public else 0,
                                max_pending_calls=max_pending_calls if public else 0)

        data: RunningServer | WorkerDataPlane
        if worker_socket:
            data = WorkerDataPlane(await data_server(f"unix:{worker_socket}.data", False), config.port,
                                   lambda: data_server(config.host, True))
        else:
            data = await data_server(config.host, True)
        try:
            admin_server = await start_admin_server(AdminServicer(admin), config.admin, credentials,
                                                    private_socket=worker_socket and f"{worker_socket}.admin")
        except BaseException:
            await data.stop(0)
            raise
        return cls(data, admin_server, admin.status)
