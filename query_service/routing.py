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
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from typing import Awaitable, Callable, TypeVar

from query_service.index_client import IndexEndpoint, IndexHits, IndexQuery, SimilarQuery
from serving import errors
from serving.tls import ClientTls
from settings.flags import option, require

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    addresses: tuple[str, ...] = option((), "every index endpoint HOST:PORT (every slot), comma-separated",
                                        flag="index-address")
    # Above the ~1.6 s a 1M-candidate load used to stall an index process; loads
    # now happen in idle slots, but a big batch under load can still take a while.
    timeout_s: float = option(3.0, "deadline of each index RPC", flag="index-timeout-s")
    tls: ClientTls = option(ClientTls(), "TLS to the index endpoints", prefix="index-tls-")

    def __post_init__(self) -> None:
        require(self.timeout_s > 0, "timeout_s", "must be positive")


class IndexRouter:
    """Watches every index endpoint and routes pinned searches. Safe for one event loop."""

    def __init__(self, config: RoutingConfig):
        self.config = config
        self.endpoints = [IndexEndpoint(address, config.tls) for address in config.addresses]
        self._turn = itertools.count()
        self._watchers: list[asyncio.Task] = []
        self._changed: asyncio.Condition | None = None
        self._listeners: list = []

    @property
    def timeout_s(self) -> float:
        """The longest a search may take (``IndexBackend``)."""
        return self.config.timeout_s

    def start(self) -> None:
        """Starts following every endpoint's status stream (on the running loop)."""
        self._changed = asyncio.Condition()
        self._watchers = [asyncio.get_running_loop().create_task(e.watch(self._on_change)) for e in self.endpoints]

    def listen(self, callback) -> None:
        """Calls ``callback()`` (on the event loop) whenever what the endpoints hold changes."""
        self._listeners.append(callback)

    def _on_change(self) -> None:
        for callback in self._listeners:
            callback()
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def holders(self, version: int, generation: int = 0) -> list[IndexEndpoint]:
        return [e for e in self.endpoints if e.holds(version, generation)]

    def routable(self, version: int) -> bool:
        return any(e.holds(version) for e in self.endpoints)

    async def wait_routable(self, version: int, timeout_s: float) -> bool:
        """Whether some endpoint holds ``version`` within ``timeout_s``."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.routable(version)), timeout_s)
            except asyncio.TimeoutError:
                return False
        return True

    def describe(self) -> dict[str, dict[int, str]]:
        """What each endpoint holds and at which catalogue generation, by address (for logs and errors)."""
        return {e.address: {v: f"state {s}, catalogue generation {e.generations.get(v, 0)}"
                            for v, s in e.versions.items()} for e in self.endpoints}

    async def search(self, queries: list[IndexQuery], version: int, timeout_s: float | None = None) -> list[IndexHits]:
        """Searches ``queries`` in ``version`` on an endpoint that holds it at the
        catalogue generation they need (``_route``)."""
        generation = max(q.min_generation for q in queries)
        return await self._route(version, generation, timeout_s,
                                 lambda endpoint, left: endpoint.search(queries, version, left))

    async def similar(self, query: SimilarQuery, version: int, timeout_s: float | None = None) -> IndexHits:
        """A candidate's neighbours in ``version``, routed as ``search`` is."""
        return await self._route(version, query.min_generation, timeout_s,
                                 lambda endpoint, left: endpoint.similar(query, version, left))

    async def _route(self, version: int, generation: int, timeout_s: float | None,
                     call: Callable[[IndexEndpoint, float], Awaitable[T]]) -> T:
        """``call(endpoint, seconds left)`` on an endpoint holding ``version`` at
        catalogue ``generation`` or later; on an UNAVAILABLE or FAILED_PRECONDITION
        answer (the endpoint died, or no longer holds it) the next holder, if any,
        gets one try. Both tries share one deadline: ``timeout_s`` (the callers'
        time left), at most the configured one."""
        holders = self.holders(version, generation)
        if not holders:
            log.warning("no index endpoint holds version %d at catalogue generation >= %d (endpoints: %s)",
                        version, generation, self.describe())
            if self.routable(version):
                raise errors.Unavailable(
                    f"no index endpoint holding version {version} has caught up with its catalogue generation "
                    f"{generation} yet: the index slots apply catalogue deltas (ApplyCatalogue); retry shortly")
            raise errors.Unavailable(f"no index endpoint holds version {version}: an index slot holding it must be up")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout_s if timeout_s is None else min(timeout_s, self.timeout_s))
        first = next(self._turn) % len(holders)
        tries = (holders[first:] + holders[:first])[:2]
        for endpoint in tries[:-1]:
            try:
                return await call(endpoint, deadline - loop.time())
            except (errors.Unavailable, errors.FailedPrecondition) as e:
                log.warning("index endpoint %s: %s; trying %s", endpoint.address, e, tries[-1].address)
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise errors.Unavailable(f"no index endpoint answered within {self.timeout_s:.1f}s")
        return await call(tries[-1], remaining)

    async def close(self) -> None:
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for endpoint in self.endpoints:
            await endpoint.close()
