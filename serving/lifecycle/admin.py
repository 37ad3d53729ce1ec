"""Admin operations over a service's versions, free of gRPC.

A service is built from TensorFlow Serving's three roles, made once in its
``create_server``: a *source* (``serving.lifecycle.sources``: which versions it should
hold at start), a *loader* (``serving.lifecycle.loader``: verify, load, self-test off the
request path) and a *manager* (``serving.lifecycle.versions``: the loaded versions and
the live one). ``VersionAdmin`` is what the admin plane calls on top of them;
each service subclasses it with its own meaning of load / promote / rollback
(an index slot replaces what it holds; a query replica switches routing).
Catalogue deltas (``model_registry.deltas``) are the same operation on both:
the loaded version catches up with the registry's log, on ``ApplyCatalogue``
and by itself (``follow_catalogue``): a replica that a ``recsys-catalogue`` run
did not reach (left off its flags, unreachable, the run killed) would else
serve deleted candidates, or wait for an index slot, until someone ran
``recsys-catalogue --catch-up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from typing import Generic, Iterator, Protocol, TypeVar

from model_registry import Manifest, VersionError
from model_registry.deltas import WRITER_GRACE_S, Delta, published_generation, read_deltas, record_stat
from serving.errors import FailedPrecondition, InvalidArgument
from serving.lifecycle.loader import Loader
from serving.lifecycle.versions import State, VersionManager
from settings.flags import option, require

log = logging.getLogger(__name__)

# A catch-up that keeps failing the same way (a registry unreadable) is logged again after this long, not each period.
FAILING_LOG_S = 60.0
# A shorter period is a typo (0.001 for 1?): each look is a stat of the registry, a busy loop on a network volume.
MIN_CATCH_UP_PERIOD_S = 0.05


@dataclasses.dataclass(frozen=True)
class CatalogueCatchUp:
    """How a replica catches up by itself with the catalogue deltas of the versions it holds."""

    period_s: float = option(2.0, "how often the replica looks for a catalogue delta of a version it holds that it "
                                  "has not applied (one stat of the next delta's name) and applies it as "
                                  f"ApplyCatalogue does: an index slot, once the delta is {WRITER_GRACE_S:g} s old "
                                  "(until then it is left to the recsys-catalogue run that wrote it); a query "
                                  "replica, up to the generation its index endpoints hold, at once when they move "
                                  "on. 0: never (only ApplyCatalogue, e.g. recsys-catalogue --catch-up)")

    def __post_init__(self) -> None:
        require(self.period_s == 0 or MIN_CATCH_UP_PERIOD_S <= self.period_s < math.inf, "period_s",
                f"must be 0 (no catch-up of its own) or from {MIN_CATCH_UP_PERIOD_S:g} s, finite")


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a load measured: its time, the memory the version holds and, for
    an index, its recall@10 against exact search (None where none is measured),
    measured again after catalogue deltas at ``recall_generation``."""

    load_seconds: float
    memory_bytes: int
    self_test_recall: float | None = None
    recall_generation: int = 0


class Servable(Protocol):
    """What the admin plane reads of a loaded version, and how it takes catalogue deltas."""

    manifest: Manifest
    report: LoadReport
    catalogue_generation: int
    num_candidates: int

    def apply_catalogue(self, deltas: list[Delta], generation: int) -> None: ...


S = TypeVar("S", bound=Servable)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    version: int
    state: State
    num_candidates: int = 0
    embedding_dim: int = 0
    report: LoadReport | None = None
    catalogue_generation: int = 0


@dataclasses.dataclass(frozen=True)
class EndpointInfo:
    """An index endpoint as a query replica's router sees it (``IndexRouter.report``)."""

    address: str
    slot: str  # "" until its status stream first answers
    shard: int  # the shard it serves, of ``shards`` (0: whole versions)
    shards: int
    versions: list[VersionInfo]  # state and catalogue generation only
    problem: str = ""  # what keeps searches from it and what fixes it ("": nothing)


@dataclasses.dataclass(frozen=True)
class StatusReport:
    model: str
    service: str  # "index" or "query"
    live_version: int  # 0: none
    versions: list[VersionInfo]
    slot: str = ""  # index slots only
    shard: tuple[int, int] | None = None  # an index endpoint of a sharded version: (its shard, of how many)
    status_watchers: int = 0  # index slots: the status streams served now (``VersionAdmin.watched``)
    index_endpoints: list[EndpointInfo] = dataclasses.field(default_factory=list)  # query replicas, GetStatus only


class VersionAdmin(Generic[S]):
    """The admin operations of one service over its manager and loader.
    Subclasses define ``load``, ``promote``, ``rollback`` and ``unload``."""

    service = "base"
    slot = ""  # an index slot's name
    status_watchers = 0  # the status streams this process serves now (``watched``)

    def __init__(self, manager: VersionManager[S], loader: Loader[S]):
        self.manager = manager
        self.loader = loader
        self._applying = asyncio.Lock()  # one catalogue catch-up at a time
        # version -> (generation, its record's sha256) of the last catch-up: the next reads the log from there
        self._caught_up: dict[int, tuple[int, str]] = {}
        self._nudged: asyncio.Event | None = None  # set: follow_catalogue looks now, not at its next period
        self._follower: asyncio.Task | None = None
        # version -> what its own catch-up was refused at (its generation, and the next record as stat'ed or the
        # ceiling), so a refused delta is not read and verified again every period
        self._refused: dict[int, tuple[int, ...]] = {}
        # version -> (the next record as first stat'ed, the monotonic time of that look): the writer's grace also
        # ends that long after this replica first saw the record, whatever its mtime (a clock ahead of ours)
        self._first_seen: dict[int, tuple[tuple[int, int], float]] = {}
        self._failing: dict[int, tuple[str, float]] = {}  # version -> (why its catch-up fails, when that was logged)

    def _drop(self, version: int, allow_live: bool = False) -> None:
        """Takes a version out of the manager and frees it (blocking: a full GC)."""
        self.manager.remove(version, allow_live=allow_live)
        self._caught_up.pop(version, None)
        self._refused.pop(version, None)
        self._first_seen.pop(version, None)
        self._failing.pop(version, None)
        Loader.released()
        log.info("%s: unloaded %s version %d", self.service, self.manager.model, version)

    def _load_into_manager(self, version: int, make_live: bool = False, manifest: Manifest | None = None) -> None:
        """Loads ``version`` unless it is loaded or loading (blocking); ``manifest``:
        the version was just verified."""
        if not self.manager.begin_loading(version):
            return
        try:
            servable = self.loader.load(version, manifest)
        except BaseException:
            self.manager.abandon_loading(version)
            raise
        self.manager.add(version, servable, make_live=make_live)

    async def apply_catalogue(self, version: int, generation: int) -> StatusReport:
        """Catches loaded ``version`` up with its catalogue deltas in the registry, to
        ``generation`` (0: all published). Runs on a thread of normal priority: an
        index slot applies deltas while it serves, and holds a lock searches wait on."""
        if version < 1 or generation < 0:
            raise InvalidArgument(f"version={version}, generation={generation}: give a loaded version (>= 1) and a "
                                  "generation >= 0 (0: every delta published)")
        _, servable = self.manager.get(version)
        registry = self.loader.registry
        async with self._applying:
            published = await asyncio.to_thread(published_generation, registry.model_dir, version,
                                                 servable.catalogue_generation)
            target = generation or published
            if target > published:
                raise FailedPrecondition(f"version {version} has {published} catalogue deltas in the registry, not "
                                         f"{target}: publish the delta first (recsys-catalogue)")
            if target > servable.catalogue_generation:
                at, sha = self._caught_up.get(version, (0, ""))
                try:
                    deltas = await asyncio.to_thread(read_deltas, registry.model_dir, version,
                                                     servable.catalogue_generation, target, self.loader.public_key,
                                                     sha if at == servable.catalogue_generation else "")
                    # The version's own checks (an index's vector dimension) refuse as the log's do.
                    await asyncio.to_thread(servable.apply_catalogue, deltas, target)
                except VersionError as e:
                    raise FailedPrecondition(f"catalogue deltas of version {version} refused: {e}") from e
                self._caught_up[version] = (target, deltas[-1].record_sha256)
                self.after_catalogue(version, servable)
                log.info("%s: version %d at catalogue generation %d (%d candidates)", self.service, version, target,
                         servable.num_candidates)
                self.manager.announce()
        return self.status()

    def follow_catalogue(self, config: CatalogueCatchUp, grace_s: float = WRITER_GRACE_S) -> asyncio.Task | None:
        """Starts the replica's own catch-up (see ``CatalogueCatchUp``) on the running loop: every
        ``config.period_s``, and when ``nudge``d, each held version takes the deltas ``catalogue_ceiling`` allows
        through ``apply_catalogue`` (its verified read, its applier and its rests, one catch-up at a time with
        ``ApplyCatalogue``). Returns its task, None when the period is 0."""
        if config.period_s == 0:
            return None
        self._nudged = asyncio.Event()
        # Held here: the loop keeps only a weak reference to a task.
        self._follower = asyncio.get_running_loop().create_task(self._follow(config.period_s, grace_s))
        return self._follower

    def nudge(self) -> None:
        """Has the catch-up look now rather than at its next period."""
        if self._nudged is not None:
            self._nudged.set()

    async def _follow(self, period_s: float, grace_s: float) -> None:
        while True:
            self._nudged.clear()
            for version, (_, servable) in self.manager.states().items():
                if servable is not None:
                    await self._catch_up(version, servable.catalogue_generation, grace_s)
            try:
                async with asyncio.timeout(period_s):  # not wait_for, which may swallow a cancellation (3.11)
                    await self._nudged.wait()
            except asyncio.TimeoutError:
                pass

    async def _catch_up(self, version: int, at: int, grace_s: float) -> None:
        """One look at ``version``, held at catalogue generation ``at``: applies what ``catalogue_ceiling`` allows
        (an index slot: every delta published, the next one at least ``grace_s`` old). A refusal is logged once
        and tried again only once the refused record is another file (or the ceiling moves); any other failure,
        next period."""
        ceiling = self.catalogue_ceiling(version)
        if ceiling is not None and ceiling <= at:
            return
        try:  # the probe too: a registry it cannot stat (permissions, a network volume) must not end the catch-up
            if ceiling is not None:
                target, seen = ceiling, (at, ceiling)
            else:
                probed = await asyncio.to_thread(record_stat, self.loader.registry.model_dir, version, at + 1)
                if probed is None or not self._past_grace(version, at + 1, probed, grace_s):
                    return
                target, seen = 0, (at, probed.st_ino, probed.st_mtime_ns)  # 0: every delta published
            if self._refused.get(version) == seen:
                return
            await self.apply_catalogue(version, target)
        except FailedPrecondition as e:
            self._refused[version] = seen
            log.warning("%s: version %d did not catch up with its catalogue deltas by itself (it stays at "
                        "generation %d): %s", self.service, version, at, e)
        except Exception as e:  # noqa: BLE001 - a registry read that failed (a network volume, say): next period
            cause, now = type(e).__name__, time.monotonic()
            last = self._failing.get(version)
            if last is None or last[0] != cause or now - last[1] >= FAILING_LOG_S:  # not a line every period
                self._failing[version] = (cause, now)
                log.warning("%s: version %d could not catch up with its catalogue deltas (it stays at generation %d; "
                            "tried again every period, this said again in %gs while it fails so): %s: %s",
                            self.service, version, at, FAILING_LOG_S, cause, e)
        else:
            self._refused.pop(version, None)
            self._failing.pop(version, None)

    def _past_grace(self, version: int, generation: int, probed, grace_s: float) -> bool:
        """Whether the record of ``generation`` (``probed``, its stat) is ``grace_s`` old by its mtime, or was first
        seen here ``grace_s`` ago: an mtime in the future (the writer's clock ahead of this one) would else keep a
        delta a run missed from every replica until this clock caught up."""
        key, now = (generation, probed.st_ino), time.monotonic()
        seen = self._first_seen.get(version)
        if seen is None or seen[0] != key:
            seen = self._first_seen[version] = (key, now)
        return time.time() - probed.st_mtime >= grace_s or now - seen[1] >= grace_s

    def catalogue_ceiling(self, version: int) -> int | None:
        """The catalogue generation loaded ``version`` may catch up to by itself: None for every delta published
        (the index tier); a query replica overrides it."""
        return None

    def after_catalogue(self, version: int, servable: S) -> None:
        """Called on the event loop after ``version`` took catalogue deltas."""

    def status(self) -> StatusReport:
        infos = []
        for version, (state, servable) in self.manager.states().items():
            if servable is None:
                infos.append(VersionInfo(version, state))
            else:
                infos.append(VersionInfo(version, state, servable.num_candidates, servable.manifest.embedding_dim,
                                         servable.report, servable.catalogue_generation))
        return StatusReport(self.manager.model, self.service, self.manager.live_version or 0, infos, self.slot,
                            status_watchers=self.status_watchers)

    def full_status(self) -> StatusReport:
        """What GetStatus answers: ``status`` and what only that call shows, built then (a query replica adds
        its index endpoints), not on every load, promotion or metrics scrape."""
        return self.status()

    @contextlib.contextmanager
    def watched(self) -> Iterator[None]:
        """Counts a status stream in ``status_watchers`` while the block serves it, however it ends. Each query
        replica process watches every index endpoint it is given through one stream: recsys-publish compares the
        count with the query replicas it was given, so one left out is found even when it sends no search."""
        self.status_watchers += 1
        try:
            yield
        finally:
            self.status_watchers -= 1
