"""Proto enum values by name, as logs, messages and reports print them, for the numbers of a later release too."""

from __future__ import annotations

from typing import Any


def enum_name(enum: Any, number: int, prefix: str = "") -> str:
    """``enum``'s name for ``number``, less ``prefix``; ``UNKNOWN_<number>`` for a number this release names nothing.
    proto3 enums are open: a message parsed from a later release's bytes keeps such a number, and ``Name`` raises."""
    try:
        return enum.Name(number).removeprefix(prefix)
    except ValueError:
        return f"UNKNOWN_{number}"
