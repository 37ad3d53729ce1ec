"""The query replica's admin operations: towers load beside the live one, and
promote / rollback are routing switches.

Promoting version V makes requests pin to V, so their searches reach the index
endpoints holding V; it is refused unless every shard of V has an endpoint
holding it at the catalogue generation V's tower here is at (a version without
its index would fail every request, and so would one whose index is behind the
tower: searches go only to endpoints caught up with it). The version live
before becomes the rollback target, and a rollback promotes it back (under the
same check): its tower is still loaded here and its index is still in its slot.

Loading a version also warms the result cache for it (``Recommender.warm``)
when an index endpoint already holds it, as a rollout's order guarantees: the
promotion that follows then finds the replica's recent requests cached.

Catalogue deltas a ``recsys-catalogue`` run did not bring here are taken by
the replica itself (``follow_catalogue``), up to the generation its index
endpoints hold, as soon as their status streams say they moved on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Awaitable, Callable

from model_registry.deltas import WRITER_GRACE_S
from query_service.index.routing import IndexRouter
from serving.errors import FailedPrecondition, InvalidArgument
from serving.lifecycle.admin import CatalogueCatchUp, StatusReport, VersionAdmin
from serving.lifecycle.loader import Loader
from serving.lifecycle.sources import StartupVersions
from serving.lifecycle.versions import VersionManager

if TYPE_CHECKING:  # TensorFlow: the --workers supervisor imports this module and loads no model
    from query_service.tower import QueryModel

log = logging.getLogger(__name__)

# How long a promotion waits for the index endpoints to report the version
# (their status streams push a change within milliseconds of a load).
ROUTE_WAIT_S = 5.0


class QueryAdmin(VersionAdmin["QueryModel"]):
    """Admin operations of a query replica (see the module docstring)."""

    service = "query"

    def __init__(self, manager: VersionManager[QueryModel], loader: Loader[QueryModel], router: IndexRouter,
                 warm: Callable[[int], Awaitable[int]] | None = None):
        super().__init__(manager, loader)
        self.router = router
        self._warm = warm

    def follow_catalogue(self, config: CatalogueCatchUp, grace_s: float = WRITER_GRACE_S) -> asyncio.Task | None:
        """As ``VersionAdmin.follow_catalogue``, and looks at once whenever an index endpoint's status changes."""
        self.router.listen(self.nudge)
        return super().follow_catalogue(config, grace_s)

    def catalogue_ceiling(self, version: int) -> int | None:
        """The generation every shard of ``version`` has an index endpoint at: a tower ahead of its index
        endpoints could not route a search (they must be at its generation), so the query tier follows the
        index tier, which follows the registry. A replica a recsys-catalogue run missed then answers from the
        index's catalogue (its deletions out of the popularity fallback too) and its cache keys name it."""
        return self.router.routable_generation(version)

    def full_status(self) -> StatusReport:
        """``status`` with the index endpoints as this process's router sees them, each naming what keeps the
        live version's searches from it, if anything (``IndexRouter.report``)."""
        report = self.status()
        tower = next((v.catalogue_generation for v in report.versions if v.version == report.live_version), 0)
        return dataclasses.replace(report, index_endpoints=self.router.report(report.live_version, tower))

    def start(self, startup: StartupVersions) -> None:
        """Loads the live version and, best effort, the rollback target (blocking)."""
        if startup.rollback_target is not None:
            try:
                self._load_into_manager(startup.rollback_target, make_live=True)
            except FailedPrecondition as e:
                log.warning("rollback target %d not loaded: %s", startup.rollback_target, e)
        self._load_into_manager(startup.live, make_live=True)  # the other one becomes the rollback target

    async def load(self, version: int) -> StatusReport:
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        await self.loader.run(self._load_into_manager, version)
        if self._warm is not None and version != self.manager.live_version:
            await self._warm_cache(version)
        return self.status()

    async def _warm_cache(self, version: int) -> None:
        """Best effort: a warm-up only saves misses, so its failure never fails the load."""
        if not self.router.routable(version):
            log.info("version %d not warmed: no index endpoint holds it yet", version)
            return
        started = time.perf_counter()
        try:
            warmed = await self._warm(version)
        except Exception as e:  # noqa: BLE001 - logged; the promotion then starts with misses
            log.warning("warm-up of version %d failed (%s: %s); it will start with a cold cache", version,
                        type(e).__name__, e)
            return
        log.info("warmed the cache for version %d: %d requests in %.2fs", version, warmed,
                 time.perf_counter() - started)

    async def promote(self, version: int) -> StatusReport:
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        _, tower = self.manager.get(version)  # FailedPrecondition unless its tower is loaded here
        generation = tower.catalogue_generation
        if not await self.router.wait_routable(version, ROUTE_WAIT_S, generation):
            if not self.router.routable(version):
                raise FailedPrecondition(f"no index endpoint holds version {version} (endpoints: "
                                         f"{self.router.describe()}); load it into an idle index slot first")
            raise FailedPrecondition(
                f"no index endpoint holds version {version} at catalogue generation >= {generation} (its tower here "
                f"is at {generation}); endpoints: {self.router.describe()}; apply the version's catalogue deltas to "
                f"the index slot holding it first (recsys-catalogue, or ApplyCatalogue on the slot's admin port)")
        self.manager.promote(version)
        log.info("promoted version %d (rollback target %s)", version, self.manager.rollback_target)
        return self.status()

    async def rollback(self) -> StatusReport:
        target = self.manager.rollback_target
        if target is None:
            raise FailedPrecondition(f"no rollback target is loaded (live: {self.manager.live_version})")
        return await self.promote(target)

    async def unload(self, version: int) -> StatusReport:
        if version < 1:  # else get(0) would answer for the live version
            raise InvalidArgument(f"version={version}: versions are positive integers")
        self.manager.get(version)  # FailedPrecondition unless loaded
        await self.loader.run(self._drop, version)
        return self.status()
