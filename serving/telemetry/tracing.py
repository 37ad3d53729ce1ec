"""OpenTelemetry traces across query service -> index service -> Redis, off by
default (``--otel-endpoint`` or ``--otel-console`` turn them on).

gRPC spans come from ``opentelemetry-instrumentation-grpc``'s aio
instrumentors, which wrap every ``grpc.aio.server`` and channel made after
``setup_tracing``: a server span per call and a client span per outgoing call,
with the trace context carried in gRPC metadata (``traceparent``), so the
index service's spans join the query service's trace. Status streams and
health checks are left out (a stream lives as long as its watcher). The
services add their own spans with ``span`` (a Redis pipeline) and
``executor`` (a tower call on its thread). Disabled, ``span`` is a shared
no-op context manager: requests pay one function call.
"""

from __future__ import annotations

import contextlib
import contextvars
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Sequence

from settings.flags import option, require


@dataclass(frozen=True)
class TracingConfig:
    endpoint: str = option("", "OTLP/gRPC collector to send traces to, e.g. http://127.0.0.1:4317 (http: plain, "
                               "https: TLS); empty: none")
    console: bool = option(False, "print every finished span to stdout (debugging)")
    sample_ratio: float = option(1.0, "share of traces started here that are recorded (a caller's decision, "
                                      "carried in the trace context, is followed)")

    def __post_init__(self) -> None:
        require(0.0 <= self.sample_ratio <= 1.0, "sample_ratio", "must be in [0, 1]")

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint or self.console)


_NO_SPAN = contextlib.nullcontext()


class _State:
    """This process's tracer and the instrumentors it switched on (None: tracing off)."""

    tracer: Any = None
    provider: Any = None
    instrumentors: tuple = ()


def enabled() -> bool:
    """Whether this process records traces."""
    return _State.tracer is not None


def setup_tracing(config: TracingConfig, service_name: str, exporter: Any = None) -> Any:
    """Turns tracing on for this process when ``config`` asks for it or an
    ``exporter`` is given (tests pass an in-memory one): a tracer provider
    named ``service_name``, gRPC server and client instrumentation, and this
    module's spans. Call it before any server or channel is made. Returns the
    provider, or None when tracing stays off."""
    if not (config.enabled or exporter is not None):
        return None
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcAioInstrumentorServer, filters
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}),
                              sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)))
    if config.endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
    if config.console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    untraced = filters.negate(filters.any_of(filters.health_check(), filters.method_name("WatchStatus"),
                                             filters.service_prefix("grpc.reflection")))
    instrumentors = (GrpcAioInstrumentorServer(filter_=untraced), GrpcAioInstrumentorClient(filter_=untraced))
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    _State.tracer, _State.provider, _State.instrumentors = provider.get_tracer(__name__), provider, instrumentors
    return provider


def shutdown_tracing() -> None:
    """Flushes and stops tracing, and takes the gRPC instrumentation off (servers and channels made after)."""
    for instrumentor in _State.instrumentors:
        instrumentor.uninstrument()
    if _State.provider is not None:
        _State.provider.shutdown()
    _State.tracer, _State.provider, _State.instrumentors = None, None, ()


def span(name: str, **attributes: Any) -> ContextManager:
    """A span ``name`` under the current one while tracing is on; a no-op otherwise."""
    if _State.tracer is None:
        return _NO_SPAN
    return _State.tracer.start_as_current_span(name, attributes=attributes or None)


def batch_span(name: str, others: Sequence[contextvars.Context], size: int) -> ContextManager:
    """A span ``name`` under the current one, linked to the span current in each of ``others``: the contexts of the
    other requests a micro-batch of ``size`` serves beside the one it runs in (OpenTelemetry's links for batch
    processing). A no-op while tracing is off or without others."""
    if _State.tracer is None or not others:
        return _NO_SPAN
    from opentelemetry import trace

    links = [trace.Link(context) for context in (other.run(trace.get_current_span).get_span_context()
                                                 for other in others) if context.is_valid]
    return _State.tracer.start_as_current_span(name, links=links, attributes={"batch.size": size})


def current_trace_id() -> str:
    """The current trace's id in hex; empty when tracing is off or no span is current."""
    if _State.tracer is None:
        return ""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def _traced_call(name: str, fn: Callable, args: tuple, kwargs: dict) -> Any:
    with span(name):
        return fn(*args, **kwargs)


class TracedExecutor(ThreadPoolExecutor):
    """A thread pool whose every call runs in the submitter's context (its
    request id and current span) and within a span ``span_name``.
    ``loop.run_in_executor`` copies no context into the thread by itself."""

    def __init__(self, span_name: str, max_workers: int, thread_name_prefix: str = ""):
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        self.span_name = span_name

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        return super().submit(contextvars.copy_context().run, _traced_call, self.span_name, fn, args, kwargs)


def executor(span_name: str, max_workers: int, thread_name_prefix: str = "") -> ThreadPoolExecutor:
    """A thread pool for ``max_workers`` threads: a ``TracedExecutor`` while tracing is on."""
    if enabled():
        return TracedExecutor(span_name, max_workers, thread_name_prefix)
    return ThreadPoolExecutor(max_workers, thread_name_prefix=thread_name_prefix)
