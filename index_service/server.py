"""recsys-index-service: one index slot, serving ScaNN search over the version it holds."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from index_service.core import KEEPALIVE_S, IndexCore, SearchLimits
from index_service.searcher import CandidateIndex
from index_service.servicer import IndexServicer
from index_service.slot import SlotAdmin
from model_registry import Registry
from model_registry import manifest as files
from model_registry.registry import check_model_name
from model_registry.search import MIN_RECALL
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving.config import AdminConfig, ServiceConfig
from serving.lifecycle.admin import CatalogueCatchUp
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.sources import slot_startup
from serving.lifecycle.versions import VersionManager
from serving.rpc.admin_rpc import ServiceWithAdmin
from serving.rpc.grpc_server import ServiceSpec, run_main, serve_until_signalled
from serving.validation import DEFAULT_INDEX_DEADLINE_S
from settings.flags import MAX_DEADLINE_S, ConfigError, add_flags, option, parse, require

log = logging.getLogger(__name__)
SERVICE_NAME = "recsys.v1.IndexService"


@dataclasses.dataclass(frozen=True)
class IndexServiceConfig(ServiceConfig):
    port: int = option(50051, "gRPC data-plane port (0 picks a free one)")
    admin: AdminConfig = option(AdminConfig(port=50061), "admin plane", prefix="admin-")
    slot: str = option("", "this index slot's name (e.g. blue, green): the registry records the version it holds "
                           "under it, and a restart reloads that version")
    shard: int | None = option(None, "the shard this endpoint serves of versions published with --index-shards N "
                                     "(0..N-1); unset: whole, unsharded versions. A slot's shards share its name")
    search_threads: int = option(2, "threads running ScaNN searches")
    limits: SearchLimits = option(SearchLimits(), "bounds of a search call")
    min_recall: float = option(MIN_RECALL, "a version whose index recall@10 vs exact search on its probe queries "
                                           "is lower is refused")
    busy_window_s: float = option(DEFAULT_INDEX_DEADLINE_S, "a load is refused while the slot has answered a search "
                                                            "this recently (it serves live traffic)")
    keepalive_s: float = option(KEEPALIVE_S, "status stream keepalive: watchers take the slot as hung after three "
                                     "missed ones")
    catalogue: CatalogueCatchUp = option(CatalogueCatchUp(), "catalogue catch-up", prefix="catalogue-catch-up-")

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            check_model_name(self.slot or "?", "slot name")
        except ValueError as e:
            raise ConfigError("slot", str(e) if self.slot else "is required: name this index slot (e.g. blue)") \
                from None
        require(self.search_threads >= 1, "search_threads", "must be >= 1")
        require(self.shard is None or self.shard >= 0, "shard", "must be >= 0")
        require(0.0 <= self.min_recall <= 1.0, "min_recall", "must be in [0, 1]")
        # Below 0 (or NaN) no slot is ever busy: a load would go into the one serving live traffic.
        require(self.busy_window_s >= 0, "busy_window_s", "must be >= 0")
        # 1e300: a hung slot never seen as hung by its watchers.
        require(0 < self.keepalive_s <= MAX_DEADLINE_S, "keepalive_s", f"must be over 0 and at most {MAX_DEADLINE_S:g}")


async def create_server(config: IndexServiceConfig) -> tuple[ServiceWithAdmin, IndexCore]:
    """Builds the slot's manager, loader and admin, starts both servers and
    loads what the slot holds (its record, or ``--version``). Health: the
    server ("") is SERVING once that start-up is done, an empty slot included
    (it is up and takes loads); ``recsys.v1.IndexService`` is SERVING while the
    slot holds a version."""
    registry = Registry(config.registry, config.model)
    startup = slot_startup(registry, config.slot, config.version)  # a broken record stops the start here
    manager: VersionManager[CandidateIndex] = VersionManager(config.model)
    key = config.public_key()

    def load(path, manifest) -> CandidateIndex:
        return CandidateIndex.load(path, manifest, config.min_recall, config.shard, key)

    # An idle slot loads: at idle CPU priority.
    loader = Loader(registry, load, "index", Background.IDLE, files.index_reads(config.shard), key)
    core = IndexCore(manager, ThreadPoolExecutor(config.search_threads, thread_name_prefix="scann"),
                     limits=config.limits, keepalive_s=config.keepalive_s)
    admin = SlotAdmin(config.slot, registry, manager, loader, lambda: core.last_search, config.busy_window_s,
                      config.min_recall)
    loop = asyncio.get_running_loop()
    core.bind(loop)
    servicer = IndexServicer(core, admin, config.max_message_bytes)
    spec = ServiceSpec(pb_grpc.add_IndexServiceServicer_to_server, servicer, SERVICE_NAME)
    service = await ServiceWithAdmin.start(spec, admin, config)
    # Watchers that keep routing to a draining slot send it searches after it stops taking calls.
    service.data.on_drain(core.drain)
    manager.listen(lambda: loop.call_soon_threadsafe(
        lambda: asyncio.ensure_future(service.set_serving(manager.live_version is not None, [SERVICE_NAME]))))
    try:
        await loader.run(admin.start, startup)
    except BaseException:
        await service.stop(0)
        raise
    admin.follow_catalogue(config.catalogue)
    await service.set_serving(True, [""])
    log.info("index slot %s on %s:%d (admin %s:%d): %s version %s", config.slot, config.host, service.data.port,
             config.admin.host, service.admin.port, config.model, manager.live_version or "none (empty slot)")
    return service, core


async def _serve(config: IndexServiceConfig) -> None:
    service, _ = await create_server(config)
    await serve_until_signalled(service.stop, drain=service.data, drain_s=config.drain_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-index-service", description=__doc__)
    add_flags(parser, IndexServiceConfig)
    return parser


def main(argv: list[str] | None = None) -> None:
    config = parse(build_parser(), IndexServiceConfig, argv)
    run_main("recsys-index-service", _serve(config), config.log_level, config.metrics_port,
             config.metrics_host, config.log_format, config.tracing)


if __name__ == "__main__":
    main()
