"""A column's numbers and times: ratings as numbers, times as epoch numbers or ISO dates in one unit whose span is
checked (the package docstring gives the rules)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np


def parse_numbers(values: list[Any], path: Path, col: str) -> np.ndarray:
    """A column's values as float64 (NaN where blank); a ValueError names the first that is no number."""
    try:
        return np.array([np.nan if v is None or v == "" else v for v in values], dtype=np.float64)
    except (ValueError, TypeError, OverflowError):  # OverflowError: a JSON int past float64
        bad = next((v for v in values if not is_number(v)), None)
        raise ValueError(f"{path}: column {col!r} must be numeric, found {str(bad)[:40]!r}") from None


def is_number(v: Any) -> bool:
    """Whether ``v`` reads as a number float64 holds, or is blank."""
    try:
        float(v)
        return True
    except (TypeError, ValueError, OverflowError):
        return v is None or v == ""


# A cell that is a number (numpy would read "1700000000" as the year 1700000000 among dates).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def time_error(path: Path, col: str, row: int, value: Any, problem: str) -> ValueError:
    """The error naming a time column's ``problem`` and the data row and value that show it."""
    return ValueError(f"{path}: column {col!r} {problem}: data row {row} holds {str(value)!r}")


def parse_times(values: list[Any], path: Path, col: str, first_row: int) -> tuple[np.ndarray, str]:
    """(times, "number" or "date") of a chunk whose first value is data row ``first_row + 1``: epoch numbers as
    given (int64, or float64 where they have a decimal point: sessions keep the fraction), ISO dates as int64 epoch
    milliseconds.

    Refuses, naming the row and value, a blank, a number that is not finite, NaT, and numbers beside dates: each
    would be read as a time far from the others' and move events across a temporal split.
    """
    try:
        arr = np.array(values)
    except (ValueError, OverflowError):
        arr = np.array([str(v) for v in values])
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64), "number"
    if arr.dtype.kind == "O":  # JSON null beside numbers
        arr = np.array(["" if v is None else str(v) for v in values])
    if arr.dtype.kind != "f":
        arr = np.char.strip(arr.astype(str))
        try:
            return arr.astype(np.int64), "number"
        except (ValueError, OverflowError):  # OverflowError: past int64, read as a float (and refused as no epoch)
            pass
        blank = arr == ""
        if blank.any():
            raise ValueError(f"{path}: column {col!r} has {int(blank.sum())} empty value"
                             f"{'s' if blank.sum() > 1 else ''}; every row needs a time "
                             f"(or leave out the time column to use file order)")
        try:
            arr = arr.astype(np.float64)
        except ValueError:
            number = np.zeros(len(arr), dtype=bool)
            undated = np.flatnonzero(np.char.find(arr, "-", 1) < 0)  # an ISO date has a dash after its year
            number[undated] = [_NUMBER.fullmatch(v) is not None for v in arr[undated]]
            if number.any():
                i = int(np.argmax(number != number[0]))
                raise time_error(path, col, first_row + i + 1, values[i], "mixes epoch numbers and dates")
            return _dates(arr, values, path, col, first_row), "date"
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        raise time_error(path, col, first_row + i + 1, values[i], "must hold finite times")
    return arr, "number"


def _dates(arr: np.ndarray, values: list[Any], path: Path, col: str, first_row: int) -> np.ndarray:
    """ISO dates (stripped strings) as int64 epoch milliseconds."""
    try:
        dates = np.char.rstrip(arr, "Z").astype("datetime64[ms]")  # "2014-04-07T10:51:09.277Z" (UTC)
    except ValueError:
        bad = next((v for v in arr if not _is_time(v)), arr[0])
        raise ValueError(f"{path}: column {col!r} must hold epoch numbers or ISO dates, "
                         f"found {str(bad)!r}") from None
    nat = np.isnat(dates)
    if nat.any():
        i = int(np.argmax(nat))
        raise time_error(path, col, first_row + i + 1, values[i], "must hold dates, not a missing time")
    return dates.astype(np.int64)


# Epoch seconds reach 1e11 in the year 5138 and passed 1e8 in 1973: a column's largest number names its unit
# (below 1e11 seconds, then milliseconds, microseconds, nanoseconds), and a number from 1e8 up to that unit's
# first value is a time in a coarser unit beside it. Smaller numbers (counters, tests) are read in the column's unit.
_EPOCH_UNITS = (("s", "seconds", 1), ("ms", "milliseconds", 10**3), ("us", "microseconds", 10**6),
                ("ns", "nanoseconds", 10**9))
_UNIT_STARTS = (1e11, 1e14, 1e17)


def epoch_unit(times: np.ndarray, kind: str, path: Path, col: str) -> tuple[str, int]:
    """(the unit read: "date" or one of ``_EPOCH_UNITS``, its parts in a second) of a whole time column, which the
    services' request_time (unix seconds) must match; refuses a column mixing units, naming the rows."""
    if kind == "date":
        return "date", 1000  # _dates gives milliseconds
    size = np.abs(times)
    top = int(np.argmax(size))
    step = int(np.searchsorted(_UNIT_STARTS, size[top], side="right"))
    unit, name, scale = _EPOCH_UNITS[step]
    if step:
        coarser = (size >= 1e8) & (size < _UNIT_STARTS[step - 1])
        if coarser.any():
            i = int(np.argmax(coarser))
            other = _EPOCH_UNITS[int(np.searchsorted(_UNIT_STARTS, size[i], side="right"))][1]
            raise ValueError(f"{path}: column {col!r} mixes epoch units: data row {i + 1} holds {str(times[i])!r} "
                             f"({other}), data row {top + 1} {str(times[top])!r} ({name}); write one unit")
    return unit, scale


# Epoch times of interaction logs lie from 1980 (1e8 seconds, the mixed-unit floor, is 1973; no log of these
# services is older) to 2100 (far past any model's life). A column whose latest time decodes outside was written in
# another form that reads as epoch numbers: YYYYMMDD (20200101: August 1970 in seconds), YYYYMMDDhhmmss (the year
# 2610 in milliseconds), a year, spreadsheet day serials (45244.5: the time of day lost too). Trained on, the time
# features learn a period that serving's request_time (unix seconds, now) is never in.
_EPOCH_SPAN = (315_532_800, 4_102_444_800)  # 1980-01-01, 2100-01-01 in epoch seconds
# Numbers below the epoch floor counted up from below this are counters (steps, tests) in file order, not dates.
_COUNTER_START = 1000


def check_epoch_span(times: np.ndarray, unit: str, scale: int, path: Path, col: str) -> str:
    """The span of a time column (``info["time_range"]``, UTC), refusing epoch numbers whose latest decodes outside
    ``_EPOCH_SPAN`` (unless they are counters), naming the row, the value, the date it decodes to and what to
    write instead."""
    seconds = np.floor_divide(times, scale)
    first, last = (np.datetime64(int(v), "s") for v in (seconds.min(), seconds.max()))
    top = int(np.argmax(times))
    counters = times[top] < 1e8 and times.min() < _COUNTER_START
    if unit != "date" and not counters and not _EPOCH_SPAN[0] <= seconds[top] < _EPOCH_SPAN[1]:
        name = next(n for u, n, _ in _EPOCH_UNITS if u == unit)
        raise ValueError(f"{path}: column {col!r} holds numbers that are not epoch times from 1980 to 2100: data row "
                         f"{top + 1} holds {str(times[top])!r}, as epoch {name} {last}. Compact dates (20200101), "
                         f"years and spreadsheet day numbers are not epoch numbers: write ISO dates "
                         f"(2020-01-01 or 2020-01-01T12:30:00) or epoch seconds (1577881800)")
    return f"{first} .. {last}"


def _is_time(v: str) -> bool:
    try:
        np.datetime64(v.rstrip("Z"), "ms")
        return True
    except ValueError:
        return False

