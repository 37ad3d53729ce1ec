"""Rows of a CSV, TSV or JSON-lines file (gzipped or not), read as chunks of the columns asked for.

Every way a file can be malformed that would make a value be read from another
column or row is named here, with the line: a row of the wrong width, lines
swallowed by a quote left open, a header line repeated or changed partway, a
damaged .gz, a file that is not UTF-8 (the package docstring gives the rules).
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import itertools
import json
import operator
import re
import sys
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


FORMATS = ("csv", "tsv", "jsonl")
CHUNK_ROWS = 200_000


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


# Fields of up to this many characters: the csv module's default (131,072) refused a whole file for one long review
# text, even in a column not read. A quote left open still fails on its row's width or at the file's end.
csv.field_size_limit(1 << 24)


def _gzipped(path: Path) -> bool:
    """Whether the file is gzip: named .gz, or opening with gzip's magic bytes (a file renamed without its .gz was
    read as text and said to be "not UTF-8")."""
    if str(path).endswith(".gz"):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open_text(path: Path):
    # utf-8-sig: a byte order mark (Excel's "CSV UTF-8") is not part of the first header name or id.
    if _gzipped(path):
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


def read_columns(path: Path, fmt: str, columns: list[str], delimiter: str | None = None,
                  header: bool = True, chunk_rows: int = CHUNK_ROWS,
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
    with (gzip.open if _gzipped(path) else open)(path, "rb") as f:
        return f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _read_chunks(path: Path, fmt: str, columns: list[str], delimiter: str | None = None,
                 header: bool = True, chunk_rows: int = CHUNK_ROWS,
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
    blank = 0  # blank lines before the header: layout, but records a line's number counts
    if header:
        line = next(reader, None)
        while line == []:
            blank, line = blank + 1, next(reader, None)
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
    record = 1 + blank if header else 0
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


def _decodes(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _read_jsonl(path: Path, columns: list[str], chunk_rows: int) -> Iterator[list[list[Any]]]:
    loads = json.loads
    read = 0

    def counted(f) -> Iterator[tuple[int, str]]:  # a damaged file's error names the last line read, mid-chunk too
        nonlocal read
        for read, line in enumerate(f, 1):
            yield read, line

    with _open_text(path) as f, _damaged(path, lambda: read):
        first, lines_in = True, counted(f)
        while True:
            read_lines = list(itertools.islice(lines_in, chunk_rows))
            if not read_lines:
                if first:
                    raise ValueError(f"{path} is empty")
                return
            numbered = [(n, ln) for n, ln in read_lines if ln.strip()]
            del read_lines
            if not numbered:  # a chunk of blank lines alone: the file goes on (it ended the read, rows after lost)
                continue
            lines = [ln for _, ln in numbered]
            try:
                objs = [loads(ln) for ln in lines]  # transient: only the wanted fields are kept
            except json.JSONDecodeError as e:
                # json names the column within the one line it was given: the file's line is the one to find.
                line = next(n for n, ln in numbered if not _decodes(ln))
                raise ValueError(f"{path} is not JSON lines: line {line}: {e.msg} (column {e.colno})") from None
            except RecursionError:
                raise ValueError(f"{path}: a line nests arrays or objects too deep to read") from None
            except ValueError:  # past the digits Python reads as an int: an id, whose digits are all kept
                raise ValueError(f"{path}: a line holds a number of over {sys.get_int_max_str_digits()} digits, "
                                 f"more than Python reads as one: write it as a string (in quotes)") from None
            bad = next((i for i, o in enumerate(objs) if not isinstance(o, dict)), None)
            if first:
                found = list(objs[0]) if isinstance(objs[0], dict) else []
                if any(c not in found for c in columns):  # an optional key may first appear on a later line
                    found = list(dict.fromkeys(k for o in objs if isinstance(o, dict) for k in o))
                if any(c not in found for c in columns):  # a first line that is not an object: columns found
                    raise _missing(path, columns, found, f" (the keys of the first {len(objs)} lines)")
                first = False
            if bad is not None:
                raise ValueError(f"{path}: line {numbered[bad][0]} is not a JSON object: {lines[bad].strip()[:80]!r}")
            out = [[o.get(c) for o in objs] for c in columns]
            del objs
            yield [[_json_value(v) for v in col] if any(isinstance(v, (list, dict)) for v in col) else col
                   for col in out]

