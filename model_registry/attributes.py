"""Candidate attributes of a model version (``candidate_attributes.npz``): what
filters select on, written by the trainer from the catalogue and carried by
catalogue deltas for the candidates they upsert.

Two kinds of namespace, as in Vertex AI Vector Search:

* token namespaces (``genre``, ``region``, ...): each candidate holds a set of
  tokens, stored as a CSR (``offsets`` int64 [N + 1], ``tokens`` str [T]);
* numeric namespaces (``price``, ``year``, ...): one float per candidate, NaN
  where it has none.

Rows follow the ids they are stored with (the version's candidate ids, or a
delta's upserted ids).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from model_registry.manifest import UNREADABLE_NPZ, VersionError

_TOKEN_OFFSETS = "token_offsets__"
_TOKENS = "tokens__"
_NUMERIC = "numeric__"


@dataclasses.dataclass(frozen=True)
class Attributes:
    """Attributes of ``rows`` candidates: ``tokens[ns] = (offsets [rows + 1], tokens [T])``,
    ``numeric[ns] = float32 [rows]``."""

    rows: int
    tokens: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)
    numeric: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        for ns, (offsets, tokens) in self.tokens.items():
            if offsets.shape != (self.rows + 1,) or offsets[0] != 0 or offsets[-1] != len(tokens) \
                    or np.any(np.diff(offsets) < 0):
                raise ValueError(f"token namespace {ns!r}: offsets must be a non-decreasing [{self.rows + 1}] "
                                 f"array from 0 to {len(tokens)}")
        for ns, values in self.numeric.items():
            if values.shape != (self.rows,):
                raise ValueError(f"numeric namespace {ns!r} has shape {values.shape}, expected ({self.rows},)")
        overlap = set(self.tokens) & set(self.numeric)
        if overlap:
            raise ValueError(f"namespaces {sorted(overlap)} are both token and numeric")

    @classmethod
    def from_lists(cls, rows: int, tokens: dict[str, list[list[str]]] | None = None,
                   numeric: dict[str, list[float] | np.ndarray] | None = None) -> "Attributes":
        """From per-row token lists (``tokens[ns][row]``) and per-row numbers."""
        packed = {}
        for ns, lists in (tokens or {}).items():
            if len(lists) != rows:
                raise ValueError(f"token namespace {ns!r} has {len(lists)} rows, expected {rows}")
            lengths = np.array([len(set(t)) for t in lists], dtype=np.int64)
            flat = [token for t in lists for token in sorted(set(t))]
            packed[ns] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                          np.array(flat, dtype=str) if flat else np.zeros(0, dtype="<U1"))
        return cls(rows, packed, {ns: np.asarray(v, dtype=np.float32) for ns, v in (numeric or {}).items()})

    def row_tokens(self, ns: str, row: int) -> list[str]:
        offsets, tokens = self.tokens[ns]
        return tokens[offsets[row]:offsets[row + 1]].tolist()

    def take(self, rows: np.ndarray) -> "Attributes":
        """The attributes of ``rows`` (int indices), in that order: a shard's or a delta's part."""
        rows = np.asarray(rows, dtype=np.int64)
        tokens = {}
        for ns, (offsets, values) in self.tokens.items():
            lengths = offsets[rows + 1] - offsets[rows]
            picked = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows]) if lengths.sum() \
                else np.zeros(0, np.int64)
            tokens[ns] = (np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values[picked])
        return Attributes(len(rows), tokens, {ns: values[rows] for ns, values in self.numeric.items()})

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The npz arrays of these attributes (also inside a catalogue delta)."""
        out: dict[str, np.ndarray] = {}
        for ns, (offsets, tokens) in self.tokens.items():
            out[_TOKEN_OFFSETS + ns], out[_TOKENS + ns] = offsets, tokens
        for ns, values in self.numeric.items():
            out[_NUMERIC + ns] = values
        return out

    @classmethod
    def from_arrays(cls, rows: int, arrays) -> "Attributes":
        """Reads what ``to_arrays`` wrote (other keys are ignored)."""
        tokens, numeric = {}, {}
        for key in arrays.keys() if hasattr(arrays, "keys") else arrays:
            if key.startswith(_TOKEN_OFFSETS):
                ns = key[len(_TOKEN_OFFSETS):]
                tokens[ns] = (np.asarray(arrays[key], dtype=np.int64), np.asarray(arrays[_TOKENS + ns]).astype(str))
            elif key.startswith(_NUMERIC):
                numeric[key[len(_NUMERIC):]] = np.asarray(arrays[key], dtype=np.float32)
        return cls(rows, tokens, numeric)

    def save(self, path: Path) -> None:
        np.savez(path, **self.to_arrays())

    @staticmethod
    def namespaces(path: Path) -> tuple[frozenset[str], frozenset[str]]:
        """(token namespaces, numeric namespaces) of an attributes file, from its
        array names alone; both empty if there is no file."""
        if not Path(path).exists():
            return frozenset(), frozenset()
        try:
            with np.load(path, allow_pickle=False) as arrays:
                keys = list(arrays.keys())
        except UNREADABLE_NPZ as e:
            raise VersionError(f"{path} is not a valid candidate attributes file: {e}") from e
        return (frozenset(k[len(_TOKEN_OFFSETS):] for k in keys if k.startswith(_TOKEN_OFFSETS)),
                frozenset(k[len(_NUMERIC):] for k in keys if k.startswith(_NUMERIC)))

    @classmethod
    def load(cls, path: Path, rows: int) -> "Attributes":
        """Reads a version's attributes file; raises VersionError if it does not describe ``rows`` candidates."""
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return cls.from_arrays(rows, arrays)
        except UNREADABLE_NPZ as e:
            raise VersionError(f"{path} is not a valid candidate attributes file for {rows} candidates: {e}") from e


# What separates a cell's tokens in a catalogue column (MovieLens genres are "Action|Drama"), for the attributes, the
# features tower's multi-hot input and the data loaders that join list cells alike.
LIST_SEPARATOR = "|"


def token_lists(cells) -> list[list[str]]:
    """Each cell's tokens: split on ``LIST_SEPARATOR``, stripped, empty ones dropped."""
    return [[t.strip() for t in str(cell).split(LIST_SEPARATOR) if t.strip()] for cell in cells]


def is_token_column(lists: list[list[str]]) -> bool:
    """Whether a string column (as ``token_lists``) holds categories rather than free
    text: fewer distinct tokens than half its rows. The trainer's candidate encoder
    uses the same rule, so a column a filter selects on is a multi-hot input of the
    features tower and free text is a bag of words."""
    return len({t for cell in lists for t in cell}) < max(len(lists) // 2, 1)


def from_catalogue(features: dict[str, np.ndarray] | None) -> Attributes | None:
    """Attributes from the trainer's catalogue columns (rows = catalogue order):
    numeric columns become numeric namespaces; string columns token namespaces,
    a cell split on ``LIST_SEPARATOR``.
    Free text (a title: nearly one distinct value per candidate) is not an
    attribute: a string column is kept only if it has fewer distinct tokens
    than half its rows."""
    if not features:
        return None
    rows = len(next(iter(features.values())))
    tokens, numeric = {}, {}
    for column, values in features.items():
        if values.dtype.kind == "f":
            numeric[column] = values
            continue
        lists = token_lists(values)
        if is_token_column(lists):
            tokens[column] = lists
    if not tokens and not numeric:
        return None
    return Attributes.from_lists(rows, tokens, numeric)
