"""Server CPU per call of the data plane's interceptors, on a bare grpc.aio echo server.

    .venv/bin/python -m tests.interceptor_cost [--calls 5000] [--rounds 15] [--in-process-only]

First, in process: the CPU one call spends in ``ServerObservability``'s two
layers (``intercept_service`` and the wrapped handler) around an echo handler,
against calling the echo handler alone, many times over inside one real call
(its real servicer context and metadata; no sockets per iteration, so the
difference is the interceptor's, not the noise of a loaded machine). It leaves
out gRPC's own step from one interceptor to the next (a partial and a
coroutine) and sending the id back in the trailers.

Then end to end: each variant's server runs in its own process (uvloop, as the
services do) for the whole run; one client process keeps 32 calls in flight,
to each server in turn, round after round. What counts is the server's
utime+stime over a round's calls divided by the calls (median over rounds):
steadier on a shared machine than QPS, but a machine busy with other work
still moves it by tens of us. Variants:

- ``bare``: no interceptor;
- ``guard``: ``MalformedRequestGuard`` alone (the servers before metrics);
- ``observed``: ``ServerObservability`` + the guard (``start_server`` now);
- ``echoed``: the same returning every call's request id in its trailers
  (``--echo-request-id``).

``observed - guard`` is what metrics and request ids cost per call; ``echoed -
observed`` what a trailer costs grpc.aio.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics

import grpc

VARIANTS = ("bare", "guard", "observed", "echoed")
METHOD = "/bench.Echo/Echo"
CALLERS = 32


def _identity(data: bytes) -> bytes:
    return data


def _serve(variant: str, port_out) -> None:
    import uvloop

    from serving.rpc.grpc_server import MalformedRequestGuard
    from serving.telemetry.observability import ServerObservability

    async def echo(request, context):
        return request

    async def main() -> None:
        interceptors = {"bare": [], "guard": [MalformedRequestGuard()],
                        "observed": [ServerObservability(), MalformedRequestGuard()],
                        "echoed": [ServerObservability(echo_request_id=True), MalformedRequestGuard()]}[variant]
        server = grpc.aio.server(interceptors=interceptors, options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(echo, _identity, _identity)})])
        port_out.send(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _drive(port: int, calls: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        echo = channel.unary_unary(METHOD, _identity, _identity)
        left = iter(range(calls))

        async def caller() -> None:
            for _ in left:
                await echo(b"x" * 32, timeout=10, metadata=(("x-request-id", "bench"),))

        await asyncio.gather(*(caller() for _ in range(CALLERS)))


class _Details:
    """Handler call details as gRPC gives them to interceptors."""

    def __init__(self, metadata: tuple):
        self.method = METHOD
        self.invocation_metadata = metadata


def in_process_us(calls: int) -> tuple[float, float]:
    """CPU microseconds per call of (an echo handler alone, the same through
    ``ServerObservability``), both run ``calls`` times inside one real call of
    a bare server, with its real servicer context and metadata."""
    import time

    import uvloop

    from serving.telemetry.observability import ServerObservability

    async def echo(request, context):
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, _identity, _identity)

    async def continuation(details):
        return handler

    out: list[float] = []

    async def measure_inside(request, context):
        details, interceptor = _Details(tuple(context.invocation_metadata())), ServerObservability()
        await (await interceptor.intercept_service(continuation, details)).unary_unary(request, context)  # warm-up
        for through in (False, True):
            start = time.process_time()
            for _ in range(calls):
                if through:
                    await (await interceptor.intercept_service(continuation, details)).unary_unary(request, context)
                else:
                    await (await continuation(details)).unary_unary(request, context)
            out.append((time.process_time() - start) / calls * 1e6)
        return request

    async def main() -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Echo", {
            "Echo": grpc.unary_unary_rpc_method_handler(measure_inside, _identity, _identity)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.unary_unary(METHOD, _identity, _identity)(b"x", timeout=600,
                                                                     metadata=(("x-request-id", "bench"),))
        await server.stop(0)

    uvloop.run(main())
    return out[0], out[1]


def run(calls: int, rounds: int) -> dict[str, list[float]]:
    """Server CPU us per call of each variant, one value per round: one server
    process each, kept for the whole run, and ``rounds`` rounds of ``calls``
    calls to each in turn, so that what else the machine does falls on all alike."""
    context = multiprocessing.get_context("spawn")
    servers, ports = {}, {}
    try:
        for variant in VARIANTS:
            receive, send = context.Pipe(duplex=False)
            servers[variant] = context.Process(target=_serve, args=(variant, send), daemon=True)
            servers[variant].start()
            ports[variant] = receive.recv()
            asyncio.run(_drive(ports[variant], 2000))  # warm-up
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for variant in VARIANTS:
                before = _cpu_s(servers[variant].pid)
                asyncio.run(_drive(ports[variant], calls))
                samples[variant].append((_cpu_s(servers[variant].pid) - before) / calls * 1e6)
        return samples
    finally:
        for server in servers.values():
            server.kill()
            server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--in-process-only", action="store_true", help="skip the end-to-end servers")
    args = parser.parse_args()
    bare, observed = in_process_us(20 * args.calls)
    print(f"in process: echo handler {bare:.2f} us, through ServerObservability {observed:.2f} us: "
          f"{observed - bare:+.2f} us per call")
    if args.in_process_only:
        return
    samples = run(args.calls, args.rounds)
    for variant, values in samples.items():
        # Differences within a round: the machine's load in that round falls on both sides.
        paired = statistics.median(v - g for v, g in zip(values, samples["guard"]))
        print(f"{variant:9s} {statistics.median(values):7.1f} us server CPU per call, {paired:+6.1f} us vs guard "
              f"(medians of {args.rounds} rounds of {args.calls} calls)")


if __name__ == "__main__":
    main()
