"""What a serving process tells the outside about itself: Prometheus metrics
of every RPC, request ids that follow a request across services, and logs as
JSON lines.

The RPC metrics and the request id come from one server interceptor, so a call
pays for one extra layer, not one per concern: about 3 us of CPU per call
(``python -m tests.interceptor_cost``). Version states, recall
and memory are read from the admin plane's status when /metrics is scraped
(``VersionCollector``), so they cost requests nothing and are never stale.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import secrets
import threading
import time
from typing import Callable, Generic, Iterable, Iterator, TypeVar

import grpc
import prometheus_client
from google.protobuf import descriptor_pool
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.lifecycle.admin import StatusReport
from serving.telemetry import tracing
from serving.telemetry.core_calls import CoreCallCollector

S = TypeVar("S")

REQUEST_ID_KEY = "x-request-id"
# A longer id is replaced, not echoed: it goes into every log line of the request.
MAX_REQUEST_ID_CHARS = 128


def _usable_request_id(value: str) -> bool:
    """Whether a caller's id can be kept: short, and printable ASCII, which is all gRPC sends
    on (a raw HTTP/2 client can send other bytes; kept, they would fail the call to the index)."""
    return len(value) <= MAX_REQUEST_ID_CHARS and value.isascii() and value.isprintable()


# 25 us (most local cache hits are under 0.1 ms) .. 60 s (an admin LoadVersion or Promote with its warm-up):
# each step about 2-3x.
LATENCY_BUCKETS = (0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RPC_LATENCY = prometheus_client.Histogram(
    "recsys_rpc_latency_seconds", "Server-side latency of unary RPCs by service, method and status code (a request "
    "gRPC refuses over --max-message-bytes is in recsys_rpc_unreceived_requests_total instead)",
    ["service", "method", "code"], buckets=LATENCY_BUCKETS)
# gRPC refuses a request over the receive limit in its core, after the interceptors but before any handler, and
# tells Python nothing of why (grpc.aio's _handle_unary_unary_rpc: no request, so no handler and no status to see):
# all that can be seen is a unary call that ends without its request.
RPC_UNRECEIVED = prometheus_client.Counter(
    "recsys_rpc_unreceived_requests", "Unary calls that ended before their request message arrived, so with no "
    "latency recorded: requests over --max-message-bytes (refused RESOURCE_EXHAUSTED by gRPC itself), or callers "
    "that cancelled, timed out or dropped the connection while sending theirs", ["service", "method"])

# One debug line per call (service, method, code, milliseconds, with the request id in JSON logs).
access_log = logging.getLogger("serving.access")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
# The request ids of every request in the micro-batch being processed (``query_service.batching``), which runs in its
# first request's context: set only for a batch of more than one, so the lines it logs name all of them.
BATCH_REQUEST_IDS: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("batch_request_ids", default=())

# Health watches (a balancer's: one a client channel) and reflection streams a server with a call limit holds at
# once, beside its calls: unbounded, 20,000 watches grew a replica by 287 MB (~14 KB each).
MAX_PROBE_STREAMS = 2_000
# A caller's deadline passes before the server's by the time its request took to arrive, so the caller's own cancel
# (RST_STREAM, sent when its deadline passes) can reach the server before the server's timer does: on a loaded
# 2-core VM it came with 0.6-2 ms of the server's deadline left, in 5 of 25 runs of a test of three timeouts, and
# was counted CANCELLED. A cancel this close to the deadline is counted as the timeout it was (a caller that leaves
# on its own this close to its deadline is counted so too).
DEADLINE_SLACK_S = 0.02

# Ids this process makes: a random prefix per process and a counter, unique
# across replicas and far cheaper per request than a uuid4.
_ID_PREFIX = secrets.token_hex(4)
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes (random per-process prefix, then a counter)."""
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def outgoing_metadata() -> tuple[tuple[str, str], ...] | None:
    """The metadata that carries the current request's id on to another service (None outside a request)."""
    request_id = REQUEST_ID.get()
    return ((REQUEST_ID_KEY, request_id),) if request_id else None


def request_id_metadata() -> tuple[tuple[str, str], ...]:
    """The current request's id as trailing metadata (empty outside a request)."""
    return outgoing_metadata() or ()


def count_from_start(services: Iterable[str]) -> None:
    """Makes the unreceived-request series of every unary method of ``services`` (full names) at 0 now: a counter
    series that appears with its first increment hides that increment from ``rate()`` and ``increase()``."""
    pool = descriptor_pool.Default()
    for name in services:
        for method in pool.FindServiceByName(name).methods:
            if not (method.client_streaming or method.server_streaming):
                RPC_UNRECEIVED.labels(name, method.name)


def _split_method(full: str) -> tuple[str, str]:
    """("recsys.v1.QueryService", "Recommend") of "/recsys.v1.QueryService/Recommend"."""
    service, _, method = full.lstrip("/").rpartition("/")
    return service, method


def _code_name(context: grpc.aio.ServicerContext, default: str) -> str:
    """The status a call answers: the one the handler set (``context.abort`` or
    ``set_code``), else ``default``."""
    code = context.code()
    return code.name if isinstance(code, grpc.StatusCode) else default


class ServerObservability(grpc.aio.ServerInterceptor):
    """Times every unary call into ``recsys_rpc_latency_seconds`` by service,
    method and status code, and gives it a request id: the caller's
    ``x-request-id`` metadata or a new one, held in ``REQUEST_ID`` for the call
    (logs and outgoing calls read it). A failed call returns it in its trailing
    metadata (``map_errors``); every call does with ``echo_request_id``, off by
    default because trailers cost grpc.aio 20-40 us of CPU per call (measured
    with ``tests/interceptor_cost.py``), ten times the rest of this
    interceptor. At debug level each call is also logged (``serving.access``).

    With ``max_concurrent_rpcs``, a call that finds that many in progress
    (streams included) is refused RESOURCE_EXHAUSTED, and counted. The limit is
    kept here rather than by ``grpc.aio.server``, whose refusals reach no
    interceptor: they were missing from the metric. Calls to ``unlimited_services``
    (health and reflection) neither count toward it nor are refused by it: a
    probe or a balancer's health watch must not fail a busy replica, and watches
    must not take the places of real calls. Their streams have a limit of
    their own, ``MAX_PROBE_STREAMS``, where calls have one.

    A unary call holds its place from the time its request has arrived, not
    from its headers: a caller that opens calls and never sends their requests
    (a slow-loris attack: 1,000 such calls refused every real one) takes no
    place. At most ``max_concurrent_rpcs`` calls wait on their requests: a new
    one cancels the one that waited longest. A unary call that ends before its
    request arrives (one over the server's receive limit, which gRPC refuses
    before any handler, or cancelled so) is counted in
    ``recsys_rpc_unreceived_requests_total``.

    It must be the outermost interceptor, so that calls another interceptor
    refuses (a missing admin token) are counted too. Streams pass through
    untimed: a status stream lives as long as its watcher. The wrapped handler
    is kept per method while the inner chain returns the same handler object,
    so the usual call builds nothing. Safe for one event loop.
    """

    def __init__(self, echo_request_id: bool = False, max_concurrent_rpcs: int | None = None,
                 unlimited_services: Iterable[str] = ()):
        self.echo_request_id = echo_request_id
        self.max_concurrent_rpcs = max_concurrent_rpcs
        self._unlimited = tuple(f"/{service}/" for service in unlimited_services)
        self._in_flight = 0
        # The tasks of unary calls whose handler has not started yet, and their methods.
        self._awaiting_request: dict[asyncio.Task, str] = {}
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._refusals: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        self._probe_streams = 0  # health watches and reflection streams open
        self._max_probe_streams = MAX_PROBE_STREAMS
        self._probe_refusals: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, handler_call_details):
        # The call details' metadata is already built for the interceptors;
        # context.invocation_metadata() would build it again (2 us a call).
        # This runs in the call's own task, so the value is the call's alone.
        request_id = ""
        for key, value in handler_call_details.invocation_metadata or ():
            if key == REQUEST_ID_KEY:
                request_id = value if _usable_request_id(value) else ""
                break
        REQUEST_ID.set(request_id or new_request_id())
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        # Probes, not traffic: a --workers supervisor asks each worker's health five times a second.
        if method.startswith(self._unlimited):
            if handler.unary_unary is None and self.max_concurrent_rpcs is not None:
                if self._probe_streams >= self._max_probe_streams:
                    return self._kept(self._probe_refusals, method, handler, self._probe_refusal)
                self._probe_streams += 1
                asyncio.current_task().add_done_callback(self._probe_stream_ended)
            return handler
        # The call's task ends once its status is sent, however it ends (a stream's too). One callback a call:
        # each costs the call a copy of its context.
        task = asyncio.current_task()
        if handler.unary_unary is None:  # a stream holds its place from its start: it may never send a request
            if self.max_concurrent_rpcs is not None:
                if self._in_flight >= self.max_concurrent_rpcs:
                    return self._kept(self._refusals, method, handler, self._refusal)
                self._in_flight += 1
                task.add_done_callback(self._release)
            return handler
        task.add_done_callback(self._ended)
        awaiting = self._awaiting_request
        if self.max_concurrent_rpcs is not None and len(awaiting) >= self.max_concurrent_rpcs:
            # The call that waited longest on its request makes way: a caller's request arrives within
            # milliseconds of its headers, so the ones left waiting are those that hold calls open on purpose.
            oldest = next(iter(awaiting))
            RPC_UNRECEIVED.labels(*_split_method(awaiting.pop(oldest))).inc()
            oldest.cancel()
        awaiting[task] = method
        return self._kept(self._wrapped, method, handler, self._wrap)

    @staticmethod
    def _kept(cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]], method: str,
              handler: grpc.RpcMethodHandler,
              build: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler]) -> grpc.RpcMethodHandler:
        """``build(handler, method)``, built again only when the inner chain returns another handler."""
        known = cache.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        built = build(handler, method)
        cache[method] = (handler, built)
        return built

    def _release(self, task: asyncio.Task) -> None:
        self._in_flight -= 1

    def _probe_stream_ended(self, task: asyncio.Task) -> None:
        self._probe_streams -= 1

    def _ended(self, task: asyncio.Task) -> None:
        method = self._awaiting_request.pop(task, None)
        if method is not None:  # its handler never started: the request did not arrive
            RPC_UNRECEIVED.labels(*_split_method(method)).inc()

    def _refusal_message(self) -> str:
        return (f"the server is running its limit of {self.max_concurrent_rpcs} calls at once (status streams "
                "included, --max-concurrent-rpcs): retry with backoff, or add replicas")

    def _probe_refusal(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        return self._refusal(handler, full_method, (
            f"the server holds its limit of {self._max_probe_streams} health watches and reflection streams at "
            "once: close unused channels, or watch through fewer"))

    def _refusal(self, handler: grpc.RpcMethodHandler, full_method: str, message: str = "") -> grpc.RpcMethodHandler:
        """Stream ``handler`` answering RESOURCE_EXHAUSTED (``message``, else the call limit's) at once."""
        message = message or self._refusal_message()

        async def refuse(request, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message, request_id_metadata())

        # A coroutine serves any of the three stream kinds: gRPC awaits it, and it may write nothing.
        kind = next(kind for kind in ("unary_stream", "stream_unary", "stream_stream")
                    if getattr(handler, kind) is not None)
        return handler._replace(**{kind: refuse})

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        echo_request_id = self.echo_request_id
        service, method = _split_method(full_method)
        call = handler.unary_unary
        # Label lookups take a lock and build a tuple: resolved once per code, not per call.
        by_code: dict[str, prometheus_client.Histogram] = {}

        def observe(code: str, seconds: float) -> None:
            child = by_code.get(code)
            if child is None:
                child = by_code[code] = RPC_LATENCY.labels(service, method, code)
            child.observe(seconds)

        awaiting_request = self._awaiting_request
        limit = self.max_concurrent_rpcs

        async def unary(request, context: grpc.aio.ServicerContext):
            start = time.perf_counter()
            awaiting_request.pop(asyncio.current_task(), None)  # its request arrived: not one for _ended
            if echo_request_id:
                context.set_trailing_metadata(request_id_metadata())
            code = "CANCELLED"  # what a call that ends by neither return nor exception was
            held = limit is not None and self._in_flight < limit
            if held:
                self._in_flight += 1
            try:
                if limit is not None and not held:
                    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self._refusal_message(),
                                        request_id_metadata())
                response = await call(request, context)
                code = _code_name(context, "OK")
                return response
            except Exception:
                # gRPC answers UNKNOWN for an exception a handler let through without setting a code.
                code = _code_name(context, "UNKNOWN")
                raise
            except asyncio.CancelledError:
                # gRPC cancels the handler of a call whose deadline passed as it does one whose caller left: its
                # caller heard DEADLINE_EXCEEDED, which the server-errors alert counts (a quarter of the timeouts of
                # a stalled index were counted CANCELLED when gRPC's timer beat the handler's own).
                remaining = context.time_remaining()
                if remaining is not None and remaining <= DEADLINE_SLACK_S:
                    code = "DEADLINE_EXCEEDED"
                raise
            finally:
                if held:
                    self._in_flight -= 1
                seconds = time.perf_counter() - start
                observe(code, seconds)
                if access_log.isEnabledFor(logging.DEBUG):
                    access_log.debug("%s/%s %s in %.2f ms", service, method, code, seconds * 1e3)

        return handler._replace(unary_unary=unary)


def utc_timestamp(record: logging.LogRecord) -> str:
    """When ``record`` was logged, in UTC, ISO 8601 with milliseconds: the one stamp of every log line here."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class UtcFormatter(logging.Formatter):
    """A text formatter whose ``asctime`` is ``utc_timestamp``: logging's own is local time without a zone, so the
    lines of hosts in other zones (and the JSON lines, in UTC) could not be put in order."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_timestamp(record)


def text_handler(fmt: str) -> logging.Handler:
    """A stderr handler of lines in ``fmt``, stamped by ``UtcFormatter``."""
    handler = logging.StreamHandler()
    handler.setFormatter(UtcFormatter(fmt))
    return handler


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: timestamp (UTC, ISO 8601 with milliseconds),
    level, logger, message, the request id when the record was logged within a
    request (and ``batch_request_ids``, every request's, within a micro-batch of
    several), the trace id while tracing is on, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "timestamp": utc_timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        batch = BATCH_REQUEST_IDS.get()
        if batch:
            entry["batch_request_ids"] = list(batch)
        trace_id = tracing.current_trace_id()
        if trace_id:
            entry["trace_id"] = trace_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str, log_format: str = "text") -> None:
    """Sets up the root logger: ``text`` (human lines) or ``json`` (one object per line)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter() if log_format == "json" else UtcFormatter(TEXT_FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


class ScrapeTimeCollector(Collector, Generic[S]):
    """A collector of what its tracked sources (callables) answer when /metrics
    is scraped, so the figures cost requests nothing and are never stale.
    Subclasses' ``collect`` read ``sources()``."""

    def __init__(self):
        self._lock = threading.Lock()  # scrapes run on the metrics server's thread
        self._sources: list[Callable[[], S]] = []

    def track(self, source: Callable[[], S]) -> None:
        """Adds ``source`` to what is exported."""
        with self._lock:
            self._sources.append(source)

    def untrack(self, source: Callable[[], S]) -> None:
        """Stops exporting ``source`` (a stopped service's)."""
        with self._lock:
            if source in self._sources:
                self._sources.remove(source)

    def sources(self) -> list[Callable[[], S]]:
        with self._lock:
            return list(self._sources)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Names only, so registering does not call collect() before any source is tracked.
        return iter(())


class VersionCollector(ScrapeTimeCollector[StatusReport]):
    """Gauges of every loaded version of every tracked service in this process,
    read from its admin status (``VersionAdmin.status``) at scrape time: state
    (1 for the state it is in), self-test recall@10, memory bytes, candidates,
    load seconds and catalogue generation, labelled by service, slot, model and
    version; and each service's live version (an index slot's: the version it holds)."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sources = self.sources()
        labels = ["service", "slot", "model", "version"]
        state = GaugeMetricFamily("recsys_version_state", "1 for the state each loaded version is in",
                                  labels=[*labels, "state"])
        # Named for the query tier's meaning; dashboards read the name, so an index slot's figure keeps it.
        live = GaugeMetricFamily("recsys_live_version", "Query replica: the live version it answers with. Index "
                                 "slot: the version it holds, live or not (0: none)",
                                 labels=["service", "slot", "model"])
        figures = {name: GaugeMetricFamily(f"recsys_version_{name}", text, labels=labels) for name, text in (
            ("self_test_recall", "Index recall@10 vs exact search, measured at load and again once catalogue "
                                 "deltas pause (index versions only)"),
            ("memory_bytes", "Bytes the version's artifacts hold in memory (approximate; an index version's follows "
                             "its catalogue deltas)"),
            ("candidates", "Candidates the version holds, catalogue deltas included"),
            ("load_seconds", "Seconds the version took to load and self-test"),
            ("catalogue_generation", "Catalogue deltas applied to the version"),
        )}
        for source in sources:
            report = source()
            base = [report.service, report.slot, report.model]
            live.add_metric(base, report.live_version)
            for info in report.versions:
                values = [*base, str(info.version)]
                state.add_metric([*values, info.state.value], 1)
                figures["candidates"].add_metric(values, info.num_candidates)
                figures["catalogue_generation"].add_metric(values, info.catalogue_generation)
                if info.report is not None:
                    figures["memory_bytes"].add_metric(values, info.report.memory_bytes)
                    figures["load_seconds"].add_metric(values, info.report.load_seconds)
                    if info.report.self_test_recall is not None:
                        figures["self_test_recall"].add_metric(values, info.report.self_test_recall)
        yield state
        yield live
        yield from figures.values()


VERSIONS = VersionCollector()
prometheus_client.REGISTRY.register(VERSIONS)
prometheus_client.REGISTRY.register(CoreCallCollector())
