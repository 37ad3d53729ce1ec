"""Candidate attributes held by an index slot, row-aligned with its ScaNN
searcher, and filter evaluation over them.

Rows change as catalogue deltas apply (rows appended, overwritten, and moved
by ScaNN's swap-on-delete), so each namespace is a fixed-width column:

* token namespace: int32 [rows, width] of token numbers (-1 pads), with the
  namespace's vocabulary (grown by deltas) and a count per token (for the
  selectivity estimate);
* numeric namespace: float32 [rows], NaN where a candidate has no value.

A filter's selectivity is estimated from the token counts where they are exact
(a restrict of one token) and otherwise by evaluating it on a random sample of
rows, read as they are now: deltas change values, and a row may hold several of
a restrict's tokens.

A filter is evaluated either on the rows a search returned (``passes``) or on
every row (``mask``, for exact search over the filtered subset). Both are a
table lookup per token, vectorised; no per-candidate Python.
"""

from __future__ import annotations

import numpy as np

from index_service.rows import Deletion
from model_registry.attributes import Attributes
from serving.filters import Filter, NumericRange, TokenRestrict

# Rows sampled (about this many) to estimate a filter's selectivity: a 2% filter (20,000 rows at 1M, where exact
# search stops) is estimated within ~0.3% (two standard errors). Measured at 1M rows on 2 busy cores: ~30 us for a
# range, ~0.4 ms for a restrict of several tokens (a restrict of one token reads its exact count instead).
ESTIMATE_SAMPLE = 10_000
# Estimates kept, by filter, until rows change: reading the sample cost a 50% range ~45 us of a ~150 us search.
ESTIMATES_KEPT = 1024
# Rows' token lists named, per namespace, for crowded answers (each result names its tokens): a catalogue holds far
# fewer distinct lists than rows (216 genre lists for MovieLens's 1,682 films), and naming 1,000 results one by one
# took 1.6 ms against 0.14 ms looked up. Started over past this many (~10 MB of lists of three tokens).
NAMES_KEPT = 65_536
# Rows whose tokens crowding reads at once: most crowded answers are settled within the first few hundred rows, and
# 256 rows' tokens read together cost a third of reading them row by row (32 against 92 us).
CROWD_STEP = 256


def _padded(offsets: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """int32 [rows, longest row] of CSR rows (``offsets`` into ``numbers``), -1 pads."""
    lengths = np.diff(offsets)
    matrix = np.full((len(lengths), int(lengths.max()) if len(lengths) else 0), -1, dtype=np.int32)
    matrix[np.repeat(np.arange(len(lengths)), lengths), np.arange(len(numbers)) - np.repeat(offsets[:-1], lengths)] = \
        numbers
    return matrix


class _TokenColumn:
    def __init__(self, vocabulary: list[str], matrix: np.ndarray):
        self.index = {token: i for i, token in enumerate(vocabulary)}
        self.vocabulary = list(vocabulary)  # token by number, for answers that name a row's tokens
        self.matrix = matrix  # int32 [capacity, width], -1 pads
        self.counts = np.zeros(len(vocabulary), dtype=np.int64)
        # A row's token numbers (their bytes) -> its tokens. Numbers are never reused for other tokens, so a name
        # stays right as rows change; searches add to it concurrently, each entry the same whoever adds it.
        self._names: dict[bytes, tuple[str, ...]] = {}

    def token_ids(self, tokens) -> np.ndarray:
        return np.array([self.index[t] for t in tokens if t in self.index], dtype=np.int64)

    def held(self, tokens) -> int:
        """Rows holding ``tokens``, summed over them. A delta being prepared numbers its new tokens before
        their counts exist; no row holds them yet."""
        counts = self.counts
        ids = self.token_ids(tokens)
        return int(counts[ids[ids < len(counts)]].sum())

    def lookup_table(self, tokens) -> np.ndarray:
        """bool [V + 1]: True at the tokens' numbers; the last entry (index -1, the pad) stays False.
        A delta being prepared may add tokens meanwhile; no row holds them yet, so they are left out."""
        size = len(self.index)
        table = np.zeros(size + 1, dtype=bool)
        ids = self.token_ids(tokens)
        table[ids[ids < size]] = True
        return table

    def encode(self, offsets: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Token numbers [rows, longest row] (-1 pads) of CSR rows of tokens, new tokens added to the
        vocabulary. Changes no row: runs outside the write lock."""
        numbers = np.array([self._number(t) for t in tokens.tolist()], dtype=np.int32)
        if len(self.index) > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(len(self.index) - len(self.counts), np.int64)])
        return _padded(offsets, numbers)

    def _number(self, token: str) -> int:
        number = self.index.get(token)
        if number is None:  # named before any row holds it: rows are written after, under the write lock
            self.vocabulary.append(token)
            number = self.index.setdefault(token, len(self.vocabulary) - 1)
        return number

    def names(self, rows: np.ndarray) -> list[tuple[str, ...]]:
        """Each of ``rows``' tokens, in its order; rows holding the same tokens share one tuple."""
        numbers = self.matrix.take(rows, axis=0)
        if not numbers.shape[1]:
            return [()] * len(rows)
        keys = numbers.view(np.dtype((np.void, numbers.itemsize * numbers.shape[1]))).ravel().tolist()
        known = self._names
        named = list(map(known.get, keys))
        if None in named:
            if len(known) > NAMES_KEPT:  # more distinct token lists than kept: start over rather than track use
                known.clear()
            vocabulary = self.vocabulary
            for j in [j for j, tokens in enumerate(named) if tokens is None]:
                named[j] = known.setdefault(keys[j], tuple([vocabulary[t] for t in numbers[j].tolist() if t >= 0]))
        return named

    def widen(self, width: int) -> None:
        if width > self.matrix.shape[1]:
            wider = np.full((len(self.matrix), width), -1, dtype=np.int32)
            wider[:, :self.matrix.shape[1]] = self.matrix
            self.matrix = wider

    def count(self, rows_tokens: np.ndarray, sign: int) -> None:
        flat = rows_tokens[rows_tokens >= 0]
        np.add.at(self.counts, flat, sign)


class AttributeColumns:
    """Attributes of a slot's rows; mutated only under the searcher's write lock."""

    def __init__(self, attributes: Attributes | None, rows: int):
        attributes = attributes or Attributes(rows)
        if attributes.rows != rows:
            raise ValueError(f"attributes describe {attributes.rows} rows, the searcher holds {rows}")
        self.rows = rows
        self.tokens: dict[str, _TokenColumn] = {}
        for ns, (offsets, tokens) in attributes.tokens.items():
            vocabulary, numbers = np.unique(tokens, return_inverse=True)
            matrix = _padded(offsets, numbers)
            column = _TokenColumn(vocabulary.tolist(), matrix)
            column.count(matrix, 1)
            self.tokens[ns] = column
        self.numeric: dict[str, np.ndarray] = {ns: v.astype(np.float32, copy=True)
                                               for ns, v in attributes.numeric.items()}
        self._rng = np.random.default_rng(0)
        # Every row, and every row a delta appends, joins the sample with the same chance. It holds positions, read
        # at each estimate, so upserts in place keep it current, and deletion's moves, blind to it, keep it uniform.
        self._sample_rate = min(1.0, ESTIMATE_SAMPLE / max(rows, 1))
        self._sample = np.flatnonzero(self._rng.random(rows) < self._sample_rate)
        self._estimates: dict[Filter, float] = {}  # by filter, until rows change (write, delete)

    # --- filters -----------------------------------------------------------------------------------------------

    def check(self, f: Filter) -> None:
        """Refuses a filter naming a namespace these attributes do not have."""
        f.check_namespaces(self.tokens.keys(), self.numeric.keys())

    def _restrict(self, restrict: TokenRestrict, rows: np.ndarray | slice) -> np.ndarray:
        column = self.tokens[restrict.namespace]
        # take: a gather of rows ~15x faster than indexing with them (10,000 of 1M rows, the estimate's sample).
        numbers = column.matrix[rows] if isinstance(rows, slice) else column.matrix.take(rows, axis=0)
        ok = np.ones(len(numbers), dtype=bool)
        if restrict.allow:
            ok &= column.lookup_table(restrict.allow)[numbers].any(axis=1)
        if restrict.deny:
            ok &= ~column.lookup_table(restrict.deny)[numbers].any(axis=1)
        return ok

    def _range(self, numeric: NumericRange, rows: np.ndarray | slice) -> np.ndarray:
        values = self.numeric[numeric.namespace][rows]
        ok = ~np.isnan(values)
        if numeric.low is not None:
            ok &= values >= numeric.low
        if numeric.high is not None:
            ok &= values <= numeric.high
        return ok

    def passes(self, rows: np.ndarray, f: Filter) -> np.ndarray:
        """bool [len(rows)]: which of ``rows`` pass the filter's restricts and ranges."""
        ok = np.ones(len(rows), dtype=bool)
        for restrict in f.restricts:
            ok &= self._restrict(restrict, rows)
        for numeric in f.ranges:
            ok &= self._range(numeric, rows)
        return ok

    def mask(self, f: Filter) -> np.ndarray:
        """bool [rows]: every row passing the filter."""
        everything = slice(0, self.rows)
        ok = np.ones(self.rows, dtype=bool)
        for restrict in f.restricts:
            ok &= self._restrict(restrict, everything)
        for numeric in f.ranges:
            ok &= self._range(numeric, everything)
        return ok

    def selectivity(self, f: Filter) -> float:
        """An estimate of the share of rows passing: it sizes the over-fetch and picks exact search. Too high
        loses recall (a filter that needed exact search gets the over-fetch); too low costs exact search."""
        estimates = self._estimates
        share = estimates.get(f)
        if share is not None:
            return share
        share = 1.0
        rows = max(self.rows, 1)
        ok = np.ones(len(self._sample), dtype=bool)
        for restrict in f.restricts:
            if len(restrict.allow) + len(restrict.deny) == 1:
                held = min(1.0, self.tokens[restrict.namespace].held(restrict.allow | restrict.deny) / rows)
                share *= held if restrict.allow else 1.0 - held
            else:
                ok &= self._restrict(restrict, self._sample)
        for numeric in f.ranges:
            ok &= self._range(numeric, self._sample)
        if len(ok):
            share *= float(ok.mean())
        if len(estimates) >= ESTIMATES_KEPT:  # many distinct filters: start over rather than track their use
            estimates.clear()
        estimates[f] = share
        return share

    def crowded(self, rows: np.ndarray, namespace: str, max_per_value: int, k: int) -> np.ndarray:
        """Positions in ``rows`` (best first) of the first ``k`` that fit crowding, greedily in order: a row is
        passed over when a token of ``namespace`` it holds is held by ``max_per_value`` rows taken before it."""
        if max_per_value >= k:  # fewer than k rows come before any row taken: none is ever passed over
            return np.arange(min(k, len(rows)))
        matrix = self.tokens[namespace].matrix
        held: dict[int, int] = {}
        full: set[int] = set()  # tokens held max_per_value times (never the pad, -1)
        taken: list[int] = []
        for start in range(0, len(rows), CROWD_STEP):
            for j, numbers in enumerate(matrix.take(rows[start:start + CROWD_STEP], axis=0).tolist(), start):
                if not full.isdisjoint(numbers):
                    continue
                taken.append(j)
                if len(taken) == k:
                    return np.array(taken, dtype=np.int64)
                for t in numbers:
                    if t >= 0:
                        held[t] = held.get(t, 0) + 1
                        if held[t] == max_per_value:
                            full.add(t)
        return np.array(taken, dtype=np.int64)

    def token_names(self, rows: np.ndarray, namespace: str) -> list[tuple[str, ...]]:
        """Each of ``rows``' tokens in ``namespace``, in its order (what crowding counts it under)."""
        return self.tokens[namespace].names(rows)

    # --- changes (under the write lock) ------------------------------------------------------------------------

    def reserve(self, rows: int) -> None:
        """Makes room for ``rows`` rows (see ``Rows.reserve``)."""
        for column in self.tokens.values():
            if len(column.matrix) < rows:
                grown = np.full((max(rows, 2 * len(column.matrix)), column.matrix.shape[1]), -1, dtype=np.int32)
                grown[:len(column.matrix)] = column.matrix
                column.matrix = grown
        for ns, values in self.numeric.items():
            if len(values) < rows:
                grown = np.full(max(rows, 2 * len(values)), np.nan, dtype=np.float32)
                grown[:len(values)] = values
                self.numeric[ns] = grown

    def encode(self, attributes: Attributes) -> dict[str, np.ndarray]:
        """Token numbers of ``attributes``' rows per token namespace of this slot (empty
        where ``attributes`` do not name it), what ``write`` takes; grows vocabularies only."""
        return {ns: column.encode(*attributes.tokens[ns]) if ns in attributes.tokens
                else np.zeros((attributes.rows, 0), dtype=np.int32) for ns, column in self.tokens.items()}

    def write(self, rows: np.ndarray, tokens: dict[str, np.ndarray], attributes: Attributes, at: slice) -> None:
        """Rows ``rows`` (existing or the next new ones) take the attributes of
        ``attributes``' rows ``at`` (``tokens``: their ``encode``); namespaces the delta
        does not name are cleared."""
        self._estimates = {}
        top = int(rows.max()) + 1 if len(rows) else 0
        self.reserve(top)
        for ns, column in self.tokens.items():
            numbers = tokens[ns][at]
            column.widen(numbers.shape[1])
            column.count(column.matrix[rows[rows < self.rows]], -1)
            column.matrix[rows] = -1
            column.matrix[rows, :numbers.shape[1]] = numbers
            column.count(numbers, 1)
        for ns, values in self.numeric.items():
            values[rows] = attributes.numeric[ns][at] if ns in attributes.numeric else np.nan
        appended = rows[rows >= self.rows]
        self._sample = np.concatenate([self._sample, appended[self._rng.random(len(appended)) < self._sample_rate]])
        if len(self._sample) > 2 * ESTIMATE_SAMPLE:  # a catalogue grown far past its size at load
            self._sample = self._sample[self._rng.random(len(self._sample)) < 0.5]
            self._sample_rate /= 2
        self.rows = max(self.rows, top)

    def delete(self, deletion: Deletion) -> None:
        """Deletes rows as ScaNN does (``Deletion``: each time, the last row moves into the deleted one's place)."""
        self._estimates = {}
        for column in self.tokens.values():
            column.count(column.matrix[deletion.gone], -1)
            column.matrix[deletion.to] = column.matrix[deletion.source]
            column.matrix[deletion.count:self.rows] = -1
        for values in self.numeric.values():
            values[deletion.to] = values[deletion.source]
            values[deletion.count:self.rows] = np.nan
        self._sample = self._sample[self._sample < deletion.count]
        self.rows = deletion.count
