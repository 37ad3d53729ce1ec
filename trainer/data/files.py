"""Interaction files: a generic interactions file (CSV, TSV or JSON lines, with
configurable column names) and session click streams.

* interactions: Yelp reviews (user_id, business_id, stars, date), a tool-usage
  log (user_id, page, ts), integer-id recipe ratings, ... An optional
  ``min_rating`` keeps rows whose rating is >= it (and, with ``unrated_value``,
  rows holding that "no rating" value, Food.com's 0: a review is engagement),
  and an optional candidate catalogue file gives the catalog and candidate
  features; interactions whose candidate is not in the catalogue are dropped
  (and counted). Catalogue cells that hold Python list literals (Food.com's
  tags and ingredients, "['a', 'b']") become "a|b", like JSON lists.
  Ids are trimmed of the whitespace around them (a line ending such as "\\r"
  included). Rows without a customer or candidate id (a blank cell, a JSON
  null) are dropped (and counted), here and in sessions, and so are rows with
  an id the services refuse in every request: one over ``MAX_ID_BYTES`` (UTF-8)
  or holding a NUL character (the catalogue leaves such ids out). Other control
  characters are kept: the services take them.
  Repeats of a row (the same customer, candidate and time: one event written
  twice) are dropped (and counted), here and in sessions. Without a time column
  a repeat is the same customer and candidate (whatever the rating): the first
  row is kept.
* sessions: click streams (SessionId, ItemId, Time as in YooChoose or
  RetailRocket): each session is a "customer", events are ordered by time
  within a session, sessions with a single event are dropped (and counted).

A time column holds epoch numbers or ISO dates, not both, every value finite;
anything else is refused naming the row and value. Times become
epoch seconds, what the services' request_time is: the column's largest number
names its unit (below 1e11 seconds, below 1e14 milliseconds, then micro- and
nanoseconds; ``info["time_unit"]``), and a column that also holds a number from
1e8 (1973 in seconds) up to that unit's start mixes units and is refused.
Interactions times are whole seconds; sessions keep the fraction (float64), to
order events within a second.

A CSV/TSV row must have the header's number of fields (more only if empty: a
trailing delimiter), an id must not hold a line break (a quote left open reads
the rows after it as one id), and a damaged file (a cut or fake .gz, a field
past the csv module's limit) is named: each is a ValueError naming the line. A
line repeating the header (files joined with ``cat``) is dropped (and counted);
a header line with other columns, or the same in another order, is refused
naming the line and both headers (its rows would be read from the first
header's column positions).

Both can keep only some event types (``event_col`` + ``events``: RetailRocket's
view / addtocart / transaction); the count of each type is in ``info``.

Loading is columnar: rows are parsed in chunks, ids are dictionary-encoded to
integer codes as they stream in, and the string arrays are materialised once at
the end, so peak memory stays close to the size of the result. What was read,
dropped and how fast is in ``Interactions.info``.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import gzip
import itertools
import json
import re
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from model_registry.ids import MAX_ID_BYTES
from trainer.data.interactions import Interactions, align_features

if TYPE_CHECKING:
    from trainer.data.datasets import DatasetOptions

FORMATS = ("csv", "tsv", "jsonl")
_CHUNK_ROWS = 200_000


# ---------------------------------------------------------------- file reading


def file_format(path: Path | str, fmt: str | None = None) -> str:
    """The format named, or the one the extension implies (.csv, .tsv/.tab, .jsonl/.json/.ndjson; .gz ignored)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in Path(path).suffixes if s.lower() != ".gz"]
    ext = suffixes[-1] if suffixes else ""
    by_ext = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
    if ext not in by_ext:
        raise ValueError(f"cannot tell the format of {path} from its extension; pass --format csv|tsv|jsonl")
    return by_ext[ext]


def _open_text(path: Path):
    # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is not part of the first header name or id.
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _missing(path: Path, wanted: list[str], found: list[str]) -> ValueError:
    missing = [c for c in wanted if c not in found]
    return ValueError(f"{path}: column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found; "
                      f"columns found: {', '.join(found) if found else '(none)'}")


def _read_columns(path: Path, fmt: str, columns: list[str], delimiter: str | None = None,
                  header: bool = True, chunk_rows: int = _CHUNK_ROWS,
                  counts: Counter[str] | None = None) -> Iterator[list[list[Any]]]:
    """``_read_chunks``, with a file that is not UTF-8 named as such (the codec's own message names neither)."""
    try:
        yield from _read_chunks(path, fmt, columns, delimiter, header, chunk_rows, counts)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason}); convert it, e.g. "
                         f"iconv -f latin1 -t utf-8 {Path(path).name} > utf8.{fmt}") from None


def _read_chunks(path: Path, fmt: str, columns: list[str], delimiter: str | None = None,
                 header: bool = True, chunk_rows: int = _CHUNK_ROWS,
                 counts: Counter[str] | None = None) -> Iterator[list[list[Any]]]:
    """Yields chunks of the requested columns, each chunk a list of per-column value lists.

    CSV/TSV values are strings ("" when empty); JSON-lines values are what
    ``json.loads`` gives (None when the key is absent), lists joined with "|".
    A CSV/TSV line repeating the header is left out and counted in
    ``counts["dropped_header_rows"]``. A damaged file (a cut or fake .gz, a CSV
    field past the csv module's limit) is a ValueError naming it and the last line read.
    """
    path = Path(path)
    if fmt == "jsonl":
        yield from _read_jsonl(path, columns, chunk_rows)
        return
    delim = delimiter or ("\t" if fmt == "tsv" else ",")
    with _open_text(path) as f:
        with _damaged(path, lambda: _line_of(path, delim)):
            yield from _csv_chunks(path, _csv_reader(f, delim), delim, columns, header, chunk_rows,
                                   Counter() if counts is None else counts)


def _csv_reader(f, delim: str):
    # "a, b" (and 'a, "b, c"'): a space after the delimiter is layout, not part of the value,
    # and a quote after it still opens a quoted field.
    return csv.reader(f, delimiter=delim, skipinitialspace=True)


# What reading a damaged file raises: a cut .gz, a file named .gz that is not one, a CSV field past the limit.
_DAMAGE = (EOFError, gzip.BadGzipFile, zlib.error, csv.Error)


@contextlib.contextmanager
def _damaged(path: Path, lines_read: Callable[[], int]) -> Iterator[None]:
    """Turns ``_DAMAGE`` into a ValueError naming the file and the last line that could be read."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: unreadable after line {lines_read()}: not a whole gzip file ({e})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: unreadable after line {lines_read()}: {e} (is a quote left open?)") from None


def _csv_chunks(path: Path, reader, delim: str, columns: list[str], header: bool, chunk_rows: int,
                counts: Counter[str]) -> Iterator[list[list[Any]]]:
    """``_read_chunks`` for CSV/TSV: every row has the header's fields (or the first row's, without a header);
    more are allowed only empty (a trailing delimiter). Otherwise a value would be read from another column.

    A row that is the header line again (files joined with ``cat a.csv b.csv``; the second file's byte order mark
    may lead it) would be read as ids and times: it is dropped and counted in ``counts["dropped_header_rows"]``. A
    header line with other columns, or the same in another order, is refused (``_header_line``)."""
    known: set[str] = set()  # a cell that may make a row a header line; none without a header
    if header:
        line = next(reader, None)
        if line is None:
            raise ValueError(f"{path} is empty")
        names = [n.strip() for n in line]
        if any(c not in names for c in columns):
            raise _missing(path, columns, names)
        idx = [names.index(c) for c in columns]
        # A header line of the same columns in any order holds one of these in a column read; a byte order mark (a
        # joined file's) may lead it.
        known = {v for n in names for v in (n, "\ufeff" + n)}
        fields: int | None = len(names)
    else:
        if not all(c.isdigit() for c in columns):
            raise ValueError(f"{path}: without a header, columns must be 0-based numbers, got {columns}")
        idx = [int(c) for c in columns]
        fields = None
    width = max(idx) + 1
    record = 1 if header else 0
    while True:
        rows = list(itertools.islice(reader, chunk_rows))
        if not rows:
            return
        if fields is None:
            fields = next((len(r) for r in rows if r), None)
        if not set(map(len, rows)) <= {0, fields}:
            bad = next((i for i, r in enumerate(rows) if r and (len(r) < fields or any(r[fields:]))), None)
            if bad is not None:
                if header:  # a header with other columns is named as such, not as a row of the wrong width
                    _header_line(path, delim, names, columns, rows[bad], record + bad + 1)
                need = f"the {'header' if header else 'first row'} {fields}"
                if len(rows[bad]) < width:
                    need = f"need at least {width}"
                raise ValueError(f"{path}: row {_line_of(path, delim, record + bad + 1)} has {len(rows[bad])} "
                                 f"fields, {need} (is the delimiter {delim!r} right? a comma unquoted? "
                                 f"a quote left open?)")
        if fields is not None and fields < width:
            raise ValueError(f"{path}: row {_line_of(path, delim, record + 1)} has {fields} fields, "
                             f"need at least {width} (is the delimiter {delim!r} right?)")
        first = record
        record += len(rows)
        data = [r for r in rows if r]  # blank lines are left out, uncounted
        chunk = [[r[i] for r in data] for i in idx]
        # Column-wise: a loop in C over each column read, not one in Python over the rows, which are looked at only
        # where a column read holds a column name.
        if any(not known.isdisjoint(map(str.strip, values)) for values in chunk):
            repeats = {i for i, r in enumerate(rows) if r and not known.isdisjoint(map(str.strip, r))
                       and _header_line(path, delim, names, columns, r, first + i + 1)}
            if repeats:
                counts["dropped_header_rows"] += len(repeats)
                data = [r for i, r in enumerate(rows) if r and i not in repeats]
                chunk = [[r[i] for r in data] for i in idx]
        if data:
            yield chunk


def _header_line(path: Path, delim: str, names: list[str], columns: list[str], row: list[str], record: int) -> bool:
    """Whether ``row``, CSV record ``record``, is the first header (``names``) again, to drop: the whitespace around
    the names, a trailing delimiter and a byte order mark (a second file's, joined with ``cat``) aside.

    A row that names every column read, or holds a column's name in that column, but is not that header is a
    header with other columns, or the same in another order: the rows after it would be read from the first
    header's positions (customers and candidates swapped, a rating read from another column). It is a ValueError
    naming the line and both headers, since joined files in one order are a command away, and re-mapping the
    columns from there on would also take a data row that happens to name the columns for a header."""
    cells = [row[0].lstrip("\ufeff").strip()] + [c.strip() for c in row[1:]]
    if cells[:len(names)] == names and not any(cells[len(names):]):  # more fields only empty, as in a data row
        return True
    own = [names.index(c) for c in columns]
    if not (set(columns) <= set(cells) or any(i < len(cells) and cells[i] == c for c, i in zip(columns, own))):
        return False
    what = "the columns in another order" if sorted(cells) == sorted(names) else "other columns"
    raise ValueError(f"{path}: line {_line_of(path, delim, record)} is a header with {what} ({', '.join(cells)}) "
                     f"than the first header ({', '.join(names)}); the rows after it would be read from the first "
                     f"header's positions. Files joined with different columns? Give every file the columns "
                     f"{', '.join(columns)} in one order before joining them (e.g. csvcut -c {','.join(columns)})")


def _line_of(path: Path, delim: str, record: int | None = None) -> int:
    """The line on which CSV record ``record`` (1-based, the header included) ends, a quoted field spanning lines;
    without ``record``, the last record that can be read. Reads the file again, only for an error message."""
    line = 0
    with _open_text(path) as f:
        reader = _csv_reader(f, delim)
        with contextlib.suppress(*_DAMAGE):
            for _ in itertools.islice(reader, record):
                line = reader.line_num
    return line


def _json_value(v: Any) -> Any:
    if isinstance(v, list):
        return "|".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def _read_jsonl(path: Path, columns: list[str], chunk_rows: int) -> Iterator[list[list[Any]]]:
    loads = json.loads
    read = 0
    with _open_text(path) as f, _damaged(path, lambda: read):
        first = True
        while True:
            lines = list(itertools.islice(f, chunk_rows))
            read += len(lines)
            lines = [ln for ln in lines if ln.strip()]
            if not lines:
                if first:
                    raise ValueError(f"{path} is empty")
                return
            try:
                objs = [loads(ln) for ln in lines]  # transient: only the wanted fields are kept
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} is not JSON lines: {e}") from None
            bad = next((i for i, o in enumerate(objs) if not isinstance(o, dict)), None)
            if bad is not None and not (first and bad == 0):  # a first line that is not an object: columns found
                raise ValueError(f"{path}: a line is not a JSON object: {lines[bad].strip()[:80]!r}")
            if first:
                found = list(objs[0]) if isinstance(objs[0], dict) else []
                if any(c not in found for c in columns):
                    raise _missing(path, columns, found)
                first = False
            out = [[o.get(c) for o in objs] for c in columns]
            del objs
            yield [[_json_value(v) for v in col] if any(isinstance(v, (list, dict)) for v in col) else col
                   for col in out]


class _Encoder:
    """Dictionary-encodes string ids as they stream in; ``finish`` sorts the vocabulary."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, values: list[Any]) -> np.ndarray:
        vocab = self.vocab
        setdefault = vocab.setdefault
        return np.fromiter((setdefault(v if isinstance(v, str) else _id_str(v), len(vocab)) for v in values),
                           dtype=np.int64, count=len(values))

    def finish(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sorted unique ids, codes remapped to positions in them), ids trimmed of the whitespace around them:
        the csv module trims only after a delimiter, which made "u1 " and "u1" two customers."""
        ids = np.array(list(self.vocab), dtype=str) if self.vocab else np.array([], dtype="<U1")
        ids, rank = np.unique(np.char.strip(ids), return_inverse=True)
        return ids, rank[codes]

    def holds_nul(self) -> np.ndarray:
        """Per code (before ``finish``): whether the id holds a NUL character, which ``finish`` cannot tell: numpy's
        strings drop a trailing one ("u1\\x00" becomes "u1")."""
        return np.fromiter(("\x00" in v for v in self.vocab), dtype=bool, count=len(self.vocab))


def _line_break_inside(value: str) -> bool:
    """Whether ``value`` holds a line break that trimming leaves: one at an end is another system's line ending."""
    return ("\n" in value or "\r" in value) and ("\n" in value.strip() or "\r" in value.strip())


def _refuse_line_breaks(path: Path, col: str, encoder: _Encoder, codes: list[np.ndarray]) -> None:
    """Refuses an id holding a line break: a quote left open reads the rows after it as one id."""
    code = next((i for i, v in enumerate(encoder.vocab) if _line_break_inside(v)), None)
    if code is not None:
        row = int(np.argmax(np.concatenate(codes) == code)) + 1
        value = next(itertools.islice(encoder.vocab, code, None))
        raise ValueError(f"{path}: column {col!r} holds an id with a line break at data row {row}: {value[:60]!r}"
                         f"{'...' if len(value) > 60 else ''} (is a quote left open?)")


def _long_ids(ids: np.ndarray) -> np.ndarray:
    """Where an id is over ``MAX_ID_BYTES`` of UTF-8, which the services refuse in every request."""
    long = np.zeros(len(ids), dtype=bool)
    maybe = np.flatnonzero(np.char.str_len(ids) > MAX_ID_BYTES // 4)  # at most 4 bytes a character
    long[maybe] = [len(v.encode("utf-8")) > MAX_ID_BYTES for v in ids[maybe].tolist()]
    return long


def _usable_ids(keep: np.ndarray, info: dict[str, Any],
                *columns: tuple[_Encoder, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``_Encoder.finish`` of each (encoder, codes) column. Clears ``keep`` where a row lacks an id (they would all
    become one customer or candidate named "": ``info["dropped_missing_id"]``), has one holding a NUL character
    (``info["dropped_nul_id"]``) or one over ``MAX_ID_BYTES`` (``info["dropped_long_id"]``).

    The services refuse an id with a NUL or over the limit in every request. Such ids are dropped, not refused, as
    a missing one is: the rest of the file trains, and the count says how many rows the services could not have
    used. Other control characters are kept: the services take them, as ids of their own."""
    finished = [encoder.finish(codes) for encoder, codes in columns]
    unusable = (("dropped_missing_id", [(vocab == "")[codes] for vocab, codes in finished]),
                ("dropped_nul_id", [encoder.holds_nul()[codes] for encoder, codes in columns]),
                ("dropped_long_id", [_long_ids(vocab)[codes] for vocab, codes in finished]))
    for key, per_column in unusable:
        rows = np.logical_or.reduce(per_column) & keep
        if rows.any():
            info[key] = int(rows.sum())
            keep &= ~rows
    return finished


def _drop_duplicates(keep: np.ndarray, info: dict[str, Any], customers: np.ndarray, candidates: np.ndarray,
                     times: np.ndarray | None) -> None:
    """Clears ``keep`` on every kept row that repeats an earlier kept row: one event written twice would otherwise
    be split into train and test alike, a test event the model has trained on.

    A repeat is the same customer, candidate and time; without a time column (``times`` None: the row number
    stands in for it, unique per row) the same customer and candidate, whatever the rating: a copy and a repeat
    cannot be told apart then, and either would put the pair in train and test.
    """
    columns = (customers, candidates) if times is None else (customers, candidates, times)
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort(tuple(col[rows] for col in reversed(columns)))]  # stable: the first copy leads
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = np.logical_and.reduce([col[order[1:]] == col[order[:-1]] for col in columns])
    if repeat.any():
        info["dropped_duplicates"] = int(repeat.sum())
        keep[order[repeat]] = False


def _id_str(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _numbers(values: list[Any], path: Path, col: str) -> np.ndarray:
    try:
        return np.array([np.nan if v is None or v == "" else v for v in values], dtype=np.float64)
    except (ValueError, TypeError):
        bad = next((v for v in values if not _is_number(v)), None)
        raise ValueError(f"{path}: column {col!r} must be numeric, found {bad!r}") from None


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return v is None or v == ""


# A cell that is a number (numpy would read "1700000000" as the year 1700000000 among dates).
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)", re.IGNORECASE)


def _time_error(path: Path, col: str, row: int, value: Any, problem: str) -> ValueError:
    return ValueError(f"{path}: column {col!r} {problem}: data row {row} holds {str(value)!r}")


def _times(values: list[Any], path: Path, col: str, first_row: int) -> tuple[np.ndarray, str]:
    """(int64 times, "number" or "date") of a chunk whose first value is data row ``first_row + 1``: epoch numbers
    as given (floats floored), ISO dates as epoch milliseconds.

    Refuses, naming the row and value, a blank, a number that is not finite, NaT, and numbers beside dates: each
    would be read as a time far from the others' and move events across a temporal split.
    """
    try:
        arr = np.array(values)
    except ValueError:
        arr = np.array([str(v) for v in values])
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64), "number"
    if arr.dtype.kind == "O":  # JSON null beside numbers
        arr = np.array(["" if v is None else str(v) for v in values])
    if arr.dtype.kind != "f":
        arr = np.char.strip(arr.astype(str))
        try:
            return arr.astype(np.int64), "number"
        except ValueError:
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
                raise _time_error(path, col, first_row + i + 1, values[i], "mixes epoch numbers and dates")
            return _dates(arr, values, path, col, first_row), "date"
    finite = np.isfinite(arr)
    if not finite.all():
        i = int(np.argmin(finite))
        raise _time_error(path, col, first_row + i + 1, values[i], "must hold finite times")
    return np.floor(arr).astype(np.int64), "number"


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
        raise _time_error(path, col, first_row + i + 1, values[i], "must hold dates, not a missing time")
    return dates.astype(np.int64)


# Epoch seconds reach 1e11 in the year 5138 and passed 1e8 in 1973: a column's largest number names its unit
# (below 1e11 seconds, then milliseconds, microseconds, nanoseconds), and a number from 1e8 up to that unit's
# first value is a time in a coarser unit beside it. Smaller numbers (counters, tests) are read in the column's unit.
_EPOCH_UNITS = (("s", "seconds", 1), ("ms", "milliseconds", 10**3), ("us", "microseconds", 10**6),
                ("ns", "nanoseconds", 10**9))
_UNIT_STARTS = (1e11, 1e14, 1e17)


def _epoch_unit(times: np.ndarray, kind: str, path: Path, col: str) -> tuple[str, int]:
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


def _is_time(v: str) -> bool:
    try:
        np.datetime64(v.rstrip("Z"), "ms")
        return True
    except ValueError:
        return False


# ---------------------------------------------------------------- adapters


def _load_columns(path: Path, fmt: str, options: DatasetOptions, customer_col: str, candidate_col: str,
                  rating_col: str | None, time_col: str | None) -> dict[str, Any]:
    event_col = options.event_col
    wanted = [customer_col, candidate_col] + [c for c in (rating_col, time_col, event_col) if c]
    customers, candidates, events = _Encoder(), _Encoder(), _Encoder()
    cust_codes, cand_codes, ratings, times, event_codes = [], [], [], [], []
    rows, time_kind, dropped = 0, None, Counter()
    for chunk in _read_columns(path, fmt, wanted, options.delimiter, options.header, counts=dropped):
        first_row = rows
        rows += len(chunk[0])
        cust_codes.append(customers.encode(chunk[0]))
        cand_codes.append(candidates.encode(chunk[1]))
        k = 2
        if rating_col:
            ratings.append(_numbers(chunk[k], path, rating_col).astype(np.float32))
            k += 1
        if time_col:
            chunk_times, kind = _times(chunk[k], path, time_col, first_row)
            if time_kind not in (None, kind):
                raise _time_error(path, time_col, first_row + 1, chunk[k][0], "mixes epoch numbers and dates")
            times.append(chunk_times)
            time_kind = kind
            k += 1
        if event_col:
            event_codes.append(events.encode(chunk[k]))
    if rows == 0:
        raise ValueError(f"{path} has no data rows")
    for col, encoder, codes in ((customer_col, customers, cust_codes), (candidate_col, candidates, cand_codes)):
        _refuse_line_breaks(path, col, encoder, codes)
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype)  # noqa: E731
    # Kept as given to order events within a second (RetailRocket's milliseconds, YooChoose's dates).
    exact_times = cat(times, np.int64) if time_col else np.arange(rows, dtype=np.int64)
    time_unit, scale = _epoch_unit(exact_times, time_kind, path, time_col) if time_col else (None, 1)
    return {
        "customers": customers, "candidates": candidates,
        "customer_codes": cat(cust_codes, np.int64), "candidate_codes": cat(cand_codes, np.int64),
        "ratings": cat(ratings, np.float32) if rating_col else None,
        "exact_times": exact_times, "time_unit": time_unit, "scale": scale,
        "events": events, "event_codes": cat(event_codes, np.int64),
        "rows": rows, "dropped": dropped,
    }


def _read_info(path: Path, fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    """The start of ``Interactions.info``: what was read (repeated header lines included, and counted), and in which
    time unit."""
    info: dict[str, Any] = {"source": str(path), "format": fmt, "rows_read": c["rows"] + c["dropped"].total(),
                            **c["dropped"]}
    if c["time_unit"]:
        info["time_unit"] = c["time_unit"]
    return info


def _event_filter(c: dict[str, Any], options: DatasetOptions, path: Path, info: dict[str, Any]) -> np.ndarray:
    """Rows whose event type is one of ``options.events`` (all rows without that
    filter); counts each type in ``info["event_counts"]``."""
    keep = np.ones(c["rows"], dtype=bool)
    if options.event_col is None:
        return keep
    types, codes = c["events"].finish(c["event_codes"])
    info["event_counts"] = {str(t): int(n) for t, n in zip(types, np.bincount(codes, minlength=len(types)))}
    if options.events:
        absent = [e for e in options.events if e not in info["event_counts"]]
        if absent:
            raise ValueError(f"{path}: event type{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))} "
                             f"not in column {options.event_col!r}; found: {', '.join(info['event_counts'])}")
        keep = np.isin(types, options.events)[codes]
        info["dropped_other_events"] = int((~keep).sum())
    return keep


# A Python list literal of plain quoted strings (no escapes), as Python prints a list of str.
_PLAIN_LIST = re.compile(r"""\[\s*(?:(?:'[^'\\]*'|"[^"\\]*")\s*(?:,\s*|(?=\])))*\]""")
_PLAIN_ITEM = re.compile(r"'([^']*)'|\"([^\"]*)\"")


def _list_cell(text: str) -> str | None:
    """The items of a list literal cell joined with "|"; None if it is not one."""
    if _PLAIN_LIST.fullmatch(text):  # the common case, ~4x faster than literal_eval
        return "|".join(a or b for a, b in _PLAIN_ITEM.findall(text))
    try:
        items = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return "|".join(map(str, items)) if isinstance(items, (list, tuple)) else None


def _string_feature(values: list[Any]) -> np.ndarray:
    """A string feature column; a column of list literals (every non-empty cell
    "[...]") becomes "|"-joined items, as a JSON list does."""
    text = ["" if v is None else str(v).strip() for v in values]
    filled = [t for t in text if t]
    if filled and all(t[0] == "[" and t[-1] == "]" for t in filled):
        joined = [_list_cell(t) if t else "" for t in text]
        if all(j is not None for j in joined):
            return np.array(joined, dtype=str)
    return np.array(["" if v is None else str(v) for v in values], dtype=str)


def load_catalog(path: Path, fmt: str | None, id_col: str, feature_cols: tuple[str, ...] = (),
                 delimiter: str | None = None, header: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(sorted unique candidate ids, {feature: array aligned with them}).

    A feature column whose values all parse as numbers becomes float32 (NaN when
    empty), any other a string column. Duplicate ids: the last row wins.
    """
    path = Path(path)
    fmt = file_format(path, fmt)
    cols = [id_col] + list(feature_cols)
    parts: list[list[list[Any]]] = [[] for _ in cols]
    for chunk in _read_columns(path, fmt, cols, delimiter, header):
        for i, values in enumerate(chunk):
            parts[i].extend(values)
    texts = [v if isinstance(v, str) else _id_str(v) for v in parts[0]]
    # An id holding a NUL reads as a blank one (numpy would make "a\x00" the candidate "a"), and is left out with it.
    raw_ids = np.char.strip(np.array(["" if "\x00" in v else v for v in texts], dtype=str))
    ids = np.unique(raw_ids[(raw_ids != "") & ~_long_ids(raw_ids)])  # no candidate the services could not use
    features: dict[str, np.ndarray] = {}
    for name, values in zip(feature_cols, parts[1:]):
        if all(_is_number(v) and not isinstance(v, bool) for v in values) and any(v not in (None, "") for v in values):
            features[name] = np.array([np.nan if v in (None, "") else float(v) for v in values], dtype=np.float32)
        else:
            features[name] = _string_feature(values)
    return ids, align_features(raw_ids, features, ids)


def load_interactions_file(options: DatasetOptions) -> Interactions:
    """A generic interactions file (see the module docstring); ``info`` reports counts and speed."""
    start = time.perf_counter()
    path = Path(options.data_path)
    fmt = file_format(path, options.format)
    if options.min_rating is not None and options.rating_col is None:
        raise ValueError("--min-rating needs --rating-col")
    c = _load_columns(path, fmt, options, options.customer_col, options.candidate_col,
                      options.rating_col, options.time_col)
    read_seconds = time.perf_counter() - start
    info = _read_info(path, fmt, c)
    keep = _event_filter(c, options, path, info)
    if options.min_rating is not None:
        below = ~(c["ratings"] >= options.min_rating) & keep  # NaN ratings count as below
        if options.unrated_value is not None:
            unrated = c["ratings"] == options.unrated_value
            info["kept_unrated"] = int((unrated & keep).sum())
            below &= ~unrated
        info["dropped_below_min_rating"] = int(below.sum())
        keep &= ~below

    (customer_vocab, customer_codes), (candidate_vocab, candidate_codes) = _usable_ids(
        keep, info, (c["customers"], c["customer_codes"]), (c["candidates"], c["candidate_codes"]))
    catalog, candidate_features = None, None
    if options.catalog_path is not None:
        catalog, candidate_features = load_catalog(
            options.catalog_path, options.catalog_format,
            options.catalog_id_col or options.candidate_col, options.catalog_feature_cols,
            options.delimiter, options.header)
        known = np.isin(candidate_vocab, catalog)  # over the (small) vocabulary, not the rows
        missing = ~known[candidate_codes] & keep
        info["dropped_not_in_catalog"] = int(missing.sum())
        info["catalog_size"] = len(catalog)
        keep &= ~missing
    timestamps = np.floor_divide(c["exact_times"], c["scale"])
    _drop_duplicates(keep, info, customer_codes, candidate_codes, timestamps if options.time_col else None)
    if not keep.any():
        raise ValueError(f"{path}: no interactions left after filtering ({info})")
    index = np.flatnonzero(keep) if not keep.all() else slice(None)
    data = Interactions(
        customer_ids=customer_vocab[customer_codes[index]],
        candidate_ids=candidate_vocab[candidate_codes[index]],
        timestamps=timestamps[index],
        catalog=catalog,
        candidate_features=candidate_features,
        name=path.stem.split(".")[0],
    )
    seconds = time.perf_counter() - start
    info.update({"interactions": len(data), "read_seconds": round(read_seconds, 3),
                 "load_seconds": round(seconds, 3), "rows_per_second": round(c["rows"] / max(seconds, 1e-9))})
    data.info = info
    return data


def load_sessions(options: DatasetOptions) -> Interactions:
    """Click streams: one "customer" per session, events sorted by (session, time, file order).

    Times are float64 epoch seconds, what the services' request_time is (a time tower trained on RetailRocket's
    milliseconds read every served time as its first moment), keeping the file's fractions of a second (to a
    microsecond): unlike ``load_interactions_file``'s whole seconds, they still order a view before the cart of
    the same second where later steps sort by time. ``info["time_unit"]`` names the unit read.

    Repeats of an event (the same session, item and time; without a time column the same session and item) are
    dropped (``info["dropped_duplicates"]``), then sessions with a single event
    (``info["dropped_single_event_sessions"]``).
    """
    start = time.perf_counter()
    path = Path(options.data_path)
    fmt = file_format(path, options.format)
    c = _load_columns(path, fmt, options, options.session_col, options.item_col, None, options.time_col)
    info = _read_info(path, fmt, c)
    # Not whole seconds: RetailRocket's view and cart of one item within a second would be one event.
    times = c["exact_times"] / c["scale"]
    kept_event = _event_filter(c, options, path, info)
    (session_vocab, session_codes), (item_vocab, item_codes) = _usable_ids(
        kept_event, info, (c["customers"], c["customer_codes"]), (c["candidates"], c["candidate_codes"]))
    # Before the lengths: a session whose rows are copies of one event is a single-event session.
    _drop_duplicates(kept_event, info, session_codes, item_codes, times if options.time_col else None)
    lengths = np.bincount(session_codes[kept_event], minlength=len(session_vocab))
    keep_session = lengths >= 2
    keep = keep_session[session_codes] & kept_event
    if not keep.any():
        raise ValueError(f"{path}: every session has a single event; nothing to learn from")
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((rows, c["exact_times"][rows], session_codes[rows]))]
    data = Interactions(
        customer_ids=session_vocab[session_codes[order]],
        candidate_ids=item_vocab[item_codes[order]],
        timestamps=times[order],
        name=path.stem.split(".")[0],
    )
    seconds = time.perf_counter() - start
    info.update({
        "interactions": len(data), "sessions": int(keep_session.sum()),
        "dropped_single_event_sessions": int((lengths == 1).sum()),
        "load_seconds": round(seconds, 3), "rows_per_second": round(c["rows"] / max(seconds, 1e-9)),
    })
    data.info = info
    return data
