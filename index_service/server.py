"""recsys-index-service: serves ScaNN search over the registry's current version."""

from __future__ import annotations

import argparse
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import prometheus_client

from index_service.core import IndexCore
from index_service.servicer import IndexServicer
from model_registry import Registry, VersionError
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving import validation
from serving.flags import add_flag
from serving.grpc_server import RunningServer, ServiceSpec, configure_logging, serve_until_signalled, start_server

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.IndexService"


@dataclass(frozen=True)
class IndexServiceConfig:
    registry: str
    model: str
    port: int = 50051
    host: str = "127.0.0.1"
    metrics_port: int = 0
    search_threads: int = 2
    max_k: int = validation.DEFAULT_MAX_K
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-index-service", description=__doc__)
    add_flag(parser, "registry", required=True, help="model registry root directory")
    add_flag(parser, "model", required=True, help="model name under the registry")
    add_flag(parser, "port", type=int, default=50051, help="gRPC port (0 picks a free one)")
    add_flag(parser, "host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    add_flag(parser, "metrics-port", type=int, default=0, help="Prometheus /metrics port, 0 to disable")
    add_flag(parser, "search-threads", type=int, default=2, help="threads running ScaNN searches")
    add_flag(parser, "max-k", type=int, default=validation.DEFAULT_MAX_K, help="largest k a request may ask")
    add_flag(parser, "log-level", default="info", help="logging level")
    return parser


async def create_server(config: IndexServiceConfig) -> tuple[RunningServer, IndexCore]:
    """Loads the current version, then starts serving; health turns SERVING
    once the version is loaded. Returns the running server and its core."""
    executor = ThreadPoolExecutor(config.search_threads, thread_name_prefix="scann")
    core = IndexCore(Registry(config.registry, config.model), executor, max_k=config.max_k)
    running = await start_server([ServiceSpec(pb_grpc.add_IndexServiceServicer_to_server,
                                              IndexServicer(core), SERVICE_NAME)],
                                 config.host, config.port)
    try:
        version = await asyncio.get_running_loop().run_in_executor(executor, core.load_current)
    except BaseException:
        await running.stop(0)
        raise
    await running.set_serving(True)
    log.info("index service on %s:%d serving %s version %d", config.host, running.port, config.model, version)
    return running, core


async def _serve(config: IndexServiceConfig) -> None:
    running, _ = await create_server(config)
    await serve_until_signalled(running)


def main(argv: list[str] | None = None) -> None:
    config = IndexServiceConfig(**vars(build_parser().parse_args(argv)))
    configure_logging(config.log_level)
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    try:
        asyncio.run(_serve(config))
    except VersionError as e:
        raise SystemExit(f"recsys-index-service: cannot start: {e}") from None


if __name__ == "__main__":
    main()
