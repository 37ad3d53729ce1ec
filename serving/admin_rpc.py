"""gRPC AdminService over ``VersionAdmin``, on its own server and port so the
admin plane can be bound to loopback and guarded by a bearer token while the
data plane faces clients."""

from __future__ import annotations

import argparse
import asyncio
import hmac
from dataclasses import dataclass

import grpc

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from serving.admin import StatusReport, VersionAdmin
from serving.flags import add_flag
from serving.grpc_server import RunningServer, ServiceSpec, map_errors, start_server

SERVICE_NAME = "recsys.v1.AdminService"


def status_proto(report: StatusReport) -> pb.ServiceStatus:
    return pb.ServiceStatus(
        model_name=report.model, service=report.service, live_version=report.live_version,
        versions=[pb.VersionStatus(
            version=v.version, state=pb.VersionState.Value(f"VERSION_STATE_{v.state.value}"),
            num_candidates=v.num_candidates, embedding_dim=v.embedding_dim,
            self_test_recall_at_10=v.self_test_recall, memory_bytes=v.memory_bytes, load_seconds=v.load_seconds,
        ) for v in report.versions])


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, admin: VersionAdmin):
        self.admin = admin

    @map_errors
    async def LoadVersion(self, request, context):
        return status_proto(await self.admin.load(request.version))

    @map_errors
    async def Promote(self, request, context):
        return status_proto(self.admin.promote(request.version))

    @map_errors
    async def Rollback(self, request, context):
        return status_proto(self.admin.rollback())

    @map_errors
    async def UnloadVersion(self, request, context):
        return status_proto(self.admin.unload(request.version))

    @map_errors
    async def GetStatus(self, request, context):
        return status_proto(self.admin.status())


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (UNAUTHENTICATED).
    Health checks stay open so orchestrators can probe the admin port."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return await continuation(handler_call_details)
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return await continuation(handler_call_details)

        async def deny(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "admin calls need metadata 'authorization: Bearer <token>' with the configured token")

        return grpc.unary_unary_rpc_method_handler(deny)


async def start_admin_server(admin: VersionAdmin, host: str, port: int, token: str = "") -> RunningServer:
    """Starts the admin server; with a non-empty ``token`` every admin call must carry it."""
    interceptors = [BearerTokenInterceptor(token)] if token else []
    running = await start_server([ServiceSpec(pb_grpc.add_AdminServiceServicer_to_server,
                                              AdminServicer(admin), SERVICE_NAME)],
                                 host, port, interceptors=interceptors)
    await running.set_serving(True)
    return running


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int = 0
    token: str = ""


def add_admin_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    add_flag(parser, "admin-host", default="127.0.0.1", help="admin plane bind address (keep it private)")
    add_flag(parser, "admin-port", type=int, default=default_port, help="admin plane port (0 picks a free one)")
    add_flag(parser, "admin-token", default="", help="bearer token required on admin calls; empty: none")


def pop_admin_config(values: dict) -> AdminConfig:
    """Takes the admin flags out of parsed ``vars(args)``."""
    return AdminConfig(values.pop("admin_host"), values.pop("admin_port"), values.pop("admin_token"))


class ServiceWithAdmin:
    """A data-plane server and its admin server, started together: the data
    plane reports SERVING only once the registry's current version is loaded."""

    def __init__(self, data: RunningServer, admin: RunningServer, live_version: int):
        self.data = data
        self.admin = admin
        self.live_version = live_version

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.admin.stop(0)
        await self.data.stop(grace_s)

    @classmethod
    async def start(cls, spec: ServiceSpec, admin: VersionAdmin, host: str, port: int,
                    admin_config: AdminConfig) -> "ServiceWithAdmin":
        data = await start_server([spec], host, port)
        try:
            version = await asyncio.get_running_loop().run_in_executor(None, admin.load_at_start)
            admin_server = await start_admin_server(admin, admin_config.host, admin_config.port, admin_config.token)
        except BaseException:
            await data.stop(0)
            raise
        await data.set_serving(True)
        return cls(data, admin_server, version)
