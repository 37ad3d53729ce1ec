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
