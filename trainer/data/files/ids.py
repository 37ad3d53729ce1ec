"""Customer and candidate ids as they stream in: dictionary-encoded, trimmed, and the rows whose ids the services
could not take, or that repeat an event, dropped and counted."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from model_registry.ids import MAX_ID_BYTES


class IdEncoder:
    """Dictionary-encodes string ids as they stream in; ``finish`` sorts the vocabulary."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, values: list[Any]) -> np.ndarray:
        """The codes of ``values``; ``BadId`` (with the value's position) for a JSON value that is no id."""
        vocab = self.vocab
        setdefault = vocab.setdefault
        try:
            return np.fromiter((setdefault(v if isinstance(v, str) else id_str(v), len(vocab)) for v in values),
                               dtype=np.int64, count=len(values))
        except BadId as e:
            raise BadId(str(e), first_bad_id(values)) from None

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


def _opens_with_a_mark(value: str) -> bool:
    return value.startswith("\ufeff")


# Each id an interactions or catalogue file may not hold: (test, what it is, the likely cause).
_LINE_BREAK = (_line_break_inside, "with a line break", "is a quote left open?")
# Files joined with cat: "\ufeffu1" would be a customer apart from u1, its history split.
_BYTE_ORDER_MARK = (_opens_with_a_mark, "opening with a byte order mark (U+FEFF)", "files joined with cat? remove "
                    "the mark")


def _odd_id_error(path: Path, col: str, row: int, value: str, what: str, hint: str) -> ValueError:
    return ValueError(f"{path}: column {col!r} holds an id {what} at data row {row}: {value[:60]!r}"
                      f"{'...' if len(value) > 60 else ''} ({hint})")


def refuse_odd_ids(path: Path, col: str, encoder: IdEncoder, codes: list[np.ndarray]) -> None:
    """Refuses an id holding a line break (a quote left open reads the rows after it as one id) or opening with a
    byte order mark."""
    for odd, what, hint in (_LINE_BREAK, _BYTE_ORDER_MARK):
        code = next((i for i, v in enumerate(encoder.vocab) if odd(v)), None)
        if code is not None:
            row = int(np.argmax(np.concatenate(codes) == code)) + 1
            raise _odd_id_error(path, col, row, next(itertools.islice(encoder.vocab, code, None)), what, hint)


def refuse_marked_ids(path: Path, col: str, texts: list[str]) -> None:
    """``refuse_odd_ids``' byte order mark, in a column read whole (a catalogue's ids)."""
    odd, what, hint = _BYTE_ORDER_MARK
    row = next((row for row, text in enumerate(texts) if odd(text)), None)
    if row is not None:
        raise _odd_id_error(path, col, row + 1, texts[row], what, hint)


def long_ids(ids: np.ndarray) -> np.ndarray:
    """Where an id is over ``MAX_ID_BYTES`` of UTF-8, which the services refuse in every request."""
    long = np.zeros(len(ids), dtype=bool)
    maybe = np.flatnonzero(np.char.str_len(ids) > MAX_ID_BYTES // 4)  # at most 4 bytes a character
    long[maybe] = [len(v.encode("utf-8")) > MAX_ID_BYTES for v in ids[maybe].tolist()]
    return long


def usable_ids(keep: np.ndarray, info: dict[str, Any],
                *columns: tuple[IdEncoder, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``IdEncoder.finish`` of each (encoder, codes) column. Clears ``keep`` where a row lacks an id (they would all
    become one customer or candidate named "": ``info["dropped_missing_id"]``), has one holding a NUL character
    (``info["dropped_nul_id"]``) or one over ``MAX_ID_BYTES`` (``info["dropped_long_id"]``).

    The services refuse an id with a NUL or over the limit in every request. Such ids are dropped, not refused, as
    a missing one is: the rest of the file trains, and the count says how many rows the services could not have
    used. Other control characters are kept: the services take them, as ids of their own."""
    finished = [encoder.finish(codes) for encoder, codes in columns]
    unusable = (("dropped_missing_id", [(vocab == "")[codes] for vocab, codes in finished]),
                ("dropped_nul_id", [encoder.holds_nul()[codes] for encoder, codes in columns]),
                ("dropped_long_id", [long_ids(vocab)[codes] for vocab, codes in finished]))
    for key, per_column in unusable:
        rows = np.logical_or.reduce(per_column) & keep
        if rows.any():
            info[key] = int(rows.sum())
            keep &= ~rows
    return finished


def drop_duplicates(keep: np.ndarray, info: dict[str, Any], customers: np.ndarray, candidates: np.ndarray,
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


def narrowest(ids: np.ndarray) -> np.ndarray:
    """``ids`` in a unicode dtype as wide as the longest of them. numpy sizes every element of an array by its
    widest, and a subset keeps its parent's width: one 10 KB id read, then dropped as too long for the services,
    made every stored id 10 KB wide (a 616 KB version published at 530 MB, the trainer's memory fourfold)."""
    width = int(np.char.str_len(ids).max()) if len(ids) else 1
    return ids.astype(f"<U{max(width, 1)}", copy=False)


class BadId(ValueError):
    """A JSON value that names no id; ``position``: its place among the values read."""

    def __init__(self, message: str, position: int = 0):
        super().__init__(message)
        self.position = position


# Past it a float's integer part loses digits: 1234567890123456789.0 reads as ...768, which a neighbour shares.
_EXACT_FLOAT_INTEGERS = 2**53


def id_str(v: Any) -> str:
    """A JSON value as an id: a whole float as its integer (JSON lines' 12.0, what pandas writes for an integer
    column with a gap, is the id "12"), true/false as JSON spells them, None as blank. BadId for a float that is
    not finite, or whole past 2**53, whose digits the reader already lost (1e400 read as inf)."""
    if v is None:
        return ""
    if isinstance(v, bool):  # before Python's "True": the string "True" is another id
        return "true" if v else "false"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadId(f"{v!r}, a number that names no id: write the id as a string (in quotes)")
        if v.is_integer():
            if abs(v) >= _EXACT_FLOAT_INTEGERS:
                raise BadId(f"{v!r}, a whole number past 2**53 written as a float (with a fraction or an exponent), "
                            "whose digits a float does not hold (neighbouring ids would be one): write the id as "
                            "an integer or a string")
            return str(int(v))
    return str(v)


def bad_id_error(path: Path, col: str, row: int, error: BadId) -> ValueError:
    """The refusal of ``error``'s value, at data row ``row`` (from 1) of column ``col``."""
    return ValueError(f"{path}: column {col!r} of data row {row} holds {error}")


def first_bad_id(values: list[Any]) -> int:
    """The position of the first of ``values`` that ``id_str`` refuses."""
    for i, v in enumerate(values):
        if not isinstance(v, str):
            try:
                id_str(v)
            except BadId:
                return i
    raise AssertionError("no value is refused")

