"""recsys-query-service: Recommend, RecommendSimilar, BatchRecommend,
RecordInteractions and Embed with the live version's tower, searching the index
endpoints that hold that version."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import math
import sys

from model_registry import Registry
from model_registry import manifest as files
from query_service.admin import QueryAdmin
from query_service.batching import BatchingConfig
from query_service.core.recommender import Recommender
from query_service.core.warmup import WarmupConfig
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.servicer import QueryServicer, add_to_server
from query_service.storage.cache import CacheConfig, ResultCache, redacted_url
from query_service.storage.live_history import LiveHistory, LiveHistoryConfig
from serving import validation
from serving.config import AdminConfig, ServiceConfig
from serving.lifecycle.admin import CatalogueCatchUp
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.sources import query_startup
from serving.lifecycle.versions import VersionManager
from serving.rpc.admin_rpc import ServiceWithAdmin
from serving.rpc.grpc_server import CONNECTION_AGE_GRACE_S, ServiceSpec, run_main, serve_until_signalled
from serving.rpc.pool_directory import pool_secret
from serving.rpc.workers import run_workers
from serving.telemetry import tracing
from settings.flags import MAX_INT32, add_flags, option, parse, require

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.QueryService"


@dataclasses.dataclass(frozen=True)
class QueryServiceConfig(ServiceConfig):
    port: int = option(50052, "gRPC data-plane port (0 picks a free one)")
    admin: AdminConfig = option(AdminConfig(port=50062), "admin plane", prefix="admin-")
    index: RoutingConfig = option(RoutingConfig(), "index endpoints")
    cache: CacheConfig = option(CacheConfig(), "result cache")
    live_history: LiveHistoryConfig = option(LiveHistoryConfig(), "live interaction history (in the cache's Redis)")
    batching: BatchingConfig = option(BatchingConfig(), "micro-batching of cache misses")
    warmup: WarmupConfig = option(WarmupConfig(), "cache warm-up of a version loaded beside the live one")
    tower_threads: int = option(2, "threads running the query tower")
    tf_threads: int = option(1, "TensorFlow intra- and inter-op threads (0: TensorFlow's default, one per core)")
    max_k: int = option(validation.DEFAULT_MAX_K, "largest k a request may ask")
    max_batch_requests: int = option(validation.DEFAULT_MAX_BATCH_REQUESTS,
                                     "most requests in one BatchRecommend")
    workers: int = option(1, "processes serving the data plane on one port (SO_REUSEPORT), each with its versions "
                             "loaded; the admin plane and /metrics then reach every worker (serving/rpc/workers.py)")
    worker_hung_s: float = option(30.0, "with --workers: a worker that has served and then answers no health "
                                        "check for this long (stopped, deadlocked) is killed and started again; "
                                        "one that answers NOT_SERVING is kept (0: never)")
    worker_socket: str = option("", "set by --workers on each worker it starts: the path prefix of the worker's "
                                    "private sockets (not for use by hand)")
    rollback_version: int = option(0, "with --version: also load this version, as the rollback target (0: none)")
    max_connection_age_s: float = option(0.0, "close each data-plane connection after about this long (gRPC's max "
                                              "connection age, +-10%; calls in flight get "
                                              f"{CONNECTION_AGE_GRACE_S:g} s to end), so that "
                                              "long-lived clients reconnect and spread over the replicas, those "
                                              "added since included, behind a connection-level balancer such as a "
                                              "Kubernetes Service or --workers' shared port (0: never; else 1 or more)")
    # The query tier's only: an index slot's callers are query replicas, each multiplexing every search of the
    # version over one connection (RecommendSimilar's unbatched), where refused streams would pass a healthy
    # endpoint over.
    max_streams_per_connection: int = option(
        64, "calls one client connection may have in progress on the data plane (HTTP/2 "
            "SETTINGS_MAX_CONCURRENT_STREAMS); more are refused by gRPC's C core before any Python runs (the caller "
            "reads UNAVAILABLE, REFUSED_STREAM, safe to retry), where without the limit an overload queued them in "
            "the event loop until every call was late (0: no limit)")
    max_pending_calls: int = option(
        128, "calls of one method that may wait on the data plane for this process (each --workers worker) to take "
             "them; gRPC's C core refuses the next (the caller reads CANCELLED, details \"CANCELLED\": nothing done, "
             "safe to retry). Each method has its own queue, health checks too. That queue is first in, first out: "
             "without a bound an overload over many connections kept it until every call was late (0: gRPC's own, "
             "1,000 to 3,000)")
    catalogue: CatalogueCatchUp = option(CatalogueCatchUp(), "catalogue catch-up", prefix="catalogue-catch-up-")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.index.addresses) >= 1, "index.addresses", "is required: every index endpoint (every slot), "
                                                                   "comma-separated")
        require(self.tower_threads >= 1, "tower_threads", "must be >= 1")
        require(self.tf_threads >= 0, "tf_threads", "must be >= 0")
        require(self.max_k >= 1, "max_k", "must be >= 1")
        require(self.max_batch_requests >= 1, "max_batch_requests", "must be >= 1")
        require(self.workers >= 1, "workers", "must be >= 1")
        require(0 <= self.max_streams_per_connection <= MAX_INT32, "max_streams_per_connection",
                f"must be from 0 (no limit) to {MAX_INT32}")
        require(0 <= self.max_pending_calls <= MAX_INT32, "max_pending_calls", f"must be from 0 (gRPC's own) to "
                f"{MAX_INT32}")
        require(0 <= self.worker_hung_s < math.inf, "worker_hung_s", "must be >= 0 and finite (0: never)")
        require(self.workers == 1 or not self.worker_socket, "worker_socket", "is set on workers, which run one "
                                                                                "process each")
        require(self.rollback_version >= 0, "rollback_version", "must be >= 0")
        # gRPC takes milliseconds: a fraction of one would be 0 there, and a second is already far too short to use.
        require(self.max_connection_age_s == 0 or 1 <= self.max_connection_age_s <= MAX_INT32 / 1000,
                "max_connection_age_s", f"must be 0 (never) or from 1 s to {MAX_INT32 // 1000} s")
        require(not self.rollback_version or (self.version and self.rollback_version != self.version),
                "rollback_version", "needs --version, and must differ from it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-query-service", description=__doc__)
    add_flags(parser, QueryServiceConfig)
    return parser


def limit_tensorflow_threads(threads: int) -> None:
    """Caps TensorFlow's op thread pools (before its runtime starts). A query tower
    batch is a few small ops that gain nothing from intra-op parallelism, and most
    misses run no tower at all (embeddings are precomputed), so one thread each
    keeps the pools from competing with the event loops for cores on a big machine.
    On its own it made no measurable difference on the 2-core benchmark machine."""
    if threads > 0:
        import settings.tf_env  # noqa: F401
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


async def create_server(config: QueryServiceConfig) -> tuple[ServiceWithAdmin, Recommender, IndexRouter]:
    """Builds the replica's manager, loader, router and admin, starts both
    servers and loads CURRENT's tower (and PREVIOUS's, the rollback target).
    Health turns SERVING once the live version's tower is loaded and an index
    endpoint holds that version."""
    registry = Registry(config.registry, config.model)
    # No CURRENT, or a broken one, stops the start here, before TensorFlow's ~5 s import.
    startup = query_startup(registry, config.version, config.rollback_version)
    from query_service.tower import QueryModel, prime_threads  # here: the --workers supervisor has no TensorFlow

    limit_tensorflow_threads(config.tf_threads)
    manager: VersionManager[QueryModel] = VersionManager(config.model)
    # The live tower is served beside the loading one; the candidates' files are the index slots' to verify.
    key = config.public_key()
    loader = Loader(registry, functools.partial(QueryModel.load, delta_key=key), "tower", Background.GIL,
                    files.QUERY_READS, key)
    router = IndexRouter(config.index, config.model)
    cache = ResultCache(_cache_config(config)) if config.cache.url or config.cache.local_mb > 0 else None
    history = (LiveHistory(cache.link, config.model, config.live_history, config.cache.mac_key.encode())
               if cache is not None and cache.link is not None else None)
    executor = tracing.executor("tower", config.tower_threads, thread_name_prefix="tower")
    await prime_threads(executor, config.tower_threads)
    recommender = Recommender(manager, router, cache, executor, config.batching, max_k=config.max_k,
                              warmup=config.warmup, history=history, max_batch_requests=config.max_batch_requests)
    admin = QueryAdmin(manager, loader, router, recommender.warm)
    spec = ServiceSpec(add_to_server, QueryServicer(recommender, config.max_message_bytes), SERVICE_NAME)
    service = await ServiceWithAdmin.start(spec, admin, config, worker_socket=config.worker_socket,
                                           max_connection_age_s=config.max_connection_age_s,
                                           max_streams_per_connection=config.max_streams_per_connection,
                                           max_pending_calls=config.max_pending_calls)
    router.start()
    try:
        await loader.run(admin.start, startup)
    except BaseException:
        await service.stop(0)
        await asyncio.gather(router.close(), recommender.close())
        raise
    admin.follow_catalogue(config.catalogue)
    asyncio.get_running_loop().create_task(_serve_once_routable(service, manager, router))
    admin_address = (f"unix:{config.worker_socket}.admin" if config.worker_socket
                     else f"{config.admin.host}:{service.admin.port}")
    log.info("query service on %s:%d (admin %s): %s version %d, rollback target %s (index %s, cache %s)",
             config.host, service.data.port, admin_address, config.model,
             manager.live_version, manager.rollback_target, ",".join(config.index.addresses),
             redacted_url(config.cache.url) or ("in process only" if cache is not None else "off"))
    return service, recommender, router


def _cache_config(config: QueryServiceConfig) -> CacheConfig:
    """The result cache's config. Without --cache-key-file a worker of a pool signs with its supervisor's
    secret, so the workers read each other's entries in their shared Redis (a random key of each worker's own
    would make every sibling's entry invalid). The live history keeps plain ids then (see live_history.py):
    entries signed with the pool's key would be lost to every other replica and to the pool's next start."""
    if config.cache.mac_key or not config.worker_socket:
        return config.cache
    return dataclasses.replace(config.cache, mac_key=pool_secret(config.worker_socket))


async def _serve_once_routable(service: ServiceWithAdmin, manager: VersionManager, router: IndexRouter) -> None:
    """Reports SERVING as soon as every shard of the live version has an index
    endpoint at the catalogue generation its tower here is at (searches go only
    to endpoints caught up with it). Later losses of the index tier do not flip
    health: requests then fail UNAVAILABLE at once, and the fallback path keeps working."""
    while True:
        version, tower = manager.get()
        if await router.wait_routable(version, 30.0, tower.catalogue_generation):
            break
        log.warning("waiting for an index endpoint holding version %d at catalogue generation >= %d (endpoints: %s)%s",
                    version, tower.catalogue_generation, router.describe(), _lag_hint(router, version))
    await service.set_serving(True)


def _lag_hint(router: IndexRouter, version: int) -> str:
    """What ends the wait when endpoints hold ``version`` at an older catalogue generation only: their own
    catch-up within their --catalogue-catch-up-period-s, else (that off, or a delta they refuse) the operator's."""
    if not router.routable(version):
        return ""
    return (f"; endpoints hold it at catalogue generation {router.routable_generation(version)}: an index slot "
            "applies the registry's deltas by itself (--catalogue-catch-up-period-s), else run `recsys-catalogue "
            "--catch-up` (--registry, --model, --index-admin of every slot), and see the slots' logs for a refused "
            "delta")


async def _serve(config: QueryServiceConfig) -> None:
    service, recommender, router = await create_server(config)
    try:
        await serve_until_signalled(service.stop, drain=service.data, drain_s=config.drain_s)
    finally:
        await recommender.close()
        await router.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    config = parse(build_parser(), QueryServiceConfig, argv)
    if config.workers > 1:
        warnings = []
        if config.cache.url and not config.cache.mac_key:
            warnings.append("no --cache-key-file: values in Redis are authenticated with a key of this pool only "
                            "(its workers share it), so other replicas and restarts of the pool cannot use them")
        run_workers("recsys-query-service", "query_service.server", argv, config, config.workers, warnings,
                    config.worker_hung_s)
        return
    run_main("recsys-query-service", _serve(config), config.log_level, config.metrics_port,
             config.metrics_host, config.log_format, config.tracing)


if __name__ == "__main__":
    main()
