"""The cache warm-up of a version loaded beside the live one.

Cache keys carry the version, so a promotion starts a cold cache: at a hit rate
that the service is sized for, every request would then be a miss at once. A
warm-up answers the replica's most recent requests (Recommend and
RecommendSimilar) with the new version, batched, before it is promoted
(TensorFlow Serving's warm-up requests, played against the cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable, Hashable

from settings.flags import option, require

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmupConfig:
    requests: int = option(10_000, "most recent distinct requests (Recommend, RecommendSimilar) answered with a "
                                   "new version before it is promoted, to fill the cache (0: no warm-up)",
                           flag="warmup-requests")
    budget_s: float = option(10.0, "longest a warm-up may take", flag="warmup-budget-s")
    batch_size: int = option(64, "requests per tower call and index search of a warm-up", flag="warmup-batch-size")
    duty_cycle: float = option(0.25, "share of the warm-up's time spent working: it rests between batches so "
                                     "that the live version's traffic keeps its latency (1: no rest)",
                               flag="warmup-duty-cycle")

    def __post_init__(self) -> None:
        require(self.requests >= 0, "requests", "must be >= 0")
        require(self.budget_s > 0, "budget_s", "must be > 0")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(0 < self.duty_cycle <= 1, "duty_cycle", "must be in (0, 1]")


class Warmup:
    """The replica's latest distinct requests, most recent last (what a warm-up replays), and the
    warm-up that answers them. An OrderedDict iterates in recency order, which cachetools'
    LRUCache does not expose."""

    def __init__(self, config: WarmupConfig):
        self.config = config
        self.recent: OrderedDict[Hashable, None] = OrderedDict()

    def remember(self, request: Hashable) -> None:
        """Notes an answered request (a failed one is not worth warming)."""
        recent = self.recent
        try:
            recent.move_to_end(request)  # most requests were seen before: one dict lookup
        except KeyError:
            recent[request] = None
            if len(recent) > self.config.requests:
                recent.popitem(last=False)

    async def run(self, version: int, warm_batch: Callable[[list], Awaitable[int]]) -> int:
        """Answers the remembered requests, most recent first, ``batch_size`` at a time with
        ``warm_batch`` (which caches the answers and returns how many); returns how many were cached.
        Stops at the warm-up's budget (a batch under way then ends first); a failed batch is skipped (its
        requests stay misses).

        The warm-up shares the replica and the machine with live traffic: between batches it rests
        for as long as the duty cycle asks, so that its searches take CPU in short, spaced bursts
        rather than for a second. A rest that would end past the budget is not taken: the warm-up
        stops there, as it does after its last batch (the load waits on neither)."""
        config = self.config
        requests = list(reversed(self.recent))  # a snapshot: traffic goes on meanwhile
        deadline = time.monotonic() + config.budget_s
        warmed = failed = 0
        first_failure = ""
        for start in range(0, len(requests), config.batch_size):
            batch_started = time.monotonic()
            try:
                warmed += await warm_batch(requests[start:start + config.batch_size])
            except Exception as e:  # noqa: BLE001 - a tower or client failure costs its batch only, as an index's does
                failed += 1
                first_failure = first_failure or f"{type(e).__name__}: {e}"
            worked = time.monotonic() - batch_started
            if start + config.batch_size >= len(requests):
                break
            rest = worked * (1 - config.duty_cycle) / config.duty_cycle
            if time.monotonic() + rest < deadline:
                await asyncio.sleep(rest)
                if time.monotonic() < deadline:  # the live traffic may have made the rest late
                    continue
            log.warning("warm-up of version %d stopped at its %.1fs budget: %d of %d requests cached",
                        version, config.budget_s, warmed, len(requests))
            break
        if failed:
            log.warning("warm-up of version %d: %d batches failed (first: %s); their requests stay misses", version,
                        failed, first_failure)
        return warmed
