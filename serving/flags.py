"""Command-line flags whose defaults come from environment variables, so the
same option works as ``--redis-url URL`` or ``RECSYS_REDIS_URL=URL`` (compose,
Kubernetes). Flags win over the environment."""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable


def add_flag(parser: argparse.ArgumentParser, name: str, *, type: Callable[[str], Any] = str,
             default: Any = None, help: str, required: bool = False) -> None:
    """Adds ``--name`` defaulting to ``$RECSYS_NAME`` (upper-case, '-' -> '_'), then ``default``."""
    env = "RECSYS_" + name.upper().replace("-", "_")
    env_value = os.environ.get(env)
    value = type(env_value) if env_value is not None else default
    parser.add_argument(
        f"--{name}", type=type, default=value, required=required and value is None,
        help=f"{help} (env {env}" + (f", default {default})" if default is not None else ")"),
    )


def add_service_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    """The flags every serving process has: what to serve, where, and how to log."""
    add_flag(parser, "registry", required=True, help="model registry root directory")
    add_flag(parser, "model", required=True, help="model name under the registry")
    add_flag(parser, "port", type=int, default=default_port, help="gRPC data-plane port (0 picks a free one)")
    add_flag(parser, "host", default="127.0.0.1", help="address to bind (0.0.0.0 for all interfaces)")
    add_flag(parser, "metrics-port", type=int, default=0, help="Prometheus /metrics port, 0 to disable")
    add_flag(parser, "log-level", default="info", help="logging level")
