"""The open-loop run: requests sent at their scheduled times over the run's channels, the swap's admin steps in a
process of their own, and what came back recorded."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, TextIO

from recsys_client.loadtest.config import RPCS, LoadConfig, SwapConfig
from recsys_client.loadtest.report import (CACHED_RPCS, DROPPED, ERROR, OK, Event, ProgressMeter, RequestLog,
                                           build_report, new_histogram, record_latency, sample_indices)
from recsys_client.loadtest.traffic import CustomerSampler, RpcDraws
from serving.rpc.enum_names import enum_name


def connect_timeout_s(config: LoadConfig) -> float:
    """How long to wait for the channels to connect before giving up."""
    return max(config.timeout_s, 10.0)


# The run's clock: monotonic with ns resolution. The event loop's own clock is
# not used for timing because uvloop's loop.time() is whole milliseconds.
clock_ns = time.perf_counter_ns


# The longest the schedule sleeps at once, so that a stop is acted on within it at any --qps.
STOP_POLL_S = 0.1


def seconds_since(t0_ns: int) -> float:
    """Seconds from ``t0_ns`` (a ``clock_ns`` reading) to now."""
    return (clock_ns() - t0_ns) / 1e9


async def _run_event(event: Event, fn: Callable[[], Any], t0_ns: int, pool: ProcessPoolExecutor, stop: asyncio.Event,
                     after: asyncio.Task | None = None, requires: Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    if after is not None:
        await after  # a rollback must not race the publish it undoes
    if requires is not None and not requires.ok:
        # Rolling back a publish that failed would undo the *previous* rollout instead.
        event.error = f"skipped: {requires.name} did not succeed"
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(0.0, event.planned_at_s - seconds_since(t0_ns)))
    if stop.is_set():  # a run stopped early changes no version it was not already changing
        event.error = "skipped: the run was stopped before it"
        return
    event.start_s = seconds_since(t0_ns)
    try:
        event.result = await loop.run_in_executor(pool, fn)
        event.ok = True
    except Exception as e:  # noqa: BLE001 - reported, and the load goes on
        event.ok, event.error = False, f"{type(e).__name__}: {e}"
    event.end_s = seconds_since(t0_ns)


# Held by the admin process while a swap step runs: once its parent is gone, it ends after the step (``_orphaned``).
_STEP = threading.Lock()


def _admin_action(swap: SwapConfig, act: Callable[..., tuple[int, dict[str, float]]]) -> dict[str, Any]:
    """Runs ``act(fleet, registry, swap)`` in the admin process on a fresh
    connection to the replicas; the version it made live and where the time
    went (``connect``: the admin tool's channels, then ``act``'s own steps)."""
    with _STEP:
        return _admin_step(swap, act)


def _admin_step(swap: SwapConfig, act: Callable[..., tuple[int, dict[str, float]]]) -> dict[str, Any]:
    from model_registry import Registry
    from recsys_client.fleet import Fleet

    start = time.perf_counter()
    fleet = Fleet.connect(swap.index_admin, swap.query_admin, swap.admin_token, swap.admin_timeout_s, tls=swap.tls)
    connect_s = round(time.perf_counter() - start, 3)
    try:
        version, steps = act(fleet, Registry(swap.registry, swap.model), swap)
        return {"version": version, "steps_s": {"connect": connect_s, **steps}}
    finally:
        fleet.close()


def _rollout(fleet, registry, swap: SwapConfig) -> tuple[int, dict[str, float]]:
    from recsys_client.publish import publish_version

    return swap.version, publish_version(fleet, registry, swap.version, drain_s=0.0)


def _rollback(fleet, registry, swap: SwapConfig) -> tuple[int, dict[str, float]]:
    from recsys_client.publish import rollback

    start = time.perf_counter()
    version = rollback(fleet, registry)
    return version, {"switch": round(time.perf_counter() - start, 3)}


def _admin_process() -> ProcessPoolExecutor:
    """A process for the admin actions: their gRPC channels and threads would
    otherwise share this process's GIL with the load and skew its latencies.
    It ignores SIGINT and SIGTERM: a terminal's Ctrl-C, and `timeout` or
    systemd's stop, reach the whole process group, and would cut a rollout off
    with no undo; the run's own stop lets the step under way finish. A parent
    that ended at once (a second signal: ``os._exit`` shuts no pool down) would
    leave it waiting for work for good: it ends once its step is done."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_admin_start)


def _admin_start() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    threading.Thread(target=_orphaned, args=(multiprocessing.parent_process().sentinel,), daemon=True).start()


def _orphaned(parent: int) -> None:
    """Ends the admin process once its parent is gone, after the swap step under way."""
    multiprocessing.connection.wait([parent])
    with _STEP:
        os._exit(0)


async def _connect(channels: list, stop: asyncio.Event, timeout_s: float) -> None:
    """Waits until every channel is ready, or ``stop`` is set; TimeoutError past ``timeout_s``."""
    connected = asyncio.ensure_future(asyncio.gather(*(c.channel_ready() for c in channels)))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({connected, stopping}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (connected, stopping):
            future.cancel()
    if not done:
        raise TimeoutError(f"channels not ready within {timeout_s:g} s")
    if connected in done:
        connected.result()  # a channel's failure, raised here rather than logged as never retrieved


def _import_admin_modules() -> None:
    import recsys_client.publish  # noqa: F401  (the child's imports, before the timed run)


async def run_load(config: LoadConfig, *, progress: TextIO | None = None,
                   log: RequestLog | None = None, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Runs the open-loop load described by ``config`` (and its swap scenario,
    if any) and returns the report as a JSON-serializable dict.

    ``progress``: where to write a line per second while it runs (None: nowhere).
    ``log``: a RequestLog to append each request's row to, for a caller that
    wants the raw latencies (a fresh one otherwise). ``stop``: once set, no
    more requests are sent and no swap step begins; the report covers what
    was (``stopped_at_s``: when)."""
    import grpc

    from protos.recsys.v1 import retrieval_pb2 as pb
    from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    stopped_at_s: float | None = None
    total = config.total_requests
    interval_ns = 1e9 / config.qps
    # Drawn up front so the run is reproducible and no sampling happens on the hot path.
    sampler = CustomerSampler(config.num_customers, config.customer_format, config.distribution,
                              config.zipf_s, config.seed)
    customers = sampler.draw(total)
    work = RpcDraws(config, total, sampler)
    to_sample = sample_indices(total, config.sample_responses)

    log = log if log is not None else RequestLog()
    send_lag = new_histogram()
    errors_by_code: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    hits_by_rpc: Counter[str] = Counter()
    samples: list[dict] = []
    cache_hits = 0
    in_flight = 0
    sent = 0
    last_done_ns = 0

    # A local subchannel pool per channel gives each its own TCP connection;
    # otherwise identical channels share one and --channels would be moot.
    channels = [config.tls.aio_channel(config.address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(config.channels)]
    stubs = [pb_grpc.QueryServiceStub(c) for c in channels]
    admin: ProcessPoolExecutor | None = None
    ticker: asyncio.Task | None = None
    try:
        # Connect first so connection set-up is not charged to the first requests; a stop meanwhile sends none.
        await _connect(channels, stop, connect_timeout_s(config))
        events: list[Event] = []
        event_tasks: list[asyncio.Task] = []
        t0 = clock_ns()
        if config.swap is not None and not stop.is_set():
            admin = _admin_process()
            try:
                await loop.run_in_executor(admin, _import_admin_modules)
            except BrokenProcessPool:  # a Ctrl-C reached it before it ignored SIGINT: no swap step will run
                if not stop.is_set():
                    raise
            t0 = clock_ns()
            swap_event = Event("swap", config.swap.at_s)
            events.append(swap_event)
            event_tasks.append(asyncio.create_task(
                _run_event(swap_event, functools.partial(_admin_action, config.swap, _rollout), t0, admin, stop)))
            if config.swap.rollback_at_s is not None:
                rollback_event = Event("rollback", config.swap.rollback_at_s)
                events.append(rollback_event)
                event_tasks.append(asyncio.create_task(_run_event(
                    rollback_event, functools.partial(_admin_action, config.swap, _rollback), t0, admin, stop,
                    after=event_tasks[0], requires=swap_event)))
        meter = ProgressMeter(log, events)

        async def tick() -> None:
            second = 1
            while True:
                await asyncio.sleep(max(0.0, second - seconds_since(t0)))
                print(meter.line(second - 1, 1.0, sent, in_flight), file=progress, flush=True)
                second += 1

        if progress is not None:
            ticker = asyncio.create_task(tick())

        def call(i: int, rpc: str):
            stub = stubs[i % len(stubs)]
            if rpc == "similar":
                return stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=work.candidates[i], k=config.k),
                                             timeout=config.timeout_s)
            if rpc == "batch":
                requests = [pb.RecommendRequest(customer_id=c, k=config.k) for c in work.batch(i, customers[i])]
                return stub.BatchRecommend(pb.BatchRecommendRequest(requests=requests), timeout=config.timeout_s)
            if rpc == "record":
                return stub.RecordInteractions(pb.RecordInteractionsRequest(
                    customer_id=customers[i], candidate_ids=[work.candidates[i]]), timeout=config.timeout_s)
            return stub.Recommend(pb.RecommendRequest(customer_id=customers[i], k=config.k), timeout=config.timeout_s)

        async def one(i: int, scheduled: int) -> None:
            nonlocal in_flight, cache_hits, last_done_ns
            record_latency(send_lag, (clock_ns() - scheduled) // 1000)
            sched_s = (scheduled - t0) / 1e9
            code = int(work.rpcs[i])
            rpc = RPCS[code]
            try:
                response = await call(i, rpc)
            except grpc.aio.AioRpcError as e:
                errors_by_code[e.code().name] += 1
                log.add(sched_s, ERROR, rpc=code)
            except Exception as e:  # noqa: BLE001 - a client-side failure is still a failed request
                errors_by_code[type(e).__name__] += 1
                log.add(sched_s, ERROR, rpc=code)
            else:
                latency_us = (clock_ns() - scheduled) // 1000
                answers = list(response.responses) if rpc == "batch" else [] if rpc == "record" else [response]
                version = 0 if rpc == "record" else response.model_version
                log.add(sched_s, OK, latency_us, version, code)
                hits_by_rpc[rpc] += sum(a.cache_hit for a in answers)
                if rpc in CACHED_RPCS:
                    cache_hits += response.cache_hit
                for answer in answers:
                    sources[enum_name(pb.ResultSource, answer.source)] += 1
                if i in to_sample and rpc == "recommend":
                    samples.append({"index": i, "scheduled_s": round(sched_s, 4),
                                    "customer_id": customers[i], "model_version": response.model_version,
                                    "candidate_ids": [c.candidate_id for c in response.candidates],
                                    "cache_hit": response.cache_hit,
                                    "source": enum_name(pb.ResultSource, response.source)})
            finally:
                in_flight -= 1
                last_done_ns = max(last_done_ns, clock_ns() - t0)

        tasks: set[asyncio.Task] = set()
        i = 0
        due = t0
        while i < total:
            if stop.is_set():
                stopped_at_s = seconds_since(t0)
                break
            now = clock_ns()
            # Launch everything that is due, even if the loop woke up late: each
            # keeps its own scheduled time, so lateness shows up as latency.
            while i < total and due <= now:
                if in_flight >= config.concurrency:
                    log.add((due - t0) / 1e9, DROPPED, rpc=int(work.rpcs[i]))
                else:
                    in_flight += 1
                    sent += 1
                    task = asyncio.create_task(one(i, due))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                i += 1
                due = t0 + int(i * interval_ns)
            if i < total:
                # uvloop's timers are whole milliseconds and may fire a little
                # early; the loop then sleeps again for what is left (at most
                # STOP_POLL_S at a time: a stop is seen that soon at any rate).
                await asyncio.sleep(min(STOP_POLL_S, max(0.0, (due - clock_ns()) / 1e9)))
        if tasks:
            await asyncio.gather(*tasks)
        if event_tasks:
            await asyncio.gather(*event_tasks)
        # The schedule's length (to the stop, where one came), or longer where answers arrived after it: the
        # time of the last answer alone made a short run's rate its requests over one round trip.
        elapsed = max(last_done_ns / 1e9, config.duration_s if stopped_at_s is None else stopped_at_s)
        if ticker is not None:
            ticker.cancel()
            # The last, partial second (and an event that ended in it).
            last_second = math.floor(seconds_since(t0))
            if meter.pending:
                print(meter.line(last_second, seconds_since(t0) - last_second, sent, in_flight),
                      file=progress, flush=True)
        samples.sort(key=lambda s: s["index"])
        return build_report(config, log, elapsed_s=elapsed, errors_by_code=errors_by_code, cache_hits=cache_hits,
                            sources=sources, events=events, samples=samples, cache_hits_by_rpc=hits_by_rpc,
                            send_lag=send_lag, stopped_at_s=stopped_at_s)
    finally:
        if ticker is not None:
            ticker.cancel()
        for channel in channels:
            await channel.close()
        if admin is not None:
            admin.shutdown()
