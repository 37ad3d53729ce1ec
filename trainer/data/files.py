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
1e8 (1973 in seconds) up to that unit's start mixes units and is refused. Epoch
numbers whose latest decodes before 1980 or from 2100 on (compact dates such as
20200101, years, spreadsheet day serials) are refused naming the row, the value
and the date it decodes to; numbers counted up from below 1000 are counters and
kept. ``info["time_range"]`` gives the span read (UTC).
Interactions times are whole seconds; sessions keep the fraction (float64), to
order events within a second.

A CSV/TSV row must have the header's number of fields (more only if empty: a
trailing delimiter), an id must not hold a line break (a quote left open reads
the rows after it as one id), nor another field lines of the file with whole
rows' delimiters (a quote left open in a text column, closed by a later stray
one), a field that opens with a quote must end at its closing one ('"x"y' would
lose its quotes: CSV and TSV alike), and a damaged file (a cut or fake .gz, a
field past the csv module's limit) is named: each is a ValueError naming the
line. Quoted fields holding delimiters, line breaks and doubled quotes load. A
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
import codecs
import contextlib
import csv
import dataclasses
import gzip
import itertools
import json
import operator
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


# A header read as one column holding one of these was written with it: the flag that reads it.
_OTHER_DELIMITERS = {"\t": "--format tsv (--catalog-format tsv for a catalogue)",
                     ",": "--format csv (--catalog-format csv for a catalogue)",
                     ";": "--delimiter ';'", "|": "--delimiter '|'"}


def _missing(path: Path, wanted: list[str], found: list[str], where: str = "") -> ValueError:
    missing = [c for c in wanted if c not in found]
    hint = ""
    if len(found) == 1:  # every name in one column: the file's delimiter is not the one read with
        hint = next((f" (one column holding {d!r}: pass {flag})" for d, flag in _OTHER_DELIMITERS.items()
                     if d in found[0]), "")
    return ValueError(f"{path}: column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} not found; "
                      f"columns found: {', '.join(found) if found else '(none)'}{where}{hint}")


def _read_columns(path: Path, fmt: str, columns: list[str], delimiter: str | None = None,
                  header: bool = True, chunk_rows: int = _CHUNK_ROWS,
                  counts: Counter[str] | None = None, id_columns: int = 0) -> Iterator[list[list[Any]]]:
    """``_read_chunks``, with a file that is not UTF-8 named as such (the codec's own message names neither)."""
    try:
        yield from _read_chunks(path, fmt, columns, delimiter, header, chunk_rows, counts, id_columns)
    except UnicodeDecodeError as e:
        if _utf16(path):
            raise ValueError(f"{path} is UTF-16 text (it opens with a UTF-16 byte order mark), not UTF-8; convert "
                             f"it, e.g. iconv -f utf-16 -t utf-8 {Path(path).name} > utf8.{fmt}") from None
        raise ValueError(f"{path} is not UTF-8 text ({e.reason}); convert it, e.g. "
                         f"iconv -f latin1 -t utf-8 {Path(path).name} > utf8.{fmt}") from None


def _utf16(path: Path) -> bool:
    """Whether the file opens with a UTF-16 byte order mark (Excel's "Unicode text", PowerShell's redirects)."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        return f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _read_chunks(path: Path, fmt: str, columns: list[str], delimiter: str | None = None,
                 header: bool = True, chunk_rows: int = _CHUNK_ROWS,
                 counts: Counter[str] | None = None, id_columns: int = 0) -> Iterator[list[list[Any]]]:
    """Yields chunks of the requested columns, each chunk a list of per-column value lists.

    CSV/TSV values are strings ("" when empty); JSON-lines values are what
    ``json.loads`` gives (None when the key is absent), lists joined with "|".
    A CSV/TSV line repeating the header is left out and counted in
    ``counts["dropped_header_rows"]``. A damaged file (a cut or fake .gz, a CSV
    field past the csv module's limit) is a ValueError naming it and the last line read. Lines of the file read as
    one field are refused (``_swallowed``), but in the first ``id_columns`` columns: ids, whose line breaks the
    caller refuses naming the id.
    """
    path = Path(path)
    if fmt == "jsonl":
        yield from _read_jsonl(path, columns, chunk_rows)
        return
    delim = delimiter or ("\t" if fmt == "tsv" else ",")
    with _open_text(path) as f:
        reader = _csv_reader(f, delim, strict=True)
        with _damaged(path, lambda: _line_of(path, delim), lambda: _record_lines(path, delim, reader.line_num)):
            yield from _csv_chunks(path, reader, delim, columns, header, chunk_rows,
                                   Counter() if counts is None else counts, id_columns)


def _csv_reader(f, delim: str, strict: bool = False):
    # "a, b" (and 'a, "b, c"'): a space after the delimiter is layout, not part of the value,
    # and a quote after it still opens a quoted field. ``strict``: a field that opens with a quote and goes on after
    # the closing one ('"Weird Al" Yankovic', '"x"y') is an error; leniently it loses its quotes and becomes another
    # id, or, its quote never closed by one that ends a field, reads the lines after it into itself.
    return csv.reader(f, delimiter=delim, skipinitialspace=True, strict=strict)


def _lenient_rest(path: Path, delim: str, done: int) -> list[list[str]]:
    """The records after the first ``done`` read as before strict reading: a quote left open to the end of the file
    is a strict reader's "unexpected end of data", without the rows before it; leniently the last record holds the
    rest of the file, which the checks on its width and line breaks then name."""
    with _open_text(path) as f:
        return list(itertools.islice(_csv_reader(f, delim), done, None))


# What reading a damaged file raises: a cut .gz, a file named .gz that is not one, a CSV field past the limit.
_DAMAGE = (EOFError, gzip.BadGzipFile, zlib.error, csv.Error)


@contextlib.contextmanager
def _damaged(path: Path, lines_read: Callable[[], int],
             quote_lines: Callable[[], tuple[int, int]] | None = None) -> Iterator[None]:
    """Turns ``_DAMAGE`` into a ValueError naming the file and the last line that could be read; a strict reader's
    quote going on with text, the lines (``quote_lines``) of the record holding it."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ValueError(f"{path}: unreadable after line {lines_read()}: not a whole gzip file ({e})") from None
    except csv.Error as e:
        if "expected after" in str(e) and quote_lines:  # strict: a field opening with a quote goes on after it
            start, end = quote_lines()
            raise ValueError(
                f"{path}: line {start}{f'-{end}' if end > start else ''}: {e} (a field that starts with a quote runs "
                f"to the next quote, over line breaks too: is a quote left open? '\"Weird Al\" Yankovic' would be "
                f"read as 'Weird Al Yankovic': quote the whole field and double the quotes in it, "
                f"'\"\"\"Weird Al\"\" Yankovic\"', or leave out the opening quote)") from None
        raise ValueError(f"{path}: unreadable after line {lines_read()}: {e} (is a quote left open?)") from None


def _csv_chunks(path: Path, reader, delim: str, columns: list[str], header: bool, chunk_rows: int,
                counts: Counter[str], id_columns: int = 0) -> Iterator[list[list[Any]]]:
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
    lines = reader.line_num
    while reader is not None:
        try:
            rows = list(itertools.islice(reader, chunk_rows))
            spans = reader.line_num - lines != len(rows)  # a record over more than one line: a quoted line break
            lines = reader.line_num
        except csv.Error as e:
            if "unexpected end of data" not in str(e):
                raise
            rows, spans, reader = _lenient_rest(path, delim, record), True, None
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
        if spans and fields is not None:
            _refuse_swallowed_rows(path, delim, rows, first, fields, names if header else None, idx,
                                   idx[:id_columns], reader is None)
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


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _kinds(text: str) -> set[str]:
    """What ``text`` is made of: its characters, letters and digits each one kind."""
    return {"a" if c.isalpha() else "0" if c.isdigit() else c for c in set(text)}


def _column_kinds(values: list[str]) -> set[str]:
    """What a column's cell may be made of: what its ``values`` are, and digits where they hold letters (ids: the few
    rows around a quote left open may hold none of another id's digits)."""
    kinds = _kinds("".join(values))
    return kinds | {"0"} if "a" in kinds else kinds


def _swallowed(value: str, delim: str, column: int, fields: int, fits: Callable[[int, str], bool],
               known: Callable[[int, str], bool]) -> bool:
    """Whether ``value``, field ``column`` (0-based) of records of ``fields`` fields, is lines of the file read as one
    field: a quote opening it, not meant as one, is closed only by a later quote that ends a field (or by the end of
    the file). Then its first line holds the rest of its row's fields, each line after it a whole row, and its last
    line the fields of the closing quote's row before that one; each such cell of a column read ``fits`` it (is
    made of what that column's values are), and one is a value ``known`` in its column. Prose with line breaks may
    hold as many delimiters, not such cells: a time, a rating or a known id where its words are."""
    lines = [p for p in _LINE_BREAK.split(value) if p.strip()]  # blank lines are no rows
    if len(lines) < 2 or fields < 2:
        return False
    cells = [line.split(delim) for line in lines]  # no quote in them: it would have ended the field
    if not (len(cells[0]) >= fields - column and len(cells[-1]) > column
            and all(len(c) >= fields for c in cells[1:-1])):
        return False
    placed = [(k, cell.strip()) for row in [enumerate(cells[0][1:], column + 1), *map(enumerate, cells[1:-1]),
                                            enumerate(cells[-1][:-1])] for k, cell in row if k < fields]
    return all(fits(k, cell) for k, cell in placed) and any(known(k, cell) for k, cell in placed)


def _refuse_swallowed_rows(path: Path, delim: str, rows: list[list[str]], first: int, fields: int,
                           names: list[str] | None, read: list[int], ids: list[int], open_at_end: bool) -> None:
    """Refuses a field of ``rows`` (CSV records ``first + 1``...) that holds lines of the file (``_swallowed``): an
    unbalanced quote in a text column, not read, paired a customer with another row's candidate and the rows
    between them vanished, without a word. Fields in the columns ``read`` are what the lines' cells must fit; fields
    in columns ``ids`` are left to the callers' check of ids. With ``open_at_end`` (the file ended in a quoted field)
    a field of the last row holding a line of the file is refused as it is: its quote was never closed."""
    last = rows[-1] if open_at_end else []
    k = next((k for k, v in enumerate(last) if k not in ids and len(_LINE_BREAK.split(v.strip())) > 1), None)
    if k is not None:
        raise _swallowed_error(path, delim, rows, first, len(rows) - 1, k, names)
    data = [r for r in rows if r]
    # Of each column read, over the chunk, once a field has the delimiters of rows: its values and their kinds.
    values_of: dict[int, set[str]] = {}
    kinds: dict[int, set[str]] = {}

    def known(k: int, cell: str) -> bool:
        if k not in values_of:
            values_of[k] = {v.strip() for v in map(operator.itemgetter(k), data)} if k in read else set()
        return cell in values_of[k]

    def fits(k: int, cell: str) -> bool:
        if k not in read:
            return True
        if k not in kinds:
            kinds[k] = _column_kinds(list(map(operator.itemgetter(k), data)))
        return _kinds(cell) <= kinds[k]

    for k in (k for k in range(fields) if k not in ids):
        values = list(map(operator.itemgetter(k), data))
        joined = "".join(values)
        if "\n" not in joined and "\r" not in joined:
            continue
        # Column-wise, in C, and the cheapest test first: a field holding lines of the file holds a row's delimiters.
        counts = np.fromiter(map(str.count, values, itertools.repeat(delim)), dtype=np.int64, count=len(values))
        value = next((values[j] for j in np.flatnonzero(counts >= fields - 1)
                      if _swallowed(values[j], delim, k, fields, fits, known)), None)
        if value is not None:
            i = next(i for i, r in enumerate(rows) if r and r[k] is value)
            raise _swallowed_error(path, delim, rows, first, i, k, names)


def _swallowed_error(path: Path, delim: str, rows: list[list[str]], first: int, i: int, k: int,
                     names: list[str] | None) -> ValueError:
    """Names the lines that field ``k`` of ``rows[i]`` (CSV record ``first + i + 1``) was read from."""
    start, end = _line_of(path, delim, first + i) + 1, _line_of(path, delim, first + i + 1)
    col = repr(names[k]) if names and k < len(names) else f"{k + 1} (1-based)"
    return ValueError(
        f"{path}: line {start}: a quote opening a field of column {col} is closed only on line {end}, so lines "
        f"{start}-{end}, whole rows among them, were read as that one field ({rows[i][k][:60]!r}...). Is a quote "
        f"left open? Remove it, or quote the whole field and double the quotes in it (\"she said \"\"wow\"\"\")")


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


def _record_lines(path: Path, delim: str, line: int) -> tuple[int, int]:
    """(first, ``line``): the lines of the CSV record that a strict reader stopped in on ``line``; records before it
    read the same leniently. Reads the file again, only for an error message."""
    start = 1
    with _open_text(path) as f:
        reader = _csv_reader(f, delim)
        with contextlib.suppress(*_DAMAGE):
            for _ in reader:
                if reader.line_num >= line:
                    break
                start = reader.line_num + 1
    return start, line


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
                if any(c not in found for c in columns):  # an optional key may first appear on a later line
                    found = list(dict.fromkeys(k for o in objs if isinstance(o, dict) for k in o))
                if any(c not in found for c in columns):
                    raise _missing(path, columns, found, f" (the keys of the first {len(objs)} lines)")
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


# Epoch times of interaction logs lie from 1980 (1e8 seconds, the mixed-unit floor, is 1973; no log of these
# services is older) to 2100 (far past any model's life). A column whose latest time decodes outside was written in
# another form that reads as epoch numbers: YYYYMMDD (20200101: August 1970 in seconds), YYYYMMDDhhmmss (the year
# 2610 in milliseconds), a year, spreadsheet day serials (45244.5: the time of day lost too). Trained on, the time
# features learn a period that serving's request_time (unix seconds, now) is never in.
_EPOCH_SPAN = (315_532_800, 4_102_444_800)  # 1980-01-01, 2100-01-01 in epoch seconds
# Numbers below the epoch floor counted up from below this are counters (steps, tests) in file order, not dates.
_COUNTER_START = 1000


def _check_epoch_span(times: np.ndarray, unit: str, scale: int, path: Path, col: str) -> str:
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


# ---------------------------------------------------------------- adapters


def _load_columns(path: Path, fmt: str, options: DatasetOptions, customer_col: str, candidate_col: str,
                  rating_col: str | None, time_col: str | None) -> dict[str, Any]:
    event_col = options.event_col
    wanted = [customer_col, candidate_col] + [c for c in (rating_col, time_col, event_col) if c]
    customers, candidates, events = _Encoder(), _Encoder(), _Encoder()
    cust_codes, cand_codes, ratings, times, event_codes = [], [], [], [], []
    rows, time_kind, dropped = 0, None, Counter()
    for chunk in _read_columns(path, fmt, wanted, options.delimiter, options.header, counts=dropped, id_columns=2):
        if rows == 0 and not options.header:
            _refuse_header_read_as_data(path, options, chunk[0][0], chunk[1][0])
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
    time_range = _check_epoch_span(exact_times, time_unit, scale, path, time_col) if time_col else None
    return {
        "customers": customers, "candidates": candidates,
        "customer_codes": cat(cust_codes, np.int64), "candidate_codes": cat(cand_codes, np.int64),
        "ratings": cat(ratings, np.float32) if rating_col else None,
        "exact_times": exact_times, "time_unit": time_unit, "time_range": time_range, "scale": scale,
        "events": events, "event_codes": cat(event_codes, np.int64),
        "rows": rows, "dropped": dropped,
    }


_ID_OPTIONS = ("customer_col", "candidate_col", "session_col", "item_col")


def _refuse_header_read_as_data(path: Path, options: DatasetOptions, customer: Any, candidate: Any) -> None:
    """Refuses a first row, read without a header, whose ids are the id columns' default names (user_id, item_id;
    SessionId, ItemId): a header read as one more interaction, of a customer and candidate named so."""
    from trainer.data import datasets  # at run time: datasets imports this module

    names = {f.default for f in dataclasses.fields(datasets.DatasetOptions) if f.name in _ID_OPTIONS}
    if isinstance(customer, str) and isinstance(candidate, str) and {customer.strip(), candidate.strip()} <= names:
        raise ValueError(f"{path}: read with --no-header, but its first line names id columns ({customer.strip()}, "
                         f"{candidate.strip()}): a header, which would be read as an interaction; leave out "
                         f"--no-header and name the id columns by their header names")


def _read_info(path: Path, fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    """The start of ``Interactions.info``: what was read (repeated header lines included, and counted), in which
    time unit and over which span (``time_range``, UTC)."""
    info: dict[str, Any] = {"source": str(path), "format": fmt, "rows_read": c["rows"] + c["dropped"].total(),
                            **c["dropped"]}
    if c["time_unit"]:
        info["time_unit"], info["time_range"] = c["time_unit"], c["time_range"]
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
            numbers = np.array([np.nan if v in (None, "") else float(v) for v in values], dtype=np.float64)
            # inf, or past float32's range: the towers' inputs would be inf and training NaN (NaN is a blank cell).
            bad = np.flatnonzero(~(np.abs(numbers) <= np.finfo(np.float32).max) & ~np.isnan(numbers))
            if len(bad):
                raise ValueError(f"{path}: column {name!r} of data row {bad[0] + 1} holds {values[bad[0]]!r}, not "
                                 "a finite number float32 holds: fix it, or leave the cell empty (missing)")
            features[name] = numbers.astype(np.float32)
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
            options.catalog_delimiter, options.catalog_header)
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
