"""Tool-usage logs: ``tool_usage.csv`` (user_id, page, timestamp as ISO 8601 UTC,
"2024-03-05T14:22:11Z"), the page views of a web app made of many tools.

Users have a role (a taste cluster: the tools they reach for) and work in
sessions. A session opens a tool of the user's taste; each next tool is, most
of the time, one of the current tool's few usual successors (a workflow:
convert a CSV, then format the JSON, then validate it), otherwise another pick
of the user's taste. The next tool is thus predictable from the recent ones
(a Markov chain), and the users' own tools from their roles.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from settings.flags import require
from trainer.data.generators.common import GeneratedData, GeneratorConfig, TasteSpec, iso_times, write_csv

OBJECTS = ("json", "csv", "xml", "yaml", "sql", "html", "css", "markdown", "pdf", "image", "png", "svg", "video",
           "audio", "text", "regex", "url", "base64", "jwt", "uuid", "hash", "color", "font", "qr-code", "barcode",
           "invoice", "timesheet", "calendar", "chart", "spreadsheet", "email", "dns", "ip", "cron", "timezone",
           "unit", "currency", "password", "diff", "log")
ACTIONS = ("formatter", "validator", "converter", "viewer", "editor", "generator", "compressor", "minifier",
           "merger", "splitter", "encoder", "decoder", "checker", "extractor", "resizer", "cleaner", "tester",
           "builder", "comparer", "translator")


@dataclasses.dataclass(frozen=True)
class ToolsConfig(GeneratorConfig):
    """Tool usage: sizes, planted roles and the workflow transitions."""

    taste: TasteSpec = TasteSpec(clusters=12, zipf_exponent=1.0, in_cluster_share=0.6, per_customer=50.0,
                                 activity_sigma=1.0, candidates=600)
    session_length: float = 6.0  # mean tools per session (geometric)
    max_session_length: int = 60
    successors: tuple[float, ...] = (0.55, 0.3, 0.15)  # each tool's usual next tools, and how often each
    follow_share: float = 0.6  # the next tool is one of the current one's successors this often
    step_seconds: float = 40.0  # mean time on a tool
    first_date: str = "2024-01-01"
    last_date: str = "2024-03-31"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.taste.candidates is not None and self.taste.candidates <= len(OBJECTS) * len(ACTIONS),
                "taste.candidates", f"must be a fixed number of tools, at most {len(OBJECTS) * len(ACTIONS)}")
        require(1 <= self.session_length <= self.max_session_length, "session_length",
                "must be in [1, max_session_length]")
        require(len(self.successors) >= 1 and min(self.successors) > 0, "successors", "needs positive shares")
        require(0 <= self.follow_share <= 1, "follow_share", "must be in [0, 1]")


def _pages(rng: np.random.Generator, cluster: np.ndarray) -> np.ndarray:
    """A distinct page per tool, "/tools/json-formatter"; a cluster's tools mostly
    share their objects (a role works on JSON and CSV, another on images)."""
    objects = rng.permutation(OBJECTS)
    names = np.char.add(np.char.add(np.repeat(objects, len(ACTIONS)), "-"), np.tile(ACTIONS, len(objects)))
    pages = np.empty(len(cluster), dtype=names.dtype)
    pages[np.argsort(cluster, kind="stable")] = names[:len(cluster)]
    return np.char.add("/tools/", pages)


def generate(config: ToolsConfig, out: Path) -> GeneratedData:
    """Writes ``out/tool_usage.csv``; returns the flags that train on every page view by user."""
    rng = np.random.default_rng(config.seed)
    taste = config.taste.plant(rng, config.interactions)
    shares = np.asarray(config.successors) / np.sum(config.successors)
    k = len(shares)
    # A tool's usual successors are tools of its own cluster, popular ones more often.
    successors = taste.draw_in_cluster(rng, np.repeat(taste.candidate_cluster, k)).reshape(-1, k)

    sessions = max(1, round(config.interactions / config.session_length))
    user = taste.draw_customers(rng, sessions)
    length = np.minimum(rng.geometric(1.0 / config.session_length, sessions), config.max_session_length)
    start = np.sort(rng.random(sessions))  # session start, as a share of the period
    tool = np.empty((sessions, config.max_session_length), dtype=np.int64)
    tool[:, 0] = taste.draw_candidates(rng, user, config.taste.in_cluster_share)[0]
    # The chain runs for every session at once, one step at a time; steps past a
    # session's length are dropped below.
    for step in range(1, int(length.max())):
        follow = rng.random(sessions) < config.follow_share
        nxt = successors[tool[:, step - 1], rng.choice(k, sessions, p=shares)]
        tool[:, step] = np.where(follow, nxt, taste.draw_candidates(rng, user, config.taste.in_cluster_share)[0])

    taken = np.arange(config.max_session_length)[None, :] < length[:, None]
    row, step = np.nonzero(taken)  # session by session, steps in order
    lo, hi = (np.datetime64(d, "s").astype(np.int64) for d in (config.first_date, config.last_date))
    dwell = np.cumsum(rng.exponential(config.step_seconds, (sessions, config.max_session_length)), axis=1)
    seconds = lo + (start[row] * (hi - lo)).astype(np.int64) + dwell[row, step].astype(np.int64)
    order = np.argsort(seconds, kind="stable")
    user_ids = np.char.add("u-", np.char.zfill(rng.permutation(taste.num_customers).astype(str), 5))
    path = write_csv(out / "tool_usage.csv", {
        "user_id": user_ids[user[row[order]]],
        "page": _pages(rng, taste.candidate_cluster)[tool[row, step][order]],
        "timestamp": iso_times(seconds[order], suffix="Z"),
    })
    flags = ("--data-path", str(path), "--customer-col", "user_id", "--candidate-col", "page",
             "--time-col", "timestamp")
    return GeneratedData("tools", (path,), "interactions-csv", flags, len(order))
