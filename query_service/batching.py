"""Dynamic micro-batching of concurrent requests (as TF Serving's batching does).

A tower call or a ScaNN search costs nearly the same for 1 or 64 queries, so
under load it pays to process concurrent requests together. A batch takes
what queued while earlier batches were busy, and waits up to ``max_wait_ms``
for more (0: never waits, so a lone request pays nothing and batches grow with
load); a full batch goes at once. Up to ``max_in_flight`` batches are processed
concurrently, but a batch starts beside one still in flight only after waiting
``overlap_after_ms`` for it to finish: under load, misses then gather behind
the batch in the tower and the index into fewer, larger batches (one index call
each; with the slot taken first and the loop's turn below, server CPU per miss at
32 callers in a closed loop went 2,135-2,389 -> 1,793-2,089 us, and to ~1,160 us
with one batch in flight: docs/BENCHMARKS.md), while a slow batch (a hung index
replica being hedged) holds the next one back no longer than that.

A batch runs in the context (``contextvars``) of its first request, so its
request id and trace span are the parents of the work done for the batch: a
batch of one is traced as its request. A larger batch's work runs in a span of
its own, linked to every other request's span, and the lines it logs (as JSON)
carry every request's id in ``batch_request_ids``.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, TypeVar

import prometheus_client

from serving.errors import ResourceExhausted
from serving.telemetry import tracing
from serving.telemetry.observability import BATCH_REQUEST_IDS, REQUEST_ID
from settings.flags import option, require

I = TypeVar("I")
O = TypeVar("O")

BATCH_SIZE = prometheus_client.Histogram(
    "recsys_batch_size", "Requests per micro-batch processed (callers that left before it are not counted), by batcher "
    "(the method that processes its batches; a query replica's Recommender._process_misses takes every request its "
    "in-process tier missed, those Redis then answers included)", ["batcher"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))


@dataclass(frozen=True)
class BatchingConfig:
    max_batch_size: int = option(32, "most cache misses batched into one tower call and index search",
                                 flag="max-batch-size")
    max_wait_ms: float = option(0.0, "longest a miss waits for a batch to fill; 0 batches only what queued while "
                                     "the tower or the index was busy", flag="batch-wait-ms")
    max_in_flight: int = option(4, "batches processed at once", flag="max-batches-in-flight")
    overlap_after_ms: float = option(2.0, "a batch starts while another is in flight only after waiting this long "
                                          "for it to finish (0: at once)", flag="batch-overlap-after-ms")
    max_queued: int = option(1024, "requests waiting for a batch; beyond it a request is refused RESOURCE_EXHAUSTED "
                                   "at once rather than queued", flag="max-queued-misses")

    def __post_init__(self) -> None:
        require(self.max_batch_size >= 1, "max_batch_size", "must be >= 1")
        require(self.max_wait_ms >= 0, "max_wait_ms", "must be >= 0")
        require(self.max_in_flight >= 1, "max_in_flight", "must be >= 1")
        require(self.overlap_after_ms >= 0, "overlap_after_ms", "must be >= 0")
        require(self.max_queued >= 1, "max_queued", "must be >= 1")


class MicroBatcher(Generic[I, O]):
    """Collects items submitted from one event loop into batches for ``process``.

    ``process(items)`` returns one result per item, in order; a result that is an
    Exception is raised to that item's caller only. If ``process`` itself raises,
    every caller of that batch gets the exception. At ``max_queued`` items
    waiting, ``submit`` refuses with ``ResourceExhausted``; a caller that gives
    up (is cancelled) before its batch runs is left out of it. Batch sizes go
    to ``recsys_batch_size`` under ``name`` (default: ``process``'s qualified name).
    """

    def __init__(self, process: Callable[[list[I]], Awaitable[list[O | Exception]]], config: BatchingConfig,
                 name: str = ""):
        self._process = process
        self.config = config
        self._name = name or getattr(process, "__qualname__", "batch")
        self._sizes = BATCH_SIZE.labels(self._name)
        self._queue: asyncio.Queue[tuple[I, asyncio.Future, contextvars.Context]] = asyncio.Queue(config.max_queued)
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._finished = asyncio.Event()  # set when a batch finishes
        self._in_flight = 0  # batches being processed (a finished task leaves _running a loop turn later)
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, item: I) -> O:
        if self._collector is None:
            # Its own context: it would otherwise keep the first caller's request id and span forever.
            self._collector = asyncio.get_running_loop().create_task(self._collect(), context=contextvars.Context())
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future, contextvars.copy_context()))
        except asyncio.QueueFull:
            raise ResourceExhausted(f"{self.config.max_queued} requests are already waiting for a batch: this "
                                    f"replica is overloaded; retry with backoff or on another replica") from None
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # A slot first, then the batch: what queues while every slot is busy joins this batch.
            await self._slots.acquire()
            if self._in_flight and self.config.overlap_after_ms > 0:
                self._finished.clear()
                try:
                    async with asyncio.timeout(self.config.overlap_after_ms / 1000):  # wait_for may swallow a cancel
                        await self._finished.wait()
                except asyncio.TimeoutError:
                    pass
            # One turn of the event loop before taking the rest: on a saturated loop
            # the requests already received run their handlers up to their submit and
            # join this batch (at 32 callers in a closed loop, 91% of batches were of
            # one without it); on an idle loop it costs a few microseconds.
            await asyncio.sleep(0)
            deadline = loop.time() + self.config.max_wait_ms / 1000
            while len(batch) < self.config.max_batch_size:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        async with asyncio.timeout(remaining):
                            batch.append(await self._queue.get())
                    except asyncio.TimeoutError:
                        break
                else:
                    batch.append(self._queue.get_nowait())
            # The batch runs in its first request's context: not one whose caller left while the batch waited.
            batch = [entry for entry in batch if not entry[1].done()]
            if not batch:
                self._slots.release()
                continue
            self._in_flight += 1
            task = loop.create_task(self._run(batch), context=batch[0][2])
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[tuple[I, asyncio.Future, contextvars.Context]]) -> None:
        try:
            pending = [entry for entry in batch if not entry[1].done()]  # skip cancelled callers
            if not pending:
                return
            self._sizes.observe(len(pending))
            own = batch[0][2]  # this task's context (a caller may have left since the batch was made)
            others = [context for _, _, context in pending if context is not own]
            if others:  # set in this task's context, a copy of the first request's
                BATCH_REQUEST_IDS.set(tuple(context.get(REQUEST_ID, "") for _, _, context in pending))
            try:
                with tracing.batch_span(f"batch {self._name}", others, len(pending)):
                    results = await self._process([item for item, _, _ in pending])
            except Exception as e:  # noqa: BLE001 - delivered to every caller of the batch
                results = [e] * len(pending)
            for (_, future, _), result in zip(pending, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._slots.release()
            self._finished.set()

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
