"""recsys-index-service: serves ScaNN search over the registry's versions."""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from index_service.core import IndexCore
from index_service.servicer import IndexServicer
from model_registry import Registry
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving import validation
from serving.admin_rpc import AdminConfig, ServiceWithAdmin, add_admin_flags, pop_admin_config
from serving.flags import add_flag, add_service_flags
from serving.grpc_server import ServiceSpec, run_main, serve_until_signalled

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.IndexService"


@dataclass(frozen=True)
class IndexServiceConfig:
    registry: str
    model: str
    port: int = 50051
    host: str = "127.0.0.1"
    admin: AdminConfig = AdminConfig(port=50061)
    metrics_port: int = 0
    search_threads: int = 2
    max_k: int = validation.DEFAULT_MAX_K
    min_recall: float = 0.9
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-index-service", description=__doc__)
    add_service_flags(parser, default_port=50051)
    add_admin_flags(parser, default_port=50061)
    add_flag(parser, "search-threads", type=int, default=2, help="threads running ScaNN searches")
    add_flag(parser, "max-k", type=int, default=validation.DEFAULT_MAX_K, help="largest k a request may ask")
    add_flag(parser, "min-recall", type=float, default=0.9,
             help="a version whose index recall@10 vs exact search on its probe queries is lower is refused")
    return parser


def config_from_args(args: argparse.Namespace) -> IndexServiceConfig:
    values = vars(args)
    return IndexServiceConfig(admin=pop_admin_config(values), **values)


async def create_server(config: IndexServiceConfig) -> tuple[ServiceWithAdmin, IndexCore]:
    """Loads the current version (and the one before, for rollback), then
    serves; health turns SERVING once the current version is loaded."""
    core = IndexCore(Registry(config.registry, config.model),
                     ThreadPoolExecutor(config.search_threads, thread_name_prefix="scann"),
                     max_k=config.max_k, min_recall=config.min_recall)
    spec = ServiceSpec(pb_grpc.add_IndexServiceServicer_to_server, IndexServicer(core), SERVICE_NAME)
    service = await ServiceWithAdmin.start(spec, core.admin, config.host, config.port, config.admin)
    log.info("index service on %s:%d (admin %s:%d) serving %s version %d", config.host, service.data.port,
             config.admin.host, service.admin.port, config.model, service.live_version)
    return service, core


async def _serve(config: IndexServiceConfig) -> None:
    service, _ = await create_server(config)
    await serve_until_signalled(service.stop)


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(build_parser().parse_args(argv))
    run_main("recsys-index-service", _serve(config), config.log_level, config.metrics_port)


if __name__ == "__main__":
    main()
