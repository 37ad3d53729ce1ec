"""``recsys-loadtest``: open-loop gRPC load against the query service, with a blue-green swap under it if asked
(``cli`` holds the command and what it measures).

Modules: ``config`` (a run: ``LoadConfig``, ``SwapConfig``), ``traffic`` (each request's customer and RPC),
``run`` (the open loop and the swap's steps), ``report`` (outcomes, percentiles, timeline, the JSON report and its
table), ``plot`` (the timeline as a PNG), ``cli``.
"""

from recsys_client.loadtest.cli import build_parser, main
from recsys_client.loadtest.config import LoadConfig, SwapConfig
from recsys_client.loadtest.report import format_table
from recsys_client.loadtest.run import run_load

__all__ = ["LoadConfig", "SwapConfig", "build_parser", "format_table", "main", "run_load"]
