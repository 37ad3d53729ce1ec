"""recsys-query-service: serves Recommend/Embed with the registry's current version."""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from model_registry import Registry
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.batching import BatchingConfig
from query_service.cache import CacheConfig, ResultCache
from query_service.index_client import IndexClient
from query_service.recommender import Recommender
from query_service.servicer import QueryServicer
from serving import validation
from serving.flags import add_flag, add_service_flags
from serving.admin_rpc import AdminConfig, ServiceWithAdmin, add_admin_flags, pop_admin_config
from serving.grpc_server import ServiceSpec, run_main, serve_until_signalled

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.QueryService"


@dataclass(frozen=True)
class QueryServiceConfig:
    registry: str
    model: str
    index_address: str
    redis_url: str = ""
    port: int = 50052
    host: str = "127.0.0.1"
    admin: AdminConfig = AdminConfig(port=50062)
    metrics_port: int = 0
    cache_ttl_s: int = 300
    local_cache_entries: int = 50_000
    redis_timeout_s: float = 0.05
    index_timeout_s: float = 3.0
    max_batch_size: int = 32
    batch_wait_ms: float = 0.0
    tower_threads: int = 2
    tf_threads: int = 1
    max_k: int = validation.DEFAULT_MAX_K
    log_level: str = "info"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-query-service", description=__doc__)
    add_flag(parser, "index-address", required=True, help="index service HOST:PORT")
    add_flag(parser, "redis-url", default="", help="result cache, e.g. redis://127.0.0.1:6379/0; empty disables")
    add_service_flags(parser, default_port=50052)
    add_admin_flags(parser, default_port=50062)
    add_flag(parser, "cache-ttl-s", type=int, default=300, help="result cache TTL in seconds")
    add_flag(parser, "local-cache-entries", type=int, default=50_000,
             help="results kept in process in front of Redis (0: Redis only); ~1 KB each at k = 10")
    add_flag(parser, "redis-timeout-s", type=float, default=0.05, help="timeout of each Redis call")
    add_flag(parser, "index-timeout-s", type=float, default=3.0,
             help="deadline of each index RPC; above the ~1.6 s an index replica stalls loading a 1M version")
    add_flag(parser, "max-batch-size", type=int, default=32, help="most cache misses batched into one tower call")
    add_flag(parser, "batch-wait-ms", type=float, default=0.0,
             help="longest a miss waits for a batch to fill; 0 batches only what queued while the tower was busy")
    add_flag(parser, "tower-threads", type=int, default=2, help="threads running the query tower")
    add_flag(parser, "tf-threads", type=int, default=1,
             help="TensorFlow intra- and inter-op threads (0: TensorFlow's default, one per core)")
    add_flag(parser, "max-k", type=int, default=validation.DEFAULT_MAX_K, help="largest k a request may ask")
    return parser


def config_from_args(args: argparse.Namespace) -> QueryServiceConfig:
    values = vars(args)
    return QueryServiceConfig(admin=pop_admin_config(values), **values)


def limit_tensorflow_threads(threads: int) -> None:
    """Caps TensorFlow's op thread pools (before its runtime starts). A query tower
    batch is a few small ops that gain nothing from intra-op parallelism, and most
    misses run no tower at all (embeddings are precomputed), so one thread each
    keeps the pools from competing with the event loops for cores on a big machine.
    On its own it made no measurable difference on the 2-core benchmark machine."""
    if threads > 0:
        import model_registry.tf_env  # noqa: F401
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


async def create_server(config: QueryServiceConfig) -> tuple[ServiceWithAdmin, Recommender]:
    """Loads the current version's tower (and the one before, for rollback),
    then serves; health turns SERVING once the current version is loaded."""
    limit_tensorflow_threads(config.tf_threads)
    cache = None
    if config.redis_url:
        cache = ResultCache(CacheConfig(config.redis_url, ttl_s=config.cache_ttl_s, timeout_s=config.redis_timeout_s,
                                        local_entries=config.local_cache_entries))
    recommender = Recommender(
        Registry(config.registry, config.model),
        IndexClient(config.index_address, timeout_s=config.index_timeout_s),
        cache,
        ThreadPoolExecutor(config.tower_threads, thread_name_prefix="tower"),
        BatchingConfig(max_batch_size=config.max_batch_size, max_wait_s=config.batch_wait_ms / 1000),
        max_k=config.max_k,
    )
    spec = ServiceSpec(pb_grpc.add_QueryServiceServicer_to_server, QueryServicer(recommender), SERVICE_NAME)
    try:
        service = await ServiceWithAdmin.start(spec, recommender.admin, config.host, config.port, config.admin)
    except BaseException:
        await recommender.close()
        raise
    log.info("query service on %s:%d (admin %s:%d) serving %s version %d (index %s, cache %s)", config.host,
             service.data.port, config.admin.host, service.admin.port, config.model, service.live_version,
             config.index_address, config.redis_url or "off")
    return service, recommender


async def _serve(config: QueryServiceConfig) -> None:
    service, recommender = await create_server(config)
    try:
        await serve_until_signalled(service.stop)
    finally:
        await recommender.close()


def main(argv: list[str] | None = None) -> None:
    config = config_from_args(build_parser().parse_args(argv))
    run_main("recsys-query-service", _serve(config), config.log_level, config.metrics_port)


if __name__ == "__main__":
    main()
