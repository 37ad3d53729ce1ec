"""Routing of pinned searches to the index endpoints that hold their version.

The query service is given every index endpoint (every slot) and learns from
the endpoints themselves, through their status streams, which versions each
holds and in which state; nobody keeps a map by hand. A search pinned to
version V goes to an endpoint holding V READY or SERVING (round-robin over
several, the next one on failure); with none, it fails UNAVAILABLE at once.
An endpoint must also have applied V's catalogue deltas at least up to the
generation the asking tower knows: one behind would answer from a catalogue
older than the one the replica names in its responses and cache keys.
Promoting a version on the query side therefore switches the index endpoint
its searches reach: blue-green at the index tier is a routing switch.

A version published in N shards is searched on one endpoint per shard (each
says which shard of how many it serves) and the shards' top-k are merged by
score (a crowded search's shards answer uncrowded, and the merge crowds them,
asking deeper, no more at once than a shard's --max-k, until its answer is one
index's: ``merge.CrowdedMerge``; first as deep as recent searches of its shape
needed); it is routable only while every shard has a holder, so shards of
different versions never mix.

Replicas (several endpoints holding one version and shard) give failover: a
call that fails UNAVAILABLE is tried once on another replica, and a call not
answered within ``hedge_ms`` is sent to another replica too, the first answer
winning (hedging, as in "The Tail at Scale"). A replica that failed or was
hedged is passed over for ``SUSPECT_S`` while others can answer, so a hung
one costs a handful of requests the hedge delay, not every other request
until its status stream falls silent.

/metrics says how many endpoints can answer each version and shard
(``recsys_index_holders``): a replica that reports SERVING while no endpoint
holds its live version shows a 0 there, not only failed searches.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
from typing import Awaitable, Callable, Iterator, TypeVar

import prometheus_client
from prometheus_client.core import GaugeMetricFamily

from model_registry.manifest import shard_of
from query_service.index.index_client import IndexEndpoint
from query_service.index.merge import Ask, CrowdedMerge, tokens_only
from query_service.index.searches import IndexHits, IndexQuery, OverMaxK, SimilarQuery, TimedOut
from serving import errors, validation
from serving.lifecycle.admin import EndpointInfo, VersionInfo
from serving.rpc.tls import ClientTls
from serving.telemetry.log_throttle import LogThrottle
from serving.telemetry.observability import ScrapeTimeCollector
from settings.flags import MAX_DEADLINE_S, check_address, option, require, require_distinct, require_valid

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a replica that failed or was out-run by a hedge is passed over.
SUSPECT_S = 1.0
# Hedges are a small share of calls: when every replica is slow (overload), a
# second copy of each call would add load, not cut latency.
HEDGE_BUDGET = 0.05
HEDGE_BURST = 10  # hedges allowed on top of the budget's share (a start, a burst after a quiet time)
# The budget counts recent calls and hedges only (halved every window): a quiet hour would otherwise bank
# hedges for an overload to spend, while a second's calls cover those in flight to a replica that hangs.
HEDGE_WINDOW_S = 1.0
# What makes another replica worth one try: it died, is overloaded, or no longer holds the version.
RETRYABLE = (errors.Unavailable, errors.FailedPrecondition)
# With no holder every miss of the version fails: one line per version this often says so, not one per miss.
NO_HOLDER_LOG_S = 5.0
# A version searched (or waited for) this recently is in /metrics with its holders even while none holds it;
# a retired one drops out, rather than reading as an outage forever.
ASKED_S = 300.0
REROUTES = prometheus_client.Counter(
    "recsys_index_reroutes", "Index searches sent to a second endpoint holding their version: hedged (the first had "
    "not answered in --index-hedge-ms) or retried (the first failed UNAVAILABLE or FAILED_PRECONDITION)", ["reason"])
_HEDGED, _RETRIED = REROUTES.labels("hedged"), REROUTES.labels("retried")

@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    addresses: tuple[str, ...] = option((), "every index endpoint HOST:PORT (every slot and shard), comma-separated",
                                        flag="index-address")
    # Above the ~1.6 s a 1M-candidate load used to stall an index process; loads
    # now happen in idle slots, but a big batch under load can still take a while.
    timeout_s: float = option(validation.DEFAULT_INDEX_DEADLINE_S, "deadline of each index RPC", flag="index-timeout-s")
    hedge_ms: float = option(25.0, "a search not answered this long after it was sent goes to another replica of "
                                   "its version and shard too, the first answer winning (0: never); above the "
                                   "index's p99 under load, so only a stalled replica's calls are hedged",
                             flag="index-hedge-ms")
    tls: ClientTls = option(ClientTls(), "TLS to the index endpoints", prefix="index-tls-")

    def __post_init__(self) -> None:
        # gRPC reads a deadline ~1e10 s away as already passed: every call without a client deadline failed.
        require(0 < self.timeout_s <= MAX_DEADLINE_S, "timeout_s", f"must be positive and at most "
                f"{MAX_DEADLINE_S:,.0f} s (a day)")
        require(self.hedge_ms >= 0, "hedge_ms", "must be >= 0")
        # 127.0.0.1:72547 reached port 7011 (gRPC takes the port modulo 65536); a repeat was two endpoints.
        require_distinct(self.addresses, "addresses")
        for address in self.addresses:
            require_valid(check_address, address, "addresses")


class IndexRouter:
    """Watches every index endpoint and routes pinned searches. Safe for one event loop."""

    def __init__(self, config: RoutingConfig, model: str = ""):
        """Endpoints of ``config.addresses``; an endpoint that serves a model other than ``model`` (this replica's;
        "" takes any) holds nothing here."""
        self.config = config
        self.endpoints = [IndexEndpoint(address, config.tls, model) for address in config.addresses]
        # One turn per shard: a shared one, taken by each shard of a search in order, would give a shard's
        # replicas the same turn every time and all its first tries to one of them.
        self._turns: dict[int, itertools.count] = collections.defaultdict(itertools.count)
        self._suspect_until: dict[str, float] = {}  # address -> time.monotonic() until which it is passed over
        self._calls = self._hedges = 0.0  # decayed counts (HEDGE_WINDOW_S) as of _counted_at
        self._counted_at = time.monotonic()
        self._watchers: list[asyncio.Task] = []
        self._changed: asyncio.Condition | None = None
        self._listeners: list = []
        self._no_holder_log = LogThrottle()  # by version
        self._unrouted: dict[int, int] = {}  # version -> the highest catalogue generation a search lacked a holder at
        # version -> (time.monotonic() it was last routed or waited for, the highest catalogue generation asked)
        self._asked: dict[int, tuple[float, int]] = {}
        self._merge = CrowdedMerge()  # with how deep crowded searches of each shape asked their shards

    @property
    def timeout_s(self) -> float:
        """The longest a search may take (``IndexBackend``)."""
        return self.config.timeout_s

    def start(self) -> None:
        """Starts following every endpoint's status stream (on the running loop)."""
        self._changed = asyncio.Condition()
        self._watchers = [asyncio.get_running_loop().create_task(e.watch(self._on_change)) for e in self.endpoints]
        HOLDERS.track(self.holder_counts)

    def listen(self, callback) -> None:
        """Calls ``callback()`` (on the event loop) whenever what the endpoints hold changes."""
        self._listeners.append(callback)

    def _on_change(self) -> None:
        self._log_routable_again()
        for callback in self._listeners:
            callback()
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def shard_count(self, version: int) -> int:
        """How many shards ``version`` is split into, as the endpoints holding it say (1: unsharded)."""
        return max((max(e.shards, 1) for e in self.endpoints if e.holds(version)), default=1)

    def holders(self, version: int, generation: int = 0, shard: int = 0) -> list[IndexEndpoint]:
        """The endpoints answering ``shard`` of ``version`` from catalogue ``generation`` on."""
        shards = self.shard_count(version)
        return [e for e in self.endpoints if e.holds(version, generation) and e.serves(shard, shards)]

    def routable(self, version: int, generation: int = 0) -> bool:
        """Whether every shard of ``version`` has an endpoint holding it at catalogue ``generation`` or later."""
        return all(self.holders(version, generation, s) for s in range(self.shard_count(version)))

    def routable_generation(self, version: int) -> int:
        """The highest catalogue generation at which ``version`` is ``routable`` (0 where it is not routable)."""
        return min(max((e.generations.get(version, 0) for e in self.holders(version, 0, shard)), default=0)
                   for shard in range(self.shard_count(version)))

    def _asking(self, version: int, generation: int) -> None:
        self._asked[version] = (time.monotonic(), max(generation, self._asked.get(version, (0.0, 0))[1]))

    def holder_counts(self) -> dict[tuple[int, int], int]:
        """(version, shard) -> how many endpoints answer that shard of the version, for every version an
        endpoint holds (from any catalogue generation) and every version asked for within ``ASKED_S`` (from
        the latest generation asked). Read on the metrics server's thread: the endpoints' maps are replaced,
        never changed in place, and ``_asked`` is copied in one step."""
        now = time.monotonic()
        wanted = {version: generation for version, (at, generation) in list(self._asked.items())
                  if now - at <= ASKED_S}
        for endpoint in self.endpoints:
            for version in list(endpoint.versions):
                if endpoint.holds(version):
                    wanted.setdefault(version, 0)
        return {(version, shard): len(self.holders(version, generation, shard))
                for version, generation in wanted.items() for shard in range(self.shard_count(version))}

    async def wait_routable(self, version: int, timeout_s: float, generation: int = 0) -> bool:
        """Whether ``version`` is ``routable`` at catalogue ``generation`` within ``timeout_s``."""
        self._asking(version, generation)
        async with self._changed:
            try:
                async with asyncio.timeout(timeout_s):  # not wait_for, which may swallow a cancellation (3.11)
                    await self._changed.wait_for(lambda: self.routable(version, generation))
            except asyncio.TimeoutError:
                return False
        return True

    def describe(self) -> dict[str, dict[int, str]]:
        """What each endpoint holds and at which catalogue generation, by address (for logs and errors)."""
        return {e.address + (f" (shard {e.shard} of {e.shards})" if e.shards else ""):
                {v: f"{s.value}, catalogue generation {e.generations.get(v, 0)}" for v, s in e.versions.items()}
                for e in self.endpoints}

    def report(self, live_version: int, generation: int) -> list[EndpointInfo]:
        """Each endpoint as this router sees it, for the admin status (built when asked, from what the status
        streams said: no call), with what keeps searches from it and what fixes that: it never answered, holds
        nothing, or holds ``live_version`` behind ``generation`` (the live tower's catalogue generation)."""
        out = []
        live_served = self.routable(live_version)
        for e in self.endpoints:
            held = e.generations.get(live_version, 0)
            if not e.slot:
                problem = (f"unreachable: its status stream has not answered since this replica started; start the "
                           f"index slot at {e.address}, or fix --index-address (or the --index-tls- flags): this "
                           f"replica's log says why ('index endpoint {e.address} unreachable')")
            elif e.other_model:
                problem = (f"serves model {e.other_model!r}, not this replica's {e.model!r}: nothing is routed to it; "
                           f"fix --index-address to list only index endpoints of model {e.model!r}")
            elif not e.streaming:
                problem = ("its status stream broke (the slot stopped, hung or drains): nothing is routed to it until "
                           "it answers again; start the slot again, or drop it from --index-address")
            elif not e.versions and not live_served:
                # Beside slots serving every shard of the live version, an empty one is the next rollout's
                # (blue-green's green).
                problem = ("its slot holds nothing: load a version into it (recsys-publish), or drop it from "
                           "--index-address")
            elif e.holds(live_version) and held < generation:
                problem = (f"holds live version {live_version} at catalogue generation {held}, behind this replica's "
                           f"tower at {generation}: searches pass it over until it catches up (a slot does by "
                           "itself, --catalogue-catch-up-period-s); if it stays behind, run recsys-catalogue "
                           f"--catch-up --version {live_version} --index-admin <its admin address>")
            else:
                problem = ""
            versions = [VersionInfo(v, state, catalogue_generation=e.generations.get(v, 0))
                        for v, state in sorted(e.versions.items())]
            out.append(EndpointInfo(e.address, e.slot, e.shard, e.shards, versions, problem))
        return out

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float | None = None) -> list[IndexHits]:
        """Searches ``queries`` in ``version`` on endpoints that hold it at the
        catalogue generation they need (``_route``): one per shard, merged."""
        generation = max(q.min_generation for q in queries)
        shards = self.shard_count(version)
        if shards == 1:  # awaited in place: gather would wrap it in a task, ~25 us of a miss's CPU
            return await self._route(version, generation, timeout_s,
                                     lambda endpoint, left: endpoint.search(queries, version, left))
        deadline = asyncio.get_running_loop().time() + (self.timeout_s if timeout_s is None else timeout_s)
        return await self._within_max_k(version, generation, shards, lambda max_ks: self._search_shards(
            queries, version, generation, deadline, max_ks))

    async def _search_shards(self, queries: list[IndexQuery], version: int, generation: int, deadline: float,
                             max_ks: list[int]) -> list[IndexHits]:
        """``search`` of a sharded version by ``deadline`` (the loop's time), shard ``s`` answering at most
        ``max_ks[s]`` results a query."""
        loop = asyncio.get_running_loop()
        depths = [[self._merge.first_depth(version, q, len(max_ks), max_k) for max_k in max_ks] for q in queries]

        def ask(shard: int, wanted: list[Ask]) -> Awaitable[list[IndexHits]]:
            batch = [a.of(queries[a.query]) for a in wanted]
            return self._route(version, generation, deadline - loop.time(),
                               lambda endpoint, left: endpoint.search(batch, version, left), shard)

        parts = await asyncio.gather(*(ask(shard, [Ask(i, depths[i][shard], tokens_only(q.filter))
                                                   for i, q in enumerate(queries)]) for shard in range(len(max_ks))))
        return await self._merge.merge(version, queries, [[part[i] for part in parts] for i in range(len(queries))],
                                       depths, max_ks, ask)

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float | None = None) -> IndexHits:
        """A candidate's neighbours in ``version``, routed as ``search`` is. In a
        sharded version, the candidate's own shard (``shard_of``) answers first,
        with the candidate's vector; the other shards are then searched with it,
        and all their top-k merged."""
        shards = self.shard_count(version)
        if shards == 1:
            return await self._route(version, query.min_generation, timeout_s,
                                     lambda endpoint, left: endpoint.similar(query, version, left))
        deadline = asyncio.get_running_loop().time() + (self.timeout_s if timeout_s is None else timeout_s)
        return await self._within_max_k(version, query.min_generation, shards, lambda max_ks: self._similar_shards(
            query, version, deadline, max_ks))

    async def _similar_shards(self, query: SimilarQuery, version: int, deadline: float, max_ks: list[int]) \
            -> IndexHits:
        """``similar`` in a sharded version by ``deadline`` (the loop's time), shard ``s`` answering at most
        ``max_ks[s]`` results."""
        loop = asyncio.get_running_loop()
        shards = len(max_ks)
        owner = int(shard_of([query.candidate_id], shards)[0])
        depths = [self._merge.first_depth(version, query, shards, max_k) for max_k in max_ks]
        uncrowded = tokens_only(query.filter)

        def own(similar: SimilarQuery, with_vector: bool = False) -> Awaitable[IndexHits]:
            return self._route(version, query.min_generation, deadline - loop.time(),
                               lambda endpoint, left: endpoint.similar(similar, version, left, with_vector), owner)

        found = await own(Ask(0, depths[owner], uncrowded).of(query), with_vector=True)
        # The candidate lives in its owner's shard only: excluding it elsewhere too would push a caller's
        # allowed MAX_EXCLUSIONS over the index's limit.
        near = IndexQuery(found.vector, query.k, query.exclusions, uncrowded, min_generation=query.min_generation)

        async def ask(shard: int, wanted: list[Ask]) -> list[IndexHits]:
            (a,) = wanted  # the one query's
            if shard == owner:
                return [await own(a.of(query))]
            batch = [a.of(near)]
            return await self._route(version, query.min_generation, deadline - loop.time(),
                                     lambda endpoint, left: endpoint.search(batch, version, left), shard)

        others = [shard for shard in range(shards) if shard != owner]
        parts = dict(zip(others, await asyncio.gather(*(ask(shard, [Ask(0, depths[shard], uncrowded)])
                                                        for shard in others))))
        parts[owner] = [found]
        return (await self._merge.merge(version, [query], [[parts[shard][0] for shard in range(shards)]], [depths],
                                        max_ks, ask))[0]

    def _max_ks(self, version: int, generation: int, shards: int) -> list[int]:
        """The most results each shard of ``version`` is asked for at once: the default --max-k, or the lowest
        --max-k an endpoint holding the shard named when it refused a deeper search (``IndexEndpoint.max_k``)."""
        return [min([validation.DEFAULT_MAX_K] + [e.max_k for e in self.holders(version, generation, shard)])
                for shard in range(shards)]

    async def _within_max_k(self, version: int, generation: int, shards: int,
                            search: Callable[[list[int]], Awaitable[T]]) -> T:
        """``search(max_ks)`` (``_max_ks``), again while a shard refuses a search as over its --max-k and so
        names a lower one: a search that meets an endpoint started with a lower --max-k learns it, and no search
        asks that endpoint deeper again. Refused for the caller's own k (over a shard's --max-k), it fails."""
        while True:
            max_ks = self._max_ks(version, generation, shards)
            try:
                return await search(max_ks)
            except OverMaxK:
                if all(now >= before for now, before in zip(self._max_ks(version, generation, shards), max_ks)):
                    raise

    def _log_no_holder(self, version: int, generation: int, shard: int, shards: int) -> None:
        self._unrouted[version] = max(generation, self._unrouted.get(version, 0))
        unlogged = self._no_holder_log.due(version, NO_HOLDER_LOG_S)
        if unlogged is None:
            return
        log.warning("no index endpoint holds version %d (shard %d of %d) at catalogue generation >= %d "
                    "(endpoints: %s)%s", version, shard, shards, generation, self.describe(),
                    f"; {unlogged} more failures for want of a holder of version {version} since the last such line"
                    if unlogged else "")

    def _log_routable_again(self) -> None:
        """Ends the outage of each version that failed searches for want of a holder and has one again: a line
        saying so, with the failures no line reported (the next outage has its own line at once)."""
        for version, generation in list(self._unrouted.items()):
            if self.routable(version, generation):
                del self._unrouted[version]
                unlogged = self._no_holder_log.end(version)
                log.info("index endpoints hold version %d again at catalogue generation >= %d (endpoints: %s)%s",
                         version, generation, self.describe(),
                         f"; {unlogged} more failures for want of a holder of version {version} since the last "
                         "such line" if unlogged else "")

    def _ordered(self, holders: list[IndexEndpoint], shard: int) -> list[IndexEndpoint]:
        """``holders`` round-robin, the ones passed over (``SUSPECT_S``) last."""
        first = next(self._turns[shard]) % len(holders)
        turn = holders[first:] + holders[:first]
        now = time.monotonic()
        return sorted(turn, key=lambda e: self._suspect_until.get(e.address, 0.0) > now)

    def _suspect(self, endpoint: IndexEndpoint, why: str) -> None:
        if self._suspect_until.get(endpoint.address, 0.0) <= time.monotonic():
            log.warning("index endpoint %s %s: passing over it for %.1fs", endpoint.address, why, SUSPECT_S)
        self._suspect_until[endpoint.address] = time.monotonic() + SUSPECT_S

    def _may_hedge(self) -> bool:
        return self.config.hedge_ms > 0 and self._hedges < HEDGE_BUDGET * self._calls + HEDGE_BURST

    def _count_call(self) -> None:
        now = time.monotonic()
        decay = 0.5 ** ((now - self._counted_at) / HEDGE_WINDOW_S)
        self._calls, self._hedges, self._counted_at = self._calls * decay + 1, self._hedges * decay, now

    async def _route(self, version: int, generation: int, timeout_s: float | None,
                     call: Callable[[IndexEndpoint, float], Awaitable[T]], shard: int = 0) -> T:
        """``call(endpoint, seconds left)`` on an endpoint holding ``shard`` of
        ``version`` at catalogue ``generation`` or later. On an UNAVAILABLE or
        FAILED_PRECONDITION answer (the endpoint died, or no longer holds it) the
        next holder, if any, gets one try; a call unanswered after ``hedge_ms``
        is sent to the next holder too, and the first answer wins. All tries
        share one deadline: ``timeout_s`` (the callers' time left), at most the
        configured one."""
        self._asking(version, generation)
        holders = self.holders(version, generation, shard)
        if not holders:
            shards = self.shard_count(version)
            self._log_no_holder(version, generation, shard, shards)
            if any(e.holds(version) and e.serves(shard, shards) for e in self.endpoints):
                raise errors.Unavailable(
                    f"no index endpoint holding version {version} has caught up with its catalogue generation "
                    f"{generation} yet: the index slots apply catalogue deltas (ApplyCatalogue); retry shortly")
            if shards > 1:
                raise errors.Unavailable(f"no index endpoint holds shard {shard} of version {version} ({shards} "
                                         "shards): an index slot serving that shard must be up")
            raise errors.Unavailable(f"no index endpoint holds version {version}: an index slot holding it must be up")
        loop = asyncio.get_running_loop()
        budget_s = self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s)
        deadline = loop.time() + budget_s
        tries = self._ordered(holders, shard)[:2]
        self._count_call()
        if len(tries) == 1:
            return await call(tries[0], deadline - loop.time())
        first = loop.create_task(call(tries[0], deadline - loop.time()))
        try:
            await asyncio.wait({first}, timeout=self.config.hedge_ms / 1000 if self._may_hedge() else None)
            if not first.done() and not self._may_hedge():  # calls waiting beside this one spent the budget
                await asyncio.wait({first})
            if first.done():
                try:
                    return first.result()
                except TimedOut:
                    raise
                except RETRYABLE as e:
                    self._suspect(tries[0], f"failed ({e})")
                    log.warning("index endpoint %s: %s; trying %s", tries[0].address, e, tries[1].address)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise errors.Unavailable(f"index endpoint {tries[0].address} failed and the call's "
                                             f"{budget_s:.3g} s were spent: {tries[1].address} was not tried")
                _RETRIED.inc()
                return await call(tries[1], remaining)
            self._hedges += 1
            _HEDGED.inc()
            self._suspect(tries[0], f"has not answered in {self.config.hedge_ms:g} ms (hedged)")
            second = loop.create_task(call(tries[1], deadline - loop.time()))
            return await _first_answer(first, second)
        finally:
            first.cancel()

    async def close(self) -> None:
        HOLDERS.untrack(self.holder_counts)
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for endpoint in self.endpoints:
            await endpoint.close()


async def _first_answer(first: asyncio.Task, second: asyncio.Task):
    """The result of whichever of two calls answers first; a retryable failure
    of one leaves the other to answer. The loser is cancelled."""
    pending = {first, second}
    try:
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            failures = [task.exception() for task in done]
            for task, failure in zip(done, failures):
                if failure is None:
                    return task.result()
            if not pending or not isinstance(failures[0], RETRYABLE):
                raise failures[0]
    finally:
        for task in pending:
            task.cancel()


class HolderCollector(ScrapeTimeCollector[dict[tuple[int, int], int]]):
    """``recsys_index_holders{version,shard}`` of the routers started in this process (``holder_counts``)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts: collections.Counter[tuple[int, int]] = collections.Counter()
        for source in self.sources():
            counts.update(source())  # keeps zeros: a version nobody holds is the point of the gauge
        family = GaugeMetricFamily(
            "recsys_index_holders", "Index endpoints a query replica can send searches of each shard of a version "
            f"to: every version an endpoint holds, and every version it searched in the last {ASKED_S / 60:g} "
            "minutes (0: an outage of that version)", labels=["version", "shard"])
        for (version, shard), count in sorted(counts.items()):
            family.add_metric([str(version), str(shard)], count)
        yield family


HOLDERS = HolderCollector()
prometheus_client.REGISTRY.register(HOLDERS)
