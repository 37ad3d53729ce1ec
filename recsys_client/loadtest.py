"""recsys-loadtest: open-loop gRPC load against the QueryService (Recommend,
and any mix of RecommendSimilar, BatchRecommend and RecordInteractions).

    recsys-loadtest --address HOST:PORT --qps 200 --duration-s 30 \\
        [--concurrency 512] [--k 10] [--timeout-s 2] [--channels 2] \\
        [--num-customers 300] [--customer-format 'c{:06d}'] \\
        [--distribution uniform|zipf] [--zipf-s 1.1] [--seed 0] \\
        [--rpc-mix recommend=0.8,similar=0.1,record=0.1] [--batch-size 8] \\
        [--num-candidates 200] [--candidate-format 'i{:06d}'] \\
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
RPC of the mix its counts and latency (``rpcs``), a per-second timeline, how
late the client sent (``send_lag_ms``: from scheduled to actual send) and, with
``--swap``, latency before / during / after the publish and the rollback.
Exits 1 when any request failed or was dropped, or a swap step failed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import multiprocessing
import sys
import time
from array import array
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np
from hdrh.histogram import HdrHistogram

from serving.tls import ClientTls, ToolTls, tls_hint
from settings.flags import ConfigError, add_flags, add_secret_file, comma_list, flag_name, from_args

# Histogram range: 1 us .. 60 s at 3 significant digits (0.1% value precision).
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 60_000_000
HIST_DIGITS = 3
PERCENTILES = (("p50_ms", 50.0), ("p90_ms", 90.0), ("p99_ms", 99.0), ("p99_9_ms", 99.9))

# Outcome codes of one scheduled request in RequestLog.
OK, ERROR, DROPPED = 0, 1, 2
DISTRIBUTIONS = ("uniform", "zipf")
# The RPCs a run can mix, by their code in RequestLog.
RPCS = ("recommend", "similar", "batch", "record")
RECOMMEND_ONLY = {"recommend": 1.0}
# The RPCs whose answers cache_hits counts (one answer per request) and cache_hit_ratio divides by.
CACHED_RPCS = ("recommend", "similar")


def parse_rpc_mix(text: str) -> dict[str, float]:
    """``recommend=0.8,similar=0.1,record=0.1`` -> shares summing to 1, in RPCS order."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in RPCS:
            raise ValueError(f"unknown RPC {name!r}; choose from {', '.join(RPCS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"{part!r} is not NAME=WEIGHT") from None
        if not 0 <= weights[name] < math.inf:  # inf would make every share nan
            raise ValueError(f"the weight of {name} must be >= 0 and finite")
    total = sum(weights.values())
    if not total > 0:
        raise ValueError("give at least one RPC a positive weight")
    return {name: weights[name] / total for name in RPCS if weights.get(name)}


def _rpc_mix_flag(text: str) -> dict[str, float]:
    """``parse_rpc_mix`` for ``--rpc-mix``: argparse shows only an ArgumentTypeError's message, not a ValueError's."""
    try:
        return parse_rpc_mix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds (1 us .. 60 s, 3 digits)."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


# --------------------------------------------------------------------------- config


@dataclass
class SwapConfig:
    """Blue-green publish of ``version`` at ``at_s`` seconds into the run, and an
    optional rollback at ``rollback_at_s`` (both relative to the first request)."""

    registry: Path
    model: str
    index_admin: list[str]
    query_admin: list[str]
    version: int
    at_s: float
    rollback_at_s: float | None = None
    admin_token: str = ""
    admin_timeout_s: float = 120.0
    tls: ClientTls = ClientTls()  # to the admin planes

    def __post_init__(self) -> None:
        self.registry = Path(self.registry)
        if not self.index_admin or not self.query_admin:
            raise ValueError("a swap needs at least one index and one query admin address")
        if self.version < 1:
            raise ValueError(f"swap version must be >= 1, got {self.version}")
        if self.at_s < 0:
            raise ValueError(f"swap-at-s must be >= 0, got {self.at_s}")
        if self.rollback_at_s is not None and self.rollback_at_s < self.at_s:
            raise ValueError(f"rollback-at-s ({self.rollback_at_s}) is before swap-at-s ({self.at_s})")


@dataclass
class LoadConfig:
    """Everything one load run needs; see the module docstring for the meaning."""

    address: str
    qps: float
    duration_s: float
    concurrency: int = 512
    k: int = 10
    timeout_s: float = 2.0
    channels: int = 2
    num_customers: int = 300
    customer_format: str = "c{:06d}"
    distribution: str = "uniform"
    zipf_s: float = 1.1
    seed: int = 0
    sample_responses: int = 0
    swap: SwapConfig | None = None
    tls: ClientTls = ClientTls()  # to the query service
    rpc_mix: dict[str, float] = field(default_factory=lambda: dict(RECOMMEND_ONLY))  # RPC -> share of requests
    batch_size: int = 8
    num_candidates: int = 200
    candidate_format: str = "i{:06d}"

    def __post_init__(self) -> None:
        for name in ("qps", "duration_s", "timeout_s"):
            # inf: no schedule can be made of it, and no connect timeout (a run that never ends on a server down)
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        for name in ("concurrency", "k", "channels", "num_customers", "batch_size", "num_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.sample_responses < 0:
            raise ValueError(f"sample_responses must be >= 0, got {self.sample_responses}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if self.distribution == "zipf" and not self.zipf_s > 0:
            raise ValueError(f"zipf_s must be > 0, got {self.zipf_s}")
        for name in ("customer_format", "candidate_format"):  # fail now, not mid-run, on a bad format
            try:
                getattr(self, name).format(0)
            except (ValueError, LookupError, TypeError, AttributeError) as e:
                raise ValueError(f"{name} {getattr(self, name)!r} cannot format a number: {type(e).__name__}: "
                                 f"{e}") from None
        if set(self.rpc_mix) - set(RPCS) or not math.isclose(sum(self.rpc_mix.values()), 1.0):
            raise ValueError(f"rpc_mix must give shares of {RPCS} summing to 1, got {self.rpc_mix}")
        if self.swap is not None:  # else it changes the live version with no load to measure around it
            for name, at in (("swap-at-s", self.swap.at_s), ("rollback-at-s", self.swap.rollback_at_s)):
                if at is not None and at >= self.duration_s:
                    raise ValueError(f"{name} ({at:g}) must fall within the run (--duration-s {self.duration_s:g})")

    @property
    def total_requests(self) -> int:
        """Requests the schedule holds: one every 1/qps seconds in [0, duration_s)."""
        return max(1, math.ceil(self.qps * self.duration_s - 1e-9))


# --------------------------------------------------------------------------- customers


class CustomerSampler:
    """Seeded customer-id draws: ``uniform`` over ranks 0..n-1, or ``zipf`` where
    rank r has weight 1/(r+1)**s, so low ranks (c000000, c000001, ...) are the hot
    customers. A finite Zipf is used, not numpy's unbounded one, so every draw is
    a valid id and the skew does not depend on rejection."""

    def __init__(self, num_customers: int, customer_format: str = "c{:06d}", distribution: str = "uniform",
                 zipf_s: float = 1.1, seed: int = 0):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {distribution!r}")
        self.num_customers = num_customers
        self.customer_format = customer_format
        self.distribution = distribution
        self._rng = np.random.default_rng(seed)
        self._cdf: np.ndarray | None = None
        if distribution == "zipf":
            weights = 1.0 / np.arange(1, num_customers + 1, dtype=np.float64) ** zipf_s
            self._cdf = np.cumsum(weights) / weights.sum()

    def ranks(self, n: int) -> np.ndarray:
        """``n`` customer ranks in 0..num_customers-1."""
        if self._cdf is None:
            return self._rng.integers(0, self.num_customers, size=n)
        # side="right" and the clip guard against the cdf's last entry rounding below 1.
        return np.minimum(np.searchsorted(self._cdf, self._rng.random(n), side="right"), self.num_customers - 1)

    def draw(self, n: int) -> list[str]:
        """``n`` customer ids, formatted with ``customer_format``."""
        return [self.customer_format.format(int(r)) for r in self.ranks(n)]


class RpcDraws:
    """Which RPC each request of a run makes, and what it needs besides its
    customer: a candidate (similar, record) or more customers (batch), drawn
    up front and seeded. A Recommend-only run draws nothing more, so its
    customers are those of earlier versions of this tool."""

    def __init__(self, config: LoadConfig, total: int, sampler: CustomerSampler):
        self.batch_size = config.batch_size
        if config.rpc_mix == RECOMMEND_ONLY:
            self.rpcs = np.zeros(total, np.int8)
        else:
            shares = [config.rpc_mix.get(name, 0.0) for name in RPCS]
            self.rpcs = np.random.default_rng(config.seed + 1).choice(len(RPCS), size=total, p=shares).astype(np.int8)
        batches = np.flatnonzero(self.rpcs == RPCS.index("batch"))
        # A batch's customers after the first, drawn after the run's own so those stay the same.
        self._extra = sampler.draw(len(batches) * (config.batch_size - 1))
        self._batch_slot = {int(i): slot for slot, i in enumerate(batches)}
        self.candidates: list[str] = []
        if {"similar", "record"} & set(config.rpc_mix):
            ranks = np.random.default_rng(config.seed + 2).integers(0, config.num_candidates, size=total)
            self.candidates = [config.candidate_format.format(int(r)) for r in ranks]

    def batch(self, i: int, first: str) -> list[str]:
        """The customers of request ``i``'s BatchRecommend (``first`` is its own draw)."""
        start = self._batch_slot[i] * (self.batch_size - 1)
        return [first, *self._extra[start:start + self.batch_size - 1]]


# --------------------------------------------------------------------------- records and aggregation


class RequestLog:
    """One row per scheduled request, in compact parallel arrays so a long run's
    report (timeline, phases) can be computed afterwards over any time window."""

    def __init__(self) -> None:
        self.sched_s = array("d")  # scheduled send time, seconds after the run's start
        self.latency_us = array("q")  # from scheduled send to response; -1 unless OK
        self.outcome = array("b")  # OK, ERROR or DROPPED
        self.version = array("q")  # model_version of the response; 0 unless OK (or the RPC names none)
        self.rpc = array("b")  # index in RPCS

    def add(self, sched_s: float, outcome: int, latency_us: int = -1, version: int = 0, rpc: int = 0) -> None:
        """Appends one request's row."""
        self.sched_s.append(sched_s)
        self.outcome.append(outcome)
        self.latency_us.append(latency_us)
        self.version.append(version)
        self.rpc.append(rpc)

    def __len__(self) -> int:
        return len(self.sched_s)

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sched_s, latency_us, outcome, version) as numpy arrays (copies, so rows can still be added)."""
        return (_view(self.sched_s, np.float64), _view(self.latency_us, np.int64), _view(self.outcome, np.int8),
                _view(self.version, np.int64))

    def rpc_codes(self) -> np.ndarray:
        """Each row's RPC (index in RPCS), as ``columns`` gives the others."""
        return _view(self.rpc, np.int8)


def _view(a: array, dtype) -> np.ndarray:
    return np.frombuffer(a, dtype=dtype).copy() if len(a) else np.zeros(0, dtype)


def latency_summary(hist: HdrHistogram) -> dict[str, float | None]:
    """p50/p90/p99/p99.9/max/mean in milliseconds of a microsecond histogram;
    None for each when it is empty (so JSON readers cannot mistake it for 0 ms)."""
    if hist.get_total_count() == 0:
        return {**{name: None for name, _ in PERCENTILES}, "max_ms": None, "mean_ms": None}
    out: dict[str, float | None] = {name: round(hist.get_value_at_percentile(p) / 1000.0, 3)
                                    for name, p in PERCENTILES}
    out["max_ms"] = round(hist.get_max_value() / 1000.0, 3)
    out["mean_ms"] = round(hist.get_mean_value() / 1000.0, 3)
    return out


def record_latency(hist: HdrHistogram, latency_us: int) -> None:
    """Records a latency, clamped into the histogram's trackable range."""
    hist.record_value(min(max(int(latency_us), HIST_LOWEST_US), HIST_HIGHEST_US))


def window_stats(log: RequestLog, start_s: float, end_s: float, hist: HdrHistogram | None = None,
                 rpc: int | None = None) -> dict[str, Any]:
    """Statistics of the requests *scheduled* in [start_s, end_s) (of RPC
    ``rpc`` only, if given): counts, latency percentiles of the OK ones, OK
    responses per second of window, and the model versions that answered.
    ``hist`` is a scratch histogram to reuse (it is reset)."""
    hist = hist if hist is not None else new_histogram()
    hist.reset()
    sched, latency, outcome, version = log.columns()
    in_window = (sched >= start_s) & (sched < end_s)
    if rpc is not None:
        in_window &= log.rpc_codes() == rpc
    counts = np.bincount(outcome[in_window], minlength=3)
    ok = in_window & (outcome == OK)
    for value in latency[ok].tolist():
        record_latency(hist, value)
    answered = ok & (version > 0)  # RecordInteractions names no version
    versions, per_version = np.unique(version[answered], return_counts=True)
    width = end_s - start_s
    return {
        "start_s": round(start_s, 3),
        "end_s": round(end_s, 3),
        "requests": int(counts.sum()),
        "ok": int(counts[OK]),
        "errors": int(counts[ERROR]),
        "dropped": int(counts[DROPPED]),
        "qps": round(int(counts[OK]) / width, 2) if 0 < width < math.inf else None,
        "latency_ms": latency_summary(hist),
        "model_versions": {str(int(v)): int(n) for v, n in zip(versions, per_version)},
    }


def timeline(log: RequestLog, duration_s: float) -> list[dict[str, Any]]:
    """Per-second rows (by scheduled send time): OK qps, p50/p99, errors, drops
    and the versions that answered, to compare phases of a run by eye."""
    hist = new_histogram()
    rows = []
    for second in range(math.ceil(duration_s)):
        end = min(second + 1.0, duration_s)
        stats = window_stats(log, float(second), end, hist)
        rows.append({"second": second, "requests": stats["requests"], "ok": stats["ok"], "qps": stats["qps"],
                     "p50_ms": stats["latency_ms"]["p50_ms"], "p99_ms": stats["latency_ms"]["p99_ms"],
                     "errors": stats["errors"], "dropped": stats["dropped"],
                     "versions": [int(v) for v in stats["model_versions"]]})
    return rows


@dataclass
class Event:
    """An admin action run during the load (publish or rollback), with its
    start and end in seconds after the run's start."""

    name: str
    planned_at_s: float
    start_s: float | None = None
    end_s: float | None = None
    ok: bool | None = None
    error: str | None = None
    result: Any = None

    @property
    def duration_s(self) -> float | None:
        """Wall time of the action, None when it never ran."""
        return None if self.start_s is None or self.end_s is None else self.end_s - self.start_s


class ProgressMeter:
    """Per-second progress lines of a running load, read incrementally from its
    RequestLog: each line looks only at the rows appended since the previous
    one, so it costs the same in the first second and the thousandth.

    Rows are appended when a request finishes (or is dropped), so a line
    describes what *finished* in that second; the report's timeline instead
    groups by scheduled send time, and the two differ by the latencies."""

    def __init__(self, log: RequestLog, events: Sequence[Event] = ()):
        self._log = log
        self._events = events
        self._cursor = 0
        self._sent = 0
        self._announced: set[tuple[str, str]] = set()

    def line(self, second: int, width_s: float, sent_total: int, in_flight: int) -> str:
        """The line of ``second`` (``width_s`` long; the last one may be
        shorter), given how many requests have been sent so far in all and how
        many are in flight now. A window under a quarter of a second shows no
        QPS: a few stragglers over a few milliseconds would read as a burst."""
        start, end = self._cursor, len(self._log)
        self._cursor = end
        sent, self._sent = sent_total - self._sent, sent_total
        outcome = _view(self._log.outcome[start:end], np.int8)
        counts = np.bincount(outcome, minlength=3)
        ok = outcome == OK
        latency = _view(self._log.latency_us[start:end], np.int64)[ok]
        version = _view(self._log.version[start:end], np.int64)[ok]
        if latency.size:
            # inverted_cdf is the nearest-rank percentile the report's HdrHistogram gives.
            p50, p99 = (f"{v / 1000:.2f}" for v in np.percentile(latency, (50, 99), method="inverted_cdf"))
        else:
            p50 = p99 = "-"
        versions = ",".join(str(int(v)) for v in np.unique(version[version > 0])) or "-"
        qps = f"{counts[OK] / width_s:.1f}" if width_s >= 0.25 else "-"
        text = (f"[{second:>4}s] sent {sent:>5} ok {counts[OK]:>5} err {counts[ERROR]:>3} "
                f"drop {counts[DROPPED]:>3} qps {qps:>7} p50 {p50:>6} p99 {p99:>6} ms "
                f"in-flight {in_flight:>3} versions {versions}")
        changes = self._event_changes()
        self._announced.update(key for key, _ in changes)
        return text + ("  << " + "; ".join(mark for _, mark in changes) if changes else "")

    @property
    def pending(self) -> bool:
        """Whether rows or event changes arrived since the last line."""
        return self._cursor < len(self._log) or bool(self._event_changes())

    def _event_changes(self) -> list[tuple[tuple[str, str], str]]:
        """Event starts, skips and ends not yet shown, as (key, text)."""
        changes = []
        for event in self._events:
            if event.start_s is not None:
                changes.append(((event.name, "start"), f"{event.name} started at {event.start_s:.2f} s"))
            elif event.error:
                changes.append(((event.name, "skip"), f"{event.name} {event.error}"))
            if event.end_s is not None:
                outcome = "ok" if event.ok else f"FAILED ({event.error})"
                live = event.result.get("version") if isinstance(event.result, dict) else None
                changes.append(((event.name, "end"), f"{event.name} ended at {event.end_s:.2f} s, {outcome}"
                                + (f", version {live} live" if event.ok and live is not None else "")))
        return [(key, text) for key, text in changes if key not in self._announced]


def phase_windows(events: Sequence[Event], duration_s: float) -> dict[str, dict[str, tuple[float, float]]]:
    """For each event that ran: its ``before`` / ``during`` / ``after`` windows.

    ``before`` starts where the previous event ended (or at 0), ``during`` is the
    event's own [start, end), ``after`` runs until the next event starts (or the
    end of the schedule). So with a swap and a rollback, the swap's ``after`` is
    the rollback's ``before``: the steady state between the two."""
    ran = sorted((e for e in events if e.start_s is not None and e.end_s is not None), key=lambda e: e.start_s)
    out = {}
    for i, event in enumerate(ran):
        previous_end = ran[i - 1].end_s if i > 0 else 0.0
        next_start = ran[i + 1].start_s if i + 1 < len(ran) else duration_s
        end = min(event.end_s, duration_s)
        out[event.name] = {"before": (previous_end, min(event.start_s, duration_s)),
                           "during": (event.start_s, end),
                           "after": (end, max(end, next_start))}
    return out


def build_report(config: LoadConfig, log: RequestLog, *, elapsed_s: float, errors_by_code: Counter,
                 cache_hits: int, sources: Counter, events: Sequence[Event] = (),
                 samples: Sequence[dict] = (), cache_hits_by_rpc: Counter | None = None,
                 send_lag: HdrHistogram | None = None) -> dict[str, Any]:
    """Assembles the JSON report of a finished run from its request log.
    ``cache_hits_by_rpc``: cached answers per RPC (a batch counts each of its items);
    ``send_lag``: microseconds from each sent request's scheduled time to its send."""
    hist = new_histogram()
    overall = window_stats(log, 0.0, math.inf, hist)
    # A mix's record and batch answers are never counted as hits: in the denominator they would dilute the ratio.
    outcome = log.columns()[2]
    could_hit = int(((outcome == OK) & np.isin(log.rpc_codes(), [RPCS.index(r) for r in CACHED_RPCS])).sum())
    report: dict[str, Any] = {
        "config": _config_dict(config),
        "elapsed_s": round(elapsed_s, 3),
        "offered_qps": config.qps,
        # OK responses over the whole run, from first scheduled send to last response.
        "achieved_qps": round(overall["ok"] / elapsed_s, 2) if elapsed_s > 0 else None,
        "requests": {"scheduled": len(log), "sent": overall["requests"] - overall["dropped"],
                     "ok": overall["ok"], "errors": overall["errors"], "dropped": overall["dropped"]},
        "errors_by_code": dict(sorted(errors_by_code.items())),
        "latency_ms": overall["latency_ms"],
        # The client's own share of latency_ms: a large one means the load
        # generator, not the server, was behind.
        "send_lag_ms": latency_summary(send_lag if send_lag is not None else new_histogram()),
        "model_versions": overall["model_versions"],
        "cache_hits": cache_hits,
        "cache_hit_ratio": round(cache_hits / could_hit, 4) if could_hit else None,
        "sources": dict(sorted(sources.items())),
        "timeline": timeline(log, config.duration_s),
        "rpcs": {},
    }
    for name in config.rpc_mix:
        stats = window_stats(log, 0.0, math.inf, hist, rpc=RPCS.index(name))
        report["rpcs"][name] = {key: stats[key] for key in ("requests", "ok", "errors", "dropped", "latency_ms")}
        report["rpcs"][name]["cache_hits"] = (cache_hits_by_rpc or Counter())[name]
    windows = phase_windows(events, config.duration_s)
    for event in events:
        entry = {"planned_at_s": event.planned_at_s,
                 "start_s": None if event.start_s is None else round(event.start_s, 3),
                 "end_s": None if event.end_s is None else round(event.end_s, 3),
                 "duration_s": None if event.duration_s is None else round(event.duration_s, 3),
                 "ok": event.ok, "error": event.error, "result": event.result}
        if event.name in windows:
            entry["phases"] = {phase: window_stats(log, a, b, hist) for phase, (a, b) in windows[event.name].items()}
        report[event.name] = entry
    report["samples"] = list(samples)
    return report


def _config_dict(config: LoadConfig) -> dict[str, Any]:
    out = asdict(config)
    if config.swap is not None:
        out["swap"]["registry"] = str(config.swap.registry)
        out["swap"]["admin_token"] = "***" if config.swap.admin_token else ""  # never echo a secret
    return out


def sample_indices(total: int, n: int) -> set[int]:
    """Up to ``n`` request indices spread evenly over ``total`` requests, so the
    kept samples cover every phase of the run."""
    if n <= 0 or total <= 0:
        return set()
    if n >= total:
        return set(range(total))
    return {int((i + 0.5) * total / n) for i in range(n)}


# --------------------------------------------------------------------------- the run


def connect_timeout_s(config: LoadConfig) -> float:
    """How long to wait for the channels to connect before giving up."""
    return max(config.timeout_s, 10.0)


# The run's clock: monotonic with ns resolution. The event loop's own clock is
# not used for timing because uvloop's loop.time() is whole milliseconds.
clock_ns = time.perf_counter_ns


def seconds_since(t0_ns: int) -> float:
    """Seconds from ``t0_ns`` (a ``clock_ns`` reading) to now."""
    return (clock_ns() - t0_ns) / 1e9


async def _run_event(event: Event, fn: Callable[[], Any], t0_ns: int, pool: ProcessPoolExecutor,
                     after: asyncio.Task | None = None, requires: Event | None = None) -> None:
    loop = asyncio.get_running_loop()
    if after is not None:
        await after  # a rollback must not race the publish it undoes
    if requires is not None and not requires.ok:
        # Rolling back a publish that failed would undo the *previous* rollout instead.
        event.error = f"skipped: {requires.name} did not succeed"
        return
    await asyncio.sleep(max(0.0, event.planned_at_s - seconds_since(t0_ns)))
    event.start_s = seconds_since(t0_ns)
    try:
        event.result = await loop.run_in_executor(pool, fn)
        event.ok = True
    except Exception as e:  # noqa: BLE001 - reported, and the load goes on
        event.ok, event.error = False, f"{type(e).__name__}: {e}"
    event.end_s = seconds_since(t0_ns)


def _admin_action(swap: SwapConfig, act: Callable[..., tuple[int, dict[str, float]]]) -> dict[str, Any]:
    """Runs ``act(fleet, registry, swap)`` in the admin process on a fresh
    connection to the replicas; the version it made live and where the time
    went (``connect``: the admin tool's channels, then ``act``'s own steps)."""
    from model_registry import Registry
    from recsys_client.publish import Fleet

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
    otherwise share this process's GIL with the load and skew its latencies."""
    return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))


def _import_admin_modules() -> None:
    import recsys_client.publish  # noqa: F401  (the child's imports, before the timed run)


async def run_load(config: LoadConfig, *, progress: TextIO | None = None,
                   log: RequestLog | None = None) -> dict[str, Any]:
    """Runs the open-loop load described by ``config`` (and its swap scenario,
    if any) and returns the report as a JSON-serializable dict.

    ``progress``: where to write a line per second while it runs (None: nowhere).
    ``log``: a RequestLog to append each request's row to, for a caller that
    wants the raw latencies (a fresh one otherwise)."""
    import grpc

    from protos.recsys.v1 import retrieval_pb2 as pb
    from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
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
        # Connect first so connection set-up is not charged to the first requests.
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)),
                               timeout=connect_timeout_s(config))
        events: list[Event] = []
        event_tasks: list[asyncio.Task] = []
        t0 = clock_ns()
        if config.swap is not None:
            admin = _admin_process()
            await loop.run_in_executor(admin, _import_admin_modules)
            t0 = clock_ns()
            swap_event = Event("swap", config.swap.at_s)
            events.append(swap_event)
            event_tasks.append(asyncio.create_task(
                _run_event(swap_event, functools.partial(_admin_action, config.swap, _rollout), t0, admin)))
            if config.swap.rollback_at_s is not None:
                rollback_event = Event("rollback", config.swap.rollback_at_s)
                events.append(rollback_event)
                event_tasks.append(asyncio.create_task(_run_event(
                    rollback_event, functools.partial(_admin_action, config.swap, _rollback), t0, admin,
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
                    sources[pb.ResultSource.Name(answer.source)] += 1
                if i in to_sample and rpc == "recommend":
                    samples.append({"index": i, "scheduled_s": round(sched_s, 4),
                                    "customer_id": customers[i], "model_version": response.model_version,
                                    "candidate_ids": [c.candidate_id for c in response.candidates],
                                    "cache_hit": response.cache_hit,
                                    "source": pb.ResultSource.Name(response.source)})
            finally:
                in_flight -= 1
                last_done_ns = max(last_done_ns, clock_ns() - t0)

        tasks: set[asyncio.Task] = set()
        i = 0
        due = t0
        while i < total:
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
                # early; the loop then sleeps again for what is left.
                await asyncio.sleep(max(0.0, (due - clock_ns()) / 1e9))
        if tasks:
            await asyncio.gather(*tasks)
        if event_tasks:
            await asyncio.gather(*event_tasks)
        elapsed = max(last_done_ns / 1e9, min(config.duration_s, seconds_since(t0)))
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
                            send_lag=send_lag)
    finally:
        if ticker is not None:
            ticker.cancel()
        for channel in channels:
            await channel.close()
        if admin is not None:
            admin.shutdown()


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """The recsys-loadtest command line."""
    parser = argparse.ArgumentParser(prog="recsys-loadtest", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, help="query service HOST:PORT")
    add_flags(parser.add_argument_group("TLS to the query service and the admin planes"), ToolTls)
    parser.add_argument("--qps", type=float, required=True, help="arrival rate, requests per second")
    parser.add_argument("--duration-s", type=float, required=True, help="length of the schedule")
    parser.add_argument("--concurrency", type=int, default=512,
                        help="most requests in flight; more are dropped (and counted)")
    parser.add_argument("--k", type=int, default=10, help="candidates per request")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="deadline of each request")
    parser.add_argument("--channels", type=int, default=2, help="gRPC channels (connections) to spread load over")
    parser.add_argument("--num-customers", type=int, default=300, help="customer ids 0..N-1")
    parser.add_argument("--customer-format", default="c{:06d}", help="str.format pattern of a customer id")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="uniform", help="customer popularity")
    parser.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent (with --distribution zipf)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the customer draws")
    parser.add_argument("--rpc-mix", type=_rpc_mix_flag, default=dict(RECOMMEND_ONLY), metavar="RPC=SHARE,...",
                        help=f"share of each RPC in the requests ({', '.join(RPCS)}); default recommend only")
    parser.add_argument("--batch-size", type=int, default=8, help="customers per BatchRecommend")
    parser.add_argument("--num-candidates", type=int, default=200,
                        help="candidate ids 0..N-1 for RecommendSimilar and RecordInteractions")
    parser.add_argument("--candidate-format", default="i{:06d}", help="str.format pattern of a candidate id")
    parser.add_argument("--sample-responses", type=int, default=0,
                        help="keep up to N responses, spread over the run, in the report")
    parser.add_argument("--out", type=Path, help="write the JSON report here instead of stdout")
    parser.add_argument("--plot", type=Path, metavar="FILE.png",
                        help="write a PNG of the per-second timeline (QPS, p50/p99, errors; swap and rollback marked)")
    parser.add_argument("--quiet", action="store_true", help="no progress line per second on stderr")
    swap = parser.add_argument_group("swap scenario (--swap)")
    swap.add_argument("--swap", action="store_true", help="publish a version during the run, then roll back")
    swap.add_argument("--registry", type=Path, help="model registry root directory")
    swap.add_argument("--model", help="model name under the registry")
    swap.add_argument("--index-admin", type=comma_list, default="",
                      help="index replicas' admin HOST:PORT, comma-separated")
    swap.add_argument("--query-admin", type=comma_list, default="",
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


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_table(report: dict[str, Any]) -> str:
    """A short human summary of a report: totals, percentiles, timeline, phases."""
    req, lat = report["requests"], report["latency_ms"]
    lines = [
        f"requests {req['scheduled']}: ok {req['ok']}, errors {req['errors']}, dropped {req['dropped']}; "
        f"offered {report['offered_qps']:g} qps, achieved {report['achieved_qps']} qps",
        "latency ms: " + "  ".join(f"{k[:-3]} {_ms(lat[k])}"
                                   for k in ("p50_ms", "p90_ms", "p99_ms", "p99_9_ms", "max_ms"))
        + (f"   (client send lag p99 {_ms(report['send_lag_ms']['p99_ms'])})" if "send_lag_ms" in report else ""),
        f"versions {report['model_versions']}  cache hits {report['cache_hits']}"
        + (f"  errors {report['errors_by_code']}" if report["errors_by_code"] else ""),
        *(f"  {name:<9} requests {stats['requests']:>6} ok {stats['ok']:>6} errors {stats['errors']} "
          f"p50 {_ms(stats['latency_ms']['p50_ms'])} p99 {_ms(stats['latency_ms']['p99_ms'])}"
          for name, stats in report["rpcs"].items() if len(report["rpcs"]) > 1),
        "",
        f"{'sec':>4} {'ok':>6} {'qps':>8} {'p50':>8} {'p99':>8} {'err':>5} {'drop':>5}  versions",
    ]
    for row in report["timeline"]:
        lines.append(f"{row['second']:>4} {row['ok']:>6} {row['qps'] or 0:>8.1f} {_ms(row['p50_ms']):>8} "
                     f"{_ms(row['p99_ms']):>8} {row['errors']:>5} {row['dropped']:>5}  {row['versions']}")
    for name in ("swap", "rollback"):
        event = report.get(name)
        if event is None:
            continue
        status = "ok" if event["ok"] else f"FAILED: {event['error']}" if event["ok"] is False else "did not run"
        lines += ["", f"{name}: start {event['start_s']} s, took {event['duration_s']} s, {status}"]
        for phase, stats in event.get("phases", {}).items():
            lines.append(f"  {phase:<7} [{stats['start_s']:.2f}, {stats['end_s']:.2f}) ok {stats['ok']:>6} "
                         f"p50 {_ms(stats['latency_ms']['p50_ms'])} p99 {_ms(stats['latency_ms']['p99_ms'])} "
                         f"max {_ms(stats['latency_ms']['max_ms'])} err {stats['errors']} drop {stats['dropped']} "
                         f"versions {stats['model_versions']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """The recsys-loadtest command: runs the load, writes the report (and the
    plot), exits 1 when a request failed or was dropped or a swap step failed."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    for flag, path in (("--out", args.out), ("--plot", args.plot)):
        if path is not None and not path.absolute().parent.is_dir():  # else found after the run, losing its report
            parser.error(f"{flag}: no directory {path.absolute().parent} to write {path.name} in")
    from serving.grpc_server import run_event_loop  # the services' event loop (uvloop): a cheaper client too

    started = time.monotonic()
    try:
        report = run_event_loop(run_load(config, progress=None if args.quiet else sys.stderr))
    except (TimeoutError, asyncio.TimeoutError):
        details = config.tls.connect_failure(config.address)
        print(f"recsys-loadtest: could not connect to {config.address} within {connect_timeout_s(config):g} s"
              + (f": {details}{tls_hint(details)}" if details else ""), file=sys.stderr)
        sys.exit(1)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n")
    else:
        print(text)
    print(format_table(report), file=sys.stderr)
    if args.plot:
        from recsys_client.loadtest_plot import plot_timeline  # matplotlib only when a plot is asked for

        print(f"timeline plot: {plot_timeline(report, args.plot)}", file=sys.stderr)
    print(f"(run took {time.monotonic() - started:.1f} s)", file=sys.stderr)
    failed = report["requests"]["errors"] or report["requests"]["dropped"] or any(
        report.get(name, {}).get("ok") is False for name in ("swap", "rollback"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
