"""What a run measured: each request's outcome and latency (``RequestLog``), HdrHistogram percentiles, the
per-second timeline and progress lines, the swap's phases, and the JSON report and its table."""

from __future__ import annotations

import math
from array import array
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from hdrh.histogram import HdrHistogram

from recsys_client.loadtest.config import RPCS, LoadConfig


# Histogram range: 1 us .. 60 s at 3 significant digits (0.1% value precision).
HIST_LOWEST_US = 1
HIST_HIGHEST_US = 60_000_000
HIST_DIGITS = 3
PERCENTILES = (("p50_ms", 50.0), ("p90_ms", 90.0), ("p99_ms", 99.0), ("p99_9_ms", 99.9))

# A run whose answers arrived at under this share of the offered rate fell behind its schedule.
KEPT_UP = 0.95
# A send lag p99 over this means the load generator, not the server, was late (its event loop or CPU).
CLIENT_LATE_MS = 10.0

# Outcome codes of one scheduled request in RequestLog.
OK, ERROR, DROPPED = 0, 1, 2
# The RPCs whose answers cache_hits counts (one answer per request) and cache_hit_ratio divides by.
CACHED_RPCS = ("recommend", "similar")


def new_histogram() -> HdrHistogram:
    """An empty latency histogram in microseconds (1 us .. 60 s, 3 digits)."""
    return HdrHistogram(HIST_LOWEST_US, HIST_HIGHEST_US, HIST_DIGITS)


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

    def arrivals(self) -> np.ndarray:
        """When each OK answer arrived, in seconds after the run's start (its scheduled send plus its latency)."""
        sched, latency, outcome, _ = self.columns()
        ok = outcome == OK
        return sched[ok] + latency[ok] / 1e6

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
    """Per-second rows to compare phases of a run by eye: the requests scheduled in that second (counts, p50/p99,
    errors, drops, the versions that answered) and ``qps``, the OK answers that *arrived* in it per second. Answers
    arrive late when the server falls behind, so the rows go on past the schedule until the last one arrived, and
    each row's ``end_s`` says where it ends (a partial last second's is not a whole second on)."""
    hist = new_histogram()
    arrived = log.arrivals()
    end_s = max(duration_s, float(arrived.max()) if arrived.size else 0.0)
    rows = []
    for second in range(math.ceil(end_s)):
        end = min(second + 1.0, end_s)
        # Past the schedule the window of scheduled requests is empty: counts 0, no latency.
        stats = window_stats(log, float(second), max(float(second), min(end, duration_s)), hist)
        # The last row keeps the answer that arrived at its very end.
        answered = int(((arrived >= second) & ((arrived < end) | (end == end_s))).sum())
        rows.append({"second": second, "end_s": round(end, 3), "requests": stats["requests"], "ok": stats["ok"],
                     "qps": round(answered / (end - second), 2),
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
                 send_lag: HdrHistogram | None = None, stopped_at_s: float | None = None) -> dict[str, Any]:
    """Assembles the JSON report of a finished run from its request log.
    ``cache_hits_by_rpc``: cached answers per RPC (a batch counts each of its items);
    ``send_lag``: microseconds from each sent request's scheduled time to its send;
    ``stopped_at_s``: when a stop ended the schedule early (its timeline and
    phases end there, and a warning says how much of it was not sent)."""
    schedule_s = config.duration_s if stopped_at_s is None else stopped_at_s
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
        "timeline": timeline(log, schedule_s),
        "rpcs": {},
    }
    for name in config.rpc_mix:
        stats = window_stats(log, 0.0, math.inf, hist, rpc=RPCS.index(name))
        report["rpcs"][name] = {key: stats[key] for key in ("requests", "ok", "errors", "dropped", "latency_ms")}
        report["rpcs"][name]["cache_hits"] = (cache_hits_by_rpc or Counter())[name]
    windows = phase_windows(events, schedule_s)
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
    report["warnings"] = warnings(report, answer_rate(log, config.qps))
    if stopped_at_s is not None:
        report["stopped_at_s"] = round(stopped_at_s, 3)
        report["warnings"].append(f"stopped at {stopped_at_s:.2f} s of a {config.duration_s:g} s schedule: "
                                  f"{config.total_requests - len(log)} of its {config.total_requests} requests "
                                  "were not sent")
    return report


def answer_rate(log: RequestLog, qps: float) -> float | None:
    """Answers (failed ones included) per second over the span the OK ones arrived in, from the first to the last
    (plus one interval, so N answers sent 1/qps apart read as qps): what the target kept up with, whatever its
    latency; None with fewer than two OK answers."""
    arrived = log.arrivals()
    if arrived.size < 2:
        return None
    answered = int(np.isin(log.columns()[2], (OK, ERROR)).sum())
    return answered / (float(arrived.max() - arrived.min()) + 1.0 / qps)


def warnings(report: dict[str, Any], rate: float | None) -> list[str]:
    """What a run's exit status and percentiles do not show: answers that fell behind the offered rate (``rate``,
    ``answer_rate``'s: their latencies hold the queueing, and those that failed or were dropped are in no
    percentile), and a load generator that itself sent late (its drops and latency are then its own)."""
    notes = []
    offered = report["offered_qps"]
    if rate is not None and rate < KEPT_UP * offered:
        last = report["timeline"][-1]["end_s"] if report["timeline"] else report["config"]["duration_s"]
        notes.append(f"answers arrived at {rate:.3g}/s of the {offered:g}/s offered (the last OK one at {last:g} s "
                     f"of a {report['config']['duration_s']:g} s schedule): the target fell behind, so latencies "
                     "include queueing, and failed or dropped requests are in no percentile")
    lag = report["send_lag_ms"]["p99_ms"]
    if lag is not None and lag > CLIENT_LATE_MS:
        notes.append(f"the load generator sent late (send lag p99 {lag:g} ms): part of the latency and of the "
                     "drops is its own, not the target's")
    return notes


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
        *(f"WARNING: {note}" for note in report["warnings"]),
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
