"""A request's time budget: the caller's remaining time, at most the index's timeout, for
the whole path, and on a timeout a message that says where the time went."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from serving.errors import DeadlineExceeded, Unavailable

T = TypeVar("T")

# The stages a miss goes through (``Progress``), and what a timeout spent mostly in one says was slow.
QUEUED = "queued in this replica for a micro-batch"
BATCHED = "in its cache lookup and tower call"
SEARCHING = "waiting on the index"
_SLOW = {QUEUED: "this replica is overloaded (its micro-batches were all busy)",
         BATCHED: "this replica's tower or Redis is slow", SEARCHING: "the index is overloaded or hung"}


@dataclass
class Progress:
    """The stages a request reached, in order, each with the event loop time it began: a timeout's
    message says where the time went from what was measured here."""

    stages: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def enter(self, stage: str) -> None:
        self.stages.append((stage, asyncio.get_running_loop().time()))

    def spent(self) -> tuple[str, str]:
        """The seconds spent in each stage until now, as words, and the stage that took the most."""
        ends = [began for _, began in self.stages[1:]] + [asyncio.get_running_loop().time()]
        spans = [(stage, end - began) for (stage, began), end in zip(self.stages, ends)]
        return ", ".join(f"{seconds:.2f}s {stage}" for stage, seconds in spans), max(spans, key=lambda s: s[1])[0]


async def within_budget(work: Callable[[float, Progress], Awaitable[T]], timeout_s: float | None,
                        index_timeout_s: float, first_stage: str) -> T:
    """``work(budget, progress)`` within the caller's remaining time ``timeout_s`` (None: no deadline), at most
    ``index_timeout_s``. ``progress`` starts at ``first_stage``; ``work`` enters the later stages it reaches, so a
    timeout says where the time went (a replica whose own queue is full is not a hung index)."""
    callers = timeout_s is not None and timeout_s < index_timeout_s
    budget = timeout_s if callers else index_timeout_s
    progress = Progress()
    progress.enter(first_stage)
    try:
        async with asyncio.timeout(budget):
            return await work(budget, progress)
    except TimeoutError:
        spent, slowest = progress.spent()
        if callers:
            raise DeadlineExceeded(f"the request's deadline ({budget:.3f}s left on arrival) passed "
                                   f"before it was answered: {spent}") from None
        raise Unavailable(f"no answer within {budget:.1f}s: {spent}: {_SLOW[slowest]}; "
                          "retry later or on another replica") from None
