"""recsys-loadtest: open-loop gRPC load against the QueryService (Recommend,
and any mix of RecommendSimilar, BatchRecommend and RecordInteractions).

    recsys-loadtest --address HOST:PORT --qps 200 --duration-s 30 \\
        [--concurrency N] [--k K] [--timeout-s S] [--channels N] \\
        [--num-customers N] [--customer-format 'c{:06d}'] \\
        [--distribution uniform|zipf] [--zipf-s S] [--seed N] \\
        [--rpc-mix recommend=0.8,similar=0.1,record=0.1] [--batch-size N] \\
        [--num-candidates N] [--candidate-format 'i{:06d}'] \\
        [--sample-responses N] [--out FILE] [--plot FILE.png] [--quiet]

    # blue-green swap under load, then a rollback:
    recsys-loadtest --address ... --qps 200 --duration-s 10 --swap \\
        --registry DIR --model NAME --index-admin A[,B] --query-admin C[,D] \\
        [--admin-token-file F] --swap-version 2 --swap-at-s 3 --rollback-at-s 6

``--rpc-mix`` gives each RPC's share of the requests (default: Recommend only):
``similar`` asks for a random candidate's neighbours, ``batch`` is a
BatchRecommend of ``--batch-size`` customers, ``record`` records one random
candidate for a customer. Candidates are drawn uniformly from
``--num-candidates`` ids of ``--candidate-format``.

Requests are scheduled at a fixed arrival rate and each is sent as its own task
whatever the state of earlier ones (open loop), so a slow server cannot slow the
client down and hide its own latency. Latency is measured from the request's
*scheduled* send time, which keeps it free of coordinated omission: if the
client itself falls behind, that delay is charged to the request. At most
``--concurrency`` requests are in flight; one that would exceed the cap is not
sent and is counted as ``dropped``.

Latencies are taken with ``time.perf_counter_ns`` (microseconds in the report),
not the event loop's clock: uvloop's ``loop.time()`` is whole milliseconds.

While it runs it prints a progress line per second to stderr (``--quiet``: none):
what finished in that second (ok, errors, drops, achieved QPS, p50/p99, the
versions that answered), what was sent, and when a swap or rollback starts or
ends. ``--plot FILE.png`` draws the per-second timeline (QPS, p50/p99, errors)
with the swap and rollback marked.

Writes a JSON report to stdout (or ``--out``) and a short table to stderr:
latency percentiles (HdrHistogram, 1 us..60 s, 3 significant digits), achieved
QPS, errors by gRPC status, responses per model version, cache hits (of
Recommend and RecommendSimilar; ``cache_hit_ratio``: of their OK answers), per
RPC of the mix its counts and latency (``rpcs``), a per-second timeline (by
scheduled send, but its ``qps`` by when answers arrived, through the drain past
the schedule), how late the client sent (``send_lag_ms``: from scheduled to
actual send), ``warnings`` (the target fell behind the offered rate; the client
sent late) and, with ``--swap``, latency before / during / after the publish and
the rollback. Exits 1 when any request failed or was dropped, a swap step
failed, or the report or plot could not be written (the report then goes to
stdout); a run that only fell behind exits 0 with its warning. SIGINT or SIGTERM
ends the run early: the requests in flight (and a swap step under way) are
waited for, a swap step not begun is skipped, and what was measured is reported
as usual (``stopped_at_s``); the exit status is then 130 or 143. A second
signal ends it at once, writing nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

from recsys_client.cli import k_flag
from recsys_client.loadtest.config import DISTRIBUTIONS, RECOMMEND_ONLY, RPCS, LoadConfig, SwapConfig, parse_rpc_mix
from recsys_client.loadtest.report import format_table
from recsys_client.loadtest.run import connect_timeout_s, run_load
from serving.rpc.tls import ToolTls, tls_hint
from settings.flags import (ConfigError, add_flags, add_secret_file, deadline_s, flag_name, from_args, host_port,
                            host_ports)
from settings.output_files import check_outputs


def _rpc_mix_flag(text: str) -> dict[str, float]:
    """``parse_rpc_mix`` for ``--rpc-mix``: argparse shows only an ArgumentTypeError's message, not a ValueError's."""
    try:
        return parse_rpc_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and the default of each flag that is a LoadConfig field (LoadConfig's).
    Not of the others: the TLS and admin token flags default to the environment's value, a key's path or a bearer
    token, which help must not print."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        # ``is``: a default of 0 (== False) is one to show; --swap's False is not.
        if action.dest not in _LOAD_FIELDS or action.default is None or action.default is False \
                or "default" in help_text:
            return help_text
        return help_text + " (default %(default)s)"


_LOAD_FIELDS = {field.name for field in dataclasses.fields(LoadConfig)}


def build_parser() -> argparse.ArgumentParser:
    """The recsys-loadtest command line."""
    parser = argparse.ArgumentParser(prog="recsys-loadtest", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--address", type=host_port, required=True, help="query service HOST:PORT")
    add_flags(parser.add_argument_group("TLS to the query service and the admin planes"), ToolTls)
    parser.add_argument("--qps", type=float, required=True, help="arrival rate, requests per second")
    parser.add_argument("--duration-s", type=float, required=True, help="length of the schedule")
    parser.add_argument("--concurrency", type=int, default=LoadConfig.concurrency,
                        help="most requests in flight; more are dropped (and counted)")
    parser.add_argument("--k", type=k_flag, default=LoadConfig.k, help="candidates per request")
    parser.add_argument("--timeout-s", type=deadline_s, default=LoadConfig.timeout_s, help="deadline of each request")
    parser.add_argument("--channels", type=int, default=LoadConfig.channels,
                        help="gRPC channels (connections) to spread load over")
    parser.add_argument("--num-customers", type=int, default=LoadConfig.num_customers, help="customer ids 0..N-1")
    parser.add_argument("--customer-format", default=LoadConfig.customer_format,
                        help="str.format pattern of a customer id")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default=LoadConfig.distribution,
                        help="customer popularity")
    parser.add_argument("--zipf-s", type=float, default=LoadConfig.zipf_s,
                        help="Zipf exponent (with --distribution zipf)")
    parser.add_argument("--seed", type=int, default=LoadConfig.seed, help="seed of the customer draws")
    parser.add_argument("--rpc-mix", type=_rpc_mix_flag, default=dict(RECOMMEND_ONLY), metavar="RPC=SHARE,...",
                        help=f"share of each RPC in the requests ({', '.join(RPCS)}); default recommend only")
    parser.add_argument("--batch-size", type=int, default=LoadConfig.batch_size, help="customers per BatchRecommend")
    parser.add_argument("--num-candidates", type=int, default=LoadConfig.num_candidates,
                        help="candidate ids 0..N-1 for RecommendSimilar and RecordInteractions")
    parser.add_argument("--candidate-format", default=LoadConfig.candidate_format,
                        help="str.format pattern of a candidate id")
    parser.add_argument("--sample-responses", type=int, default=LoadConfig.sample_responses,
                        help="keep up to N responses, spread over the run, in the report")
    parser.add_argument("--out", type=Path, help="write the JSON report here instead of stdout")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="write a PNG of the per-second timeline (QPS, p50/p99, errors; swap and rollback marked)")
    parser.add_argument("--quiet", action="store_true", help="no progress line per second on stderr")
    swap = parser.add_argument_group("swap scenario (--swap)")
    swap.add_argument("--swap", action="store_true", help="publish a version during the run, then roll back")
    swap.add_argument("--registry", type=Path, help="model registry root directory")
    swap.add_argument("--model", help="model name under the registry")
    swap.add_argument("--index-admin", type=host_ports, default="",
                      help="index replicas' admin HOST:PORT, comma-separated")
    swap.add_argument("--query-admin", type=host_ports, default="",
                      help="query replicas' admin HOST:PORT, comma-separated")
    add_secret_file(parser, swap, "admin-token", "file holding the bearer token of the admin plane")
    swap.add_argument("--swap-version", type=int, help="version to publish")
    swap.add_argument("--swap-at-s", type=float, default=None, help="seconds into the run to start the publish")
    swap.add_argument("--rollback-at-s", type=float, default=None,
                      help="seconds into the run to roll back (after the publish finished); omit for none")
    return parser


def config_from_args(args: argparse.Namespace) -> LoadConfig:
    """Turns parsed flags into a LoadConfig; raises ValueError on bad combinations."""
    try:
        tls = from_args(ToolTls, args).tls
    except ConfigError as e:  # it names the field; the user typed the flag
        raise ValueError(f"{flag_name(ToolTls, e.field)} {e.message}") from None
    swap = None
    given = [flag for flag, value in (("--swap-version", args.swap_version), ("--swap-at-s", args.swap_at_s),
                                      ("--rollback-at-s", args.rollback_at_s)) if value is not None]
    if given and not args.swap:  # else a plain load run, reported as a success
        raise ValueError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --swap")
    if args.swap:
        missing = [flag for flag, value in (("--registry", args.registry), ("--model", args.model),
                                            ("--index-admin", args.index_admin), ("--query-admin", args.query_admin),
                                            ("--swap-version", args.swap_version), ("--swap-at-s", args.swap_at_s))
                   if not value and value != 0]
        if missing:
            raise ValueError(f"--swap needs {', '.join(missing)}")
        swap = SwapConfig(registry=args.registry, model=args.model, index_admin=args.index_admin,
                          query_admin=args.query_admin, version=args.swap_version, at_s=args.swap_at_s,
                          rollback_at_s=args.rollback_at_s, admin_token=args.admin_token, tls=tls)
    return LoadConfig(address=args.address, qps=args.qps, duration_s=args.duration_s,
                      concurrency=args.concurrency, k=args.k, timeout_s=args.timeout_s, channels=args.channels,
                      num_customers=args.num_customers, customer_format=args.customer_format,
                      distribution=args.distribution, zipf_s=args.zipf_s, seed=args.seed,
                      sample_responses=args.sample_responses, swap=swap, tls=tls, rpc_mix=args.rpc_mix,
                      batch_size=args.batch_size, num_candidates=args.num_candidates,
                      candidate_format=args.candidate_format)



def main(argv: list[str] | None = None) -> None:
    """The recsys-loadtest command: runs the load, writes the report (and the
    plot), exits 1 when a request failed or was dropped, a swap step failed or
    a file could not be written; 130 or 143 when SIGINT or SIGTERM ended it
    early (what it measured until then is reported as usual)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:  # else found after the run, losing its report
        plot = check_outputs(args.out, args.plot, "--out", "--plot")
    except ValueError as e:
        parser.error(str(e))
    from serving.rpc.grpc_server import run_event_loop  # the services' event loop (uvloop): a cheaper client too

    started, stopped_by = time.monotonic(), []
    try:
        report = run_event_loop(_until_stopped(config, None if args.quiet else sys.stderr, stopped_by))
    except (TimeoutError, asyncio.TimeoutError):
        details = config.tls.connect_failure(config.address)
        print(f"recsys-loadtest: could not connect to {config.address} within {connect_timeout_s(config):g} s"
              + (f": {details}{tls_hint(details)}" if details else ""), file=sys.stderr)
        sys.exit(1)
    text = json.dumps(report, indent=2)
    lost: list[Path] = []  # files that could not be written, though checked before the run
    if args.out is None:
        print(text)
    elif not _write(args.out, lambda: args.out.write_text(text + "\n")):
        lost.append(args.out)
    print(format_table(report), file=sys.stderr)
    if plot:
        from recsys_client.loadtest.plot import plot_timeline  # matplotlib only when a plot is asked for

        if _write(plot, lambda: plot_timeline(report, plot)):
            print(f"timeline plot: {plot}", file=sys.stderr)
        else:
            lost.append(plot)
    print(f"(run took {time.monotonic() - started:.1f} s)", file=sys.stderr)
    if args.out in lost:  # the report to stdout instead
        print(text)
    if stopped_by:
        sys.exit(128 + stopped_by[0])
    failed = lost or report["requests"]["errors"] or report["requests"]["dropped"] or any(
        report.get(name, {}).get("ok") is False for name in ("swap", "rollback"))
    sys.exit(1 if failed else 0)


async def _until_stopped(config: LoadConfig, progress, stopped_by: list[int]) -> dict:
    """``run_load``, which SIGINT or SIGTERM ends early (``stopped_by``: the signal): its requests in flight are
    awaited and reported with the rest, so a run cut short still says what it measured."""
    loop, stop = asyncio.get_running_loop(), asyncio.Event()

    def stopped(signum: int) -> None:
        if stopped_by:  # a second signal: the wait for what is in flight is one its user chose not to have
            os.write(2, f"recsys-loadtest: stopped again by {signal.Signals(signum).name}: ended at once, nothing "
                        f"written (a swap step under way finishes in its own process)\n".encode())
            os._exit(128 + signum)
        print(f"recsys-loadtest: stopped by {signal.Signals(signum).name}: waiting for the requests in flight (at "
              f"most --timeout-s {config.timeout_s:g} s) and any swap step under way; again to end at once",
              file=sys.stderr)
        stopped_by.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped, signum)
    if progress is not None:  # a server that is down is waited for: say how long
        print(f"recsys-loadtest: connecting to {config.address} (at most {connect_timeout_s(config):g} s)",
              file=progress, flush=True)
    try:
        return await run_load(config, progress=progress, stop=stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _write(path: Path, write: Callable[[], Any]) -> bool:
    """Runs ``write`` of ``path``; False, saying so, where it failed (a full disk, a directory removed meanwhile)."""
    try:
        write()
        return True
    except OSError as e:
        print(f"recsys-loadtest: error: cannot write {path}: {e.strerror or e}", file=sys.stderr)
        return False
