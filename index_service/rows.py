"""What an index slot knows about each row of its ScaNN searcher: the candidate
id, where its vector is, and the id -> row map; kept in ScaNN's order through
catalogue deltas (upsert appends or overwrites a row, delete moves the last row
into the deleted one's place, exactly as ``scann_ops_pybind`` does).

Ids are found without a dict over the whole catalogue (~100 bytes per id,
and seconds of GIL to build at 1M): the version's ids are binary-searched
(they are sorted by the trainer; otherwise an argsort at load), and only ids
that deltas moved, added or deleted are kept in a dict.

Vectors are not copied: a row's vector is either row ``source`` of the
version's embeddings file (memory-mapped: pages are read on demand and shared
with the page cache) or, for a row written by a delta, entry ``-source - 1``
of the delta vectors kept here. They serve exact search over a filtered
subset, item-to-item queries and the recall check.
"""

from __future__ import annotations

import dataclasses
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np

from model_registry.deltas import max_norm


class ReadWriteLock:
    """Many readers or one writer, writers first (a stream of searches must not
    starve a delta). ScaNN searches release the GIL and its upserts and deletes
    mutate the searcher, so they must not overlap; the standard library has no
    such lock."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# What an entry of ``Rows._moved`` holds in memory: 136 bytes for a 17-character id and its row (tracemalloc).
MOVED_ENTRY_BYTES = 136


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    if len(array) >= rows:
        return array
    grown = np.zeros((max(rows, 2 * len(array), 16),) + array.shape[1:], dtype=array.dtype)
    grown[:len(array)] = array
    return grown


class Rows:
    """Row bookkeeping of one searcher (see the module docstring); mutated only under the write lock."""

    def __init__(self, ids: np.ndarray, base_vectors: np.ndarray):
        self.count = len(ids)
        self._ids = ids.copy()  # current id of each row; ``ids`` stays the version's, for lookups
        self._source = np.arange(len(ids), dtype=np.int64)
        self._base = base_vectors  # [N, dim], usually a read-only memory map
        self._added = np.zeros((0, base_vectors.shape[1]), dtype=np.float32)
        self._added_count = 0
        ordered = len(ids) < 2 or bool(np.all(ids[:-1] < ids[1:]))
        self._order = None if ordered else np.argsort(ids, kind="stable")
        self._sorted = ids if ordered else ids[self._order]
        self._moved: dict[str, int] = {}  # id -> row for ids not at their version row; -1: deleted
        # The scale of the version's candidates, which bounds a query's scores. A delta's vectors do not move it:
        # one absurd catalogue vector must not have every query refused (its own scores may overflow).
        self.trained_max_norm = max_norm(base_vectors)

    def rows_of(self, candidate_ids) -> np.ndarray:
        """int64 rows holding ``candidate_ids`` (str), -1 for an id not held; one
        binary search for all of them."""
        ids = np.asarray(candidate_ids, dtype=str)
        rows = np.full(len(ids), -1, dtype=np.int64)
        if len(ids) and len(self._sorted):
            i = np.minimum(np.searchsorted(self._sorted, ids), len(self._sorted) - 1)
            found = self._sorted[i] == ids
            rows[found] = i[found] if self._order is None else self._order[i[found]]
        if self._moved:
            for j, candidate in enumerate(ids.tolist()):
                row = self._moved.get(candidate)
                if row is not None:
                    rows[j] = row
        return rows

    def upsert_rows(self, candidate_ids) -> np.ndarray:
        """The rows ``write`` takes for upserting ``candidate_ids``: the row of each id held, and the next
        new rows, in order, for the others."""
        rows = self.rows_of(candidate_ids)
        new = rows < 0
        rows[new] = self.count + np.arange(int(new.sum()))
        return rows

    def row_of(self, candidate_id: str) -> int:
        """The row holding ``candidate_id``, -1 if none."""
        return int(self.rows_of([candidate_id])[0])

    def reserve(self, rows: int) -> None:
        """Makes room for ``rows`` rows now, so that deltas append without copying (a copy under the write lock:
        doubling 64k delta vectors of 64 dims took 7.5 ms). Pages never written cost no memory."""
        self._ids = _grow(self._ids, rows)
        self._source = _grow(self._source, rows)
        self._added = _grow(self._added, rows - self.count)

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self.count]

    def delta_bytes(self) -> int:
        """About the memory deltas added to the version's rows: the vectors they wrote and the ids they moved."""
        return self._added_count * self._added.shape[1] * self._added.itemsize + len(self._moved) * MOVED_ENTRY_BYTES

    def id_of(self, rows: np.ndarray) -> list[str]:
        return self._ids[rows].tolist()

    @property
    def id_chars(self) -> int | None:
        """At least as many characters as the longest id held has (the width of the ids' array, which a delta
        widens); None for ids not held as fixed-width text."""
        return self._ids.dtype.itemsize // 4 if self._ids.dtype.kind == "U" else None

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows: slice) -> np.ndarray:
        """The vectors of a slice of rows: with ``len``, the rows read as an
        [N, dim] database (``model_registry.search.exact_top_k`` takes one)."""
        return self.vectors(np.arange(self.count)[rows])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), dim] of the rows' current vectors."""
        source = self._source[rows]
        out = np.empty((len(rows), self._base.shape[1]), dtype=np.float32)
        base = source >= 0
        out[base] = self._base[source[base]]
        out[~base] = self._added[-source[~base] - 1]
        return out

    # --- changes (under the write lock) ------------------------------------------------------------------------

    def write(self, rows: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Rows ``rows`` (existing ones, or exactly the next new ones) now hold ``ids`` with ``vectors``."""
        new = rows >= self.count
        # A row whose vector a delta wrote is overwritten in place: one entry per update would grow without end
        # under a catalogue that re-sends its candidates.
        again = ~new
        again[again] = self._source[rows[again]] < 0
        self._added[-self._source[rows[again]] - 1] = vectors[again]
        fresh = ~again
        start, added = self._added_count, int(fresh.sum())
        self._added = _grow(self._added, start + added)
        self._added[start:start + added] = vectors[fresh]
        self._added_count += added
        top = int(rows.max()) + 1 if len(rows) else 0
        if top > len(self._ids):
            self._ids = _grow(self._ids, top)
        width = max((len(i) for i in ids.tolist()), default=0)
        if self._ids.dtype.kind == "U" and width > self._ids.dtype.itemsize // 4:
            self._ids = self._ids.astype(f"<U{width}")
        self._source = _grow(self._source, top)
        self._ids[rows] = ids
        self._source[rows[fresh]] = -np.arange(start, start + added, dtype=np.int64) - 1
        for row, candidate in zip(rows[new].tolist(), ids[new].tolist()):
            self._moved[candidate] = row
        self.count = max(self.count, top)

    def deletion(self, candidate_ids) -> "Deletion":
        """Deleting ``candidate_ids`` (ids not held, or repeated, are skipped) as one move of rows. Reads
        only: the applier, the one writer, calls it outside the lock, a chunk of ids at a time."""
        ids = list(dict.fromkeys(np.asarray(candidate_ids, dtype=str).tolist()))
        return Deletion.plan([row for row in self.rows_of(ids).tolist() if row >= 0], self.count)

    def delete(self, deletion: "Deletion") -> None:
        """Applies ``deletion``: its deleted ids are no longer found, its moved ones at their new rows."""
        for candidate in self._ids[deletion.gone].tolist():
            self._moved[candidate] = -1
        moved = self._ids[deletion.source]
        self._ids[deletion.to] = moved
        self._source[deletion.to] = self._source[deletion.source]
        for candidate, row in zip(moved.tolist(), deletion.to.tolist()):
            self._moved[candidate] = row
        self.count = deletion.count


@dataclasses.dataclass(frozen=True)
class Deletion:
    """Deleting ``rows`` in order, each time moving the last row into the deleted one's place (ScaNN's way),
    as a single move: the contents of rows ``gone`` (numbered as before) are deleted, row ``to[i]`` takes what
    row ``source[i]`` held, and the rows from ``count`` on are left empty. Rows and attributes apply it with a
    few array operations under the write lock: copying a row per deleted row, per column, took 4.9 ms of the
    applier's CPU per 1,000 deletes at 1M, the move takes 1.9."""

    rows: list[int]  # what ScaNN's delete takes
    gone: np.ndarray
    to: np.ndarray
    source: np.ndarray
    count: int  # rows held after

    @classmethod
    def plan(cls, gone: list[int], count: int) -> "Deletion":
        """The move that deleting the contents of rows ``gone`` (distinct, numbered as before), in that
        order, makes of ``count`` rows; ``rows`` is where each is when its turn comes."""
        holds: dict[int, int] = {}  # row -> the row (numbered as before) whose contents moved into it
        moved_to: dict[int, int] = {}  # the inverse: row numbered as before -> where its contents are now
        rows = []
        for original in gone:
            row = moved_to.pop(original, original)
            rows.append(row)
            count -= 1  # now the last row's number
            last = holds.pop(count, count)
            if row != count:
                holds[row] = last
                moved_to[last] = row
        return cls(rows, np.array(gone, dtype=np.int64), np.fromiter(holds.keys(), np.int64, len(holds)),
                   np.fromiter(holds.values(), np.int64, len(holds)), count)
