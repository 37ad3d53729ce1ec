"""gRPC plumbing shared by both servers: error mapping, health, reflection,
start-up and graceful shutdown. Servicers stay thin: translate proto <-> domain,
and let ``map_errors`` turn domain errors into statuses."""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, Iterable

import grpc
import prometheus_client
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from model_registry import VersionError
from protos.recsys.v1 import retrieval_pb2
from serving.errors import InvalidArgument, ServingError
from serving.telemetry.observability import (ServerObservability, configure_logging, count_from_start,
                                             request_id_metadata)
from serving.telemetry.tracing import TracingConfig, setup_tracing
from serving.validation import DEFAULT_MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

MAX_MESSAGE_CHARS = 1000


def status_of(error: Exception, method: str) -> tuple[grpc.StatusCode, str]:
    """The status a failed call answers: a ServingError's own code and message
    (cut to ``MAX_MESSAGE_CHARS``); anything else is INTERNAL with a short
    message (the details go to the log, never to the client)."""
    if isinstance(error, ServingError):
        return getattr(grpc.StatusCode, error.code), str(error)[:MAX_MESSAGE_CHARS]
    return grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}"


def map_errors(method: Callable[..., Awaitable]) -> Callable[..., Awaitable]:
    """Wraps an async servicer method: an exception becomes the status
    ``status_of`` gives, with the request id in the trailing metadata (a caller
    quoting it finds the call in the logs). Latency by method and code is the
    interceptor's (``serving.telemetry.observability.ServerObservability``), which sees
    every call."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:  # the method chose its status
            raise
        except Exception as e:  # noqa: BLE001 - the last line of defence of a server
            status, message = status_of(e, method.__name__)
            if not isinstance(e, ServingError):
                log.exception("%s failed", method.__qualname__)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                # The caller's deadline has passed: gRPC answers DEADLINE_EXCEEDED itself, and a status sent after
                # its core did can fail there, which gRPC logs at ERROR with a traceback (133 in the overload
                # phases of five load runs). Ended as gRPC ends such a call; the interceptor times it
                # DEADLINE_EXCEEDED.
                raise asyncio.CancelledError(message) from e
            await context.abort(status, message, request_id_metadata())

    return wrapper


# The most bytes of an answer (a SearchResponse or a RecommendResponse) besides its results, crowding tokens and
# vector: its version, generation, flags, model name (at most 64 characters), its place in a batch's answer, and
# that batch's version and generation.
ANSWER_OVERHEAD_BYTES = 128


@functools.lru_cache(maxsize=None)
def result_bytes(id_bytes: int) -> int:
    """The most bytes one scored result takes in an answer whose ids have at most ``id_bytes`` bytes of UTF-8."""
    return retrieval_pb2.SearchResponse(candidates=[retrieval_pb2.ScoredCandidate(candidate_id="x" * id_bytes,
                                                                                  score=1.0)]).ByteSize()


def add_scored(candidates, ids: Iterable[str], scores: Iterable[float]) -> None:
    """Appends (id, score) pairs to a response's repeated ``ScoredCandidate`` field: under half the CPU of
    building a message per result and a list of them (6.9 against 16.6 us for 10, upb protobuf)."""
    add = candidates.add
    for candidate_id, score in zip(ids, scores):
        add(candidate_id=candidate_id, score=score)


def _unparsable(method: str) -> str:
    return f"the request is not a valid {method} message: its bytes do not parse"


def parse_request(message_class, data: bytes, method: str):
    """``data`` parsed as ``message_class``, for a handler registered to take the
    request's bytes (no deserializer, which ``MalformedRequestGuard`` leaves alone);
    InvalidArgument with the guard's message if they do not parse."""
    try:
        return message_class.FromString(data)
    except Exception:  # noqa: BLE001 - protobuf raises DecodeError, and others on odd input
        raise InvalidArgument(_unparsable(method)) from None


class _Malformed:
    """What a request that does not parse deserializes to (see ``MalformedRequestGuard``)."""


class MalformedRequestGuard(grpc.aio.ServerInterceptor):
    """Answers a unary call whose bytes do not parse as its method's message
    with INVALID_ARGUMENT. gRPC's own answer is UNKNOWN naming a Python
    exception, with a traceback logged per call: a flood of garbage would flood
    the log. It must be the innermost interceptor: it keeps the handler it
    wraps per method, which is only right for the service's own handlers."""

    def __init__(self):
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method not in self._guarded:
            handler = await continuation(handler_call_details)
            if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
                return handler
            self._guarded[method] = self._guard(handler, method)
        return self._guarded[method]

    @staticmethod
    def _guard(handler, method: str):
        parse = handler.request_deserializer
        message = _unparsable(method)

        def tolerant_parse(data: bytes):
            try:
                return parse(data)
            except Exception:  # noqa: BLE001 - protobuf raises DecodeError, and others on odd input
                return _Malformed

        call = handler.unary_unary

        async def unary(request, context):
            if request is _Malformed:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message, request_id_metadata())
            return await call(request, context)

        return handler._replace(request_deserializer=tolerant_parse, unary_unary=unary)


class CannotListen(OSError):
    """A server's address cannot be bound (taken by another process, or not this machine's), or its TLS
    credentials cannot be used."""


def add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Binds ``server`` to ``address`` (TLS only with ``credentials``); returns the port bound, or raises CannotListen
    (grpcio raises RuntimeError now where it once returned 0)."""
    try:
        bound = (server.add_secure_port(address, credentials) if credentials is not None
                 else server.add_insecure_port(address))
    except RuntimeError:
        bound = 0
    if bound == 0:
        # gRPC says which in its own log line; a certificate it cannot use fails the same way as a bind.
        tls = ", or the TLS certificate and key are not usable" if credentials is not None else ""
        raise CannotListen(f"cannot listen on {address}: address in use or not available{tls}")
    return bound


@dataclass
class ServiceSpec:
    """One gRPC service to register: the generated ``add_*_to_server`` function,
    the servicer and the full service name (for health and reflection)."""

    add_to_server: Callable[[object, grpc.aio.Server], None]
    servicer: object
    full_name: str


class RunningServer:
    """A started grpc.aio server with its health servicer."""

    def __init__(self, server: grpc.aio.Server, port: int, health_servicer: health.aio.HealthServicer,
                 service_names: list[str]):
        self.server = server
        self.port = port
        self.health = health_servicer
        self.service_names = service_names
        self.draining = False
        self._drain_listeners: list[Callable[[], None]] = []

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Calls ``callback()`` (on the event loop) once, when the drain begins (``drain``, or ``stop``
        without one): a service that streams to watchers ends their streams then."""
        self._drain_listeners.append(callback)

    async def set_serving(self, serving: bool, names: list[str] | None = None) -> None:
        """Sets the health of ``names`` (default: the server, "", and every service); NOT_SERVING
        whatever it is told once ``drain`` has begun."""
        # A version loaded or a catalogue delta applied during the drain re-reports health: it must not
        # call traffic back to a process that is going away.
        serving = serving and not self.draining
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ["", *self.service_names] if names is None else names:
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Reports NOT_SERVING from now on (the server keeps answering)."""
        if not self.draining:
            self.draining = True
            for callback in self._drain_listeners:
                callback()
        await self.set_serving(False)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Reports NOT_SERVING first so load balancers drain us, then lets
        in-flight RPCs finish for up to ``grace_s``."""
        await self.drain()
        await self.server.stop(grace_s)


def bind_address(host: str, port: int) -> str:
    """gRPC's address for ``host`` and ``port``: an IPv6 host in brackets ("::1" alone read as host "::1:4061" on
    port 443), a unix socket without a port."""
    if host.startswith("unix:"):
        return host
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


# A connection closed for its age (``max_connection_age_s``) lets the calls in flight on it this long to end, far
# longer than the deadlines unary calls here are given; its client opens another connection for its next call.
CONNECTION_AGE_GRACE_S = 30.0


async def start_server(services: Iterable[ServiceSpec], host: str, port: int,
                       max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                       interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
                       max_concurrent_rpcs: int | None = None,
                       credentials: grpc.ServerCredentials | None = None,
                       echo_request_id: bool = False, share_port: bool = False,
                       max_connection_age_s: float = 0.0, max_streams_per_connection: int = 0,
                       max_pending_calls: int = 0) -> RunningServer:
    """Starts a server with the services plus health and reflection; port 0 picks
    a free port (returned in ``RunningServer.port``). Health starts NOT_SERVING.
    Beyond ``max_concurrent_rpcs`` calls in progress (streams included), new ones
    are refused RESOURCE_EXHAUSTED; health and reflection calls are neither counted
    nor refused. With ``credentials`` the port serves TLS only.
    Every unary call, refused ones included, is timed and given a request id
    (``ServerObservability``, which also keeps the limit), returned in the
    trailers of every call with ``echo_request_id`` (of failed calls only
    otherwise).

    ``share_port`` binds with SO_REUSEPORT, so the workers of one service
    (``serving.rpc.workers``) listen on one port and the kernel spreads their
    connections; otherwise a port in use is an error. A ``host`` of
    ``unix:PATH`` serves on that unix socket (``port`` is ignored).

    ``max_connection_age_s`` (0: never) closes each connection after about that
    long (gRPC's max connection age: a GOAWAY, +-10% jitter, calls in flight given
    ``CONNECTION_AGE_GRACE_S``), so that clients reconnect, and a connection-level
    balancer (a Kubernetes Service, the kernel's SO_REUSEPORT) spreads them again.
    Not for a server of long streams: they end with the grace.

    ``max_streams_per_connection`` (0: no limit) is the calls one connection may
    have in progress (HTTP/2's SETTINGS_MAX_CONCURRENT_STREAMS). gRPC's C core
    counts a call until this process has let go of it, so a call over the limit
    is refused before any Python runs (the caller reads UNAVAILABLE "Stream
    removed", REFUSED_STREAM: nothing was done, a retry is safe). Without it, an
    open-loop load at twice a query replica's capacity piled hundreds of calls
    into the event loop, each late by the time its handler ran: 278 answers a
    second in time against 500 at capacity, 156 at four times; with 64 a
    connection, 766 and 601 (``bench.overload``). It bounds a connection, not
    the server: callers over many connections overload it as before.

    ``max_pending_calls`` (0: gRPC's default, refusals at random from 1,000 and
    always at 3,000) is how many of a method's calls that have arrived but
    that this process has not taken yet may wait (each method, health's and
    reflection's too, has a queue of its own); gRPC's C core refuses the
    next (its max pending requests, soft and hard limit both at the value: with
    the soft one at half, a burst of 40 calls at an idle replica was partly
    refused). The queue is first in, first out and outside Python: over 20
    connections at two and four times a query replica's capacity, calls
    reached their handler with a median of 0 ms left of a 200 ms deadline, and
    it answered 328 and 139 a second in time against 1,000 at capacity. The
    caller of a refused call reads CANCELLED (details "CANCELLED"): nothing was
    done, a retry is safe. Neither refusal reaches a handler or ``recsys_rpc_*``;
    the pending ones show in gRPC's own counters (``serving.telemetry.core_calls``),
    refused streams nowhere in this process."""
    services = list(services)
    observability = ServerObservability(echo_request_id, max_concurrent_rpcs,
                                        unlimited_services=(health.SERVICE_NAME, reflection.SERVICE_NAME))
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", int(share_port)),
    ]
    if max_streams_per_connection:
        options.append(("grpc.max_concurrent_streams", max_streams_per_connection))
    if max_pending_calls:
        options += [("grpc.server.max_pending_requests", max_pending_calls),
                    ("grpc.server.max_pending_requests_hard_limit", max_pending_calls)]
    if max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", round(max_connection_age_s * 1000)),
                    ("grpc.max_connection_age_grace_ms", round(CONNECTION_AGE_GRACE_S * 1000))]
    server = grpc.aio.server(interceptors=[observability, *interceptors, MalformedRequestGuard()], options=options)
    for spec in services:
        spec.add_to_server(spec.servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [s.full_name for s in services]
    count_from_start(names)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = add_port(server, bind_address(host, port), credentials)
    await server.start()
    running = RunningServer(server, bound, health_servicer, names)
    await running.set_serving(False)
    return running


class WorkerDataPlane:
    """The data plane of a ``--workers`` worker: served from the start on its
    private unix socket (where the supervisor follows its health), and on the
    port it shares with its siblings only from the first time it serves.

    SO_REUSEPORT hands a new connection to any socket bound to the port, so a
    worker that bound it while it loads would take callers' connections and
    answer them UNAVAILABLE. Until it serves, its siblings take them all."""

    def __init__(self, private: RunningServer, port: int, open_shared: Callable[[], Awaitable[RunningServer]]):
        self.private = private
        self.port = port
        self.shared: RunningServer | None = None
        self._open_shared = open_shared
        self.draining = False

    async def set_serving(self, serving: bool, names: list[str] | None = None) -> None:
        serving = serving and not self.draining  # as RunningServer's; nor is the shared port opened then
        if serving and self.shared is None:
            self.shared = await self._open_shared()
        for server in (self.private, self.shared):
            if server is not None:
                await server.set_serving(serving, names)

    async def drain(self) -> None:
        self.draining = True
        for server in (self.private, self.shared):
            if server is not None:
                await server.drain()

    async def stop(self, grace_s: float = 5.0) -> None:
        await asyncio.gather(*(server.stop(grace_s) for server in (self.private, self.shared)
                               if server is not None))


async def serve_until_signalled(stop: Callable[[float], Awaitable[None]], grace_s: float = 5.0,
                                drain: RunningServer | WorkerDataPlane | None = None, drain_s: float = 0.0) -> None:
    """Blocks until SIGINT/SIGTERM, then drains and stops: ``drain`` reports
    NOT_SERVING and keeps answering for ``drain_s`` (callers watching health
    move away meanwhile; an index slot's ``on_drain`` ends its status streams,
    so the query tier routes around it at once), then ``stop(grace_s)`` stops
    taking calls and gives those in flight ``grace_s`` to finish."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    if drain is not None and drain_s > 0:
        log.info("draining: NOT_SERVING, still answering for %.1fs", drain_s)
        await drain.drain()
        await asyncio.sleep(drain_s)
    log.info("shutting down (grace %.1fs)", grace_s)
    await stop(grace_s)


def run_event_loop(main: Coroutine) -> Any:
    """Runs ``main`` on uvloop: grpc.aio and redis-py spend much of a request in the
    event loop itself, and uvloop's is measurably cheaper per request than the
    standard one (bench/serving_throughput.py; the echo ceiling uses it too)."""
    return uvloop.run(main)


def raise_open_file_limit() -> None:
    """Raises this process's soft limit of open files to its hard limit, as Go's runtime and nginx do.

    Each client connection takes a descriptor, and a common soft limit (1,024 where systemd or a shell sets it)
    refuses connections long before the hard limit (often 512K) would: the hard limit is the operator's choice."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft >= hard:  # infinity: no ceiling to reach without privilege
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("open file limit raised from %d to %d (the hard limit)", soft, hard)


def run_main(prog: str, serve: Coroutine[None, None, None], log_level: str, metrics_port: int,
             metrics_host: str = "127.0.0.1", log_format: str = "text",
             tracing: TracingConfig = TracingConfig()) -> None:
    """A service's process: logging (``log_format`` text or json), tracing
    when configured, Prometheus /metrics (port 0: none), then ``serve`` until
    a signal. A version that cannot be loaded at start (a missing or broken
    pointer, a missing or corrupt version), or a port in use, exits with one
    line saying why, not a traceback."""
    configure_logging(log_level, log_format)
    raise_open_file_limit()
    setup_tracing(tracing, prog)  # before any server or channel: the instrumentation wraps their constructors
    try:
        if metrics_port:
            try:
                prometheus_client.start_http_server(metrics_port, metrics_host)
            except OSError as e:
                raise CannotListen(f"cannot serve /metrics on {metrics_host}:{metrics_port}: {e.strerror}") from None
        run_event_loop(serve)
    except (VersionError, ServingError, CannotListen) as e:
        serve.close()
        raise SystemExit(f"{prog}: cannot start: {e}") from None
