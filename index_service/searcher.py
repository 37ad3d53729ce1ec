"""One model version's candidate index: a ScaNN searcher, its rows (ids,
vectors, attributes) and the catalogue deltas applied to it.

Searches may run from several threads at once (ScaNN's searcher is safe for
concurrent searches). Catalogue deltas mutate the searcher and the rows, so
they take the write side of a read-write lock in small chunks (ScaNN's upsert
holds the GIL too): a search waits at most one chunk.

Filters (``serving.filters.Filter``) are applied to an over-fetch sized by the
filter's estimated selectivity, fetched again deeper when too few pass; a
filter estimated to pass at most ``EXACT_MAX_ROWS`` rows is answered by exact
search over the rows that pass, so selective filters lose no recall.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import sys
import threading
import time
import types
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import cachetools
import numpy as np
import threadpoolctl
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from index_service.attributes import AttributeColumns
from index_service.rows import Deletion, ReadWriteLock, Rows
from model_registry import Manifest, VersionError
from model_registry import manifest as files
from model_registry.attributes import Attributes
from model_registry.deltas import Delta, replay
from model_registry.search import MIN_RECALL, exact_top_k, npy_shape
from serving.errors import NotFound
from serving.filters import NO_FILTER, Filter
from serving.lifecycle.admin import LoadReport
from serving.lifecycle.loader import short_gil_slices

log = logging.getLogger(__name__)

# Enough probes that a version built to the trainer's recall target (0.95) is not
# refused by chance: with per-query recall@10 spread by ~0.25, the standard error
# over 300 probes is ~0.015, three of them above the 0.9 floor (100 probes left
# two). The exact search it costs runs at idle priority in a slot that serves
# no traffic.
SELF_TEST_PROBES = 300
# Probes of a re-measure after catalogue deltas: over 1,000 relevant results, a
# standard error of ~0.6% at recall 0.96, for a third of the load's exact search.
RECHECK_PROBES = 100
# A filter estimated to pass at most this many rows is answered by exact search
# over them (~1 ms at 64 dims): cheaper than an over-fetch deep enough to find
# k of them, and exact.
EXACT_MAX_ROWS = 20_000
# Over-fetch per expected passing row, and its growth when too few passed.
OVERFETCH = 2.0
FETCH_GROWTH = 4
# The k the trainer calibrated a tree-AH searcher's reorder depth for (IndexSpec.recall_at_10). A
# deeper fetch (a filter's over-fetch, a large k, exclusions) keeps the same reorder depth per row fetched: at
# reorder 200 for k=10, a 10% filter fetching 200 with only 200 re-scored had recall@10 0.917 against
# exact filtered search at 1M; the true top-10 passing rows sit about 100 deep in the unfiltered order.
CALIBRATED_K = 10
# Candidates upserted or deleted per hold of the write lock: ~0.5 ms at 1M x 64
# (~16 us per change, half of it ScaNN's), so a search waits at most about that
# long. Measured at 1M: 64 per hold held 1.0 ms (p50) and searches in another
# thread went from p99 0.30 to 1.48 ms; 32 held 0.5 ms, p99 0.44 -> 0.62 ms,
# with the same total time per delta.
DELTA_CHUNK = 32
# Per hold in a load's replay, which no search waits on: a 1M x 64 load over 200
# deltas of 4,000 changes took 17.5-19.1 s in chunks of 1,024 against 20.4-23.2 s
# in chunks of 32 (ScaNN's upsert and our bookkeeping cost less a change in
# larger batches), the rows laid out alike and 200 of 200 answers the same.
REPLAY_CHUNK = 1024
# Room for this share of the catalogue in new candidates, reserved at load (in
# a slot that serves nothing yet): ScaNN grows its storage by copying it, a
# ~200 ms stall at 1M that a live slot's searches would wait on. Reserved
# pages cost memory only once written.
CATALOGUE_HEADROOM = 0.1
# Filters whose passing rows (at most EXACT_MAX_ROWS, ~5 MB of vectors at 64
# dims) are kept for exact search: a selective filter is usually asked again.
SUBSET_CACHE_ENTRIES = 16


def _scann_pybind():
    """ScaNN's pybind searcher module without TensorFlow.

    ``scann/__init__.py`` imports TensorFlow for ScaNN's TF ops, which the index
    service never uses: 530 MB of RSS and ~4 s of start-up per index process
    (measured: 568 MB vs 34 MB after the import). The package is registered
    without running its ``__init__``, then the pybind module (numpy only) is
    imported from it as usual.
    """
    if "scann" not in sys.modules:
        spec = importlib.util.find_spec("scann")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the scann package is not installed")
        package = types.ModuleType("scann")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["scann"] = package
    from scann.scann_ops.py import scann_ops_pybind

    return scann_ops_pybind


def load_searcher(directory: Path):
    """A ScaNN searcher serialized by the trainer (``trainer.export.index.save_searcher``)."""
    # Holds the GIL throughout (~1.6 s at 1M x 64): this is why versions load
    # only into index slots that serve no traffic (see index_service/slot.py).
    return _scann_pybind().load_searcher(str(directory))


@dataclass(frozen=True)
class SearchResult:
    ids: list[str]
    scores: list[float]
    vector: np.ndarray | None = None  # what a similar-candidate search searched with
    # With crowding: each result's tokens of the crowding namespace, for a merge of shards to crowd again.
    crowding: list[tuple[str, ...]] | None = None

    def head(self, k: int) -> "SearchResult":
        """The first ``k`` results."""
        return SearchResult(self.ids[:k], self.scores[:k], self.vector,
                            None if self.crowding is None else self.crowding[:k])


class CandidateIndex:
    """A loaded, verified, self-tested version's ScaNN searcher, its rows and
    attributes, at catalogue generation ``generation``."""

    def __init__(self, manifest: Manifest, rows: Rows, searcher, report: LoadReport,
                 attributes: AttributeColumns | None = None, popular: tuple[list[str], list[float]] = ([], []),
                 shard: tuple[int, int] | None = None):
        self.manifest = manifest
        self.shard = shard  # (this shard, of how many) of a sharded version; None: all of an unsharded one
        self.rows = rows
        self._searcher = searcher
        self.report = report
        # The load's memory per row (ids and searcher) and the most rows held since: ScaNN keeps what deletes free.
        self._row_bytes = report.memory_bytes / max(rows.count, 1)
        self._peak_rows = rows.count
        self.attributes = attributes or AttributeColumns(None, rows.count)
        self.popular_ids, self.popular_scores = popular
        self.catalogue_generation = 0
        self._probes = np.zeros((0, self.dim), np.float32)  # the self-test's queries, kept for re-measures
        self._lock = ReadWriteLock()
        self._changes = 0  # chunks of deltas applied: a cached subset is valid for one value of it
        self._settled = 0  # _changes when catalogue_generation was last set: while they differ, a delta is applying
        self._subsets: cachetools.LRUCache[Filter, tuple[int, np.ndarray, np.ndarray]] = cachetools.LRUCache(
            SUBSET_CACHE_ENTRIES)
        self._subsets_lock = threading.Lock()
        self._report_lock = threading.Lock()  # the applier and a re-measure of recall each replace a field of report

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @property
    def num_candidates(self) -> int:
        return self.rows.count

    def memory_bytes(self) -> int:
        """About the memory this version holds: the load's ids and searcher per row, times the most rows held
        since, and what catalogue deltas added to its rows (``Rows.delta_bytes``)."""
        return round(self._row_bytes * self._peak_rows) + self.rows.delta_bytes()

    def rows_scanned(self, queries: int, f: Filter = NO_FILTER, by_popularity: bool = False,
                     fetch: int = CALIBRATED_K) -> int:
        """About how many candidate rows ``queries`` searches with filter ``f``, each fetching ``fetch`` rows (k and
        its exclusions), read: all of them for brute force, the searched leaves' share for tree-AH plus the exact
        re-scoring (both grow with the fetch: 10,000 exclusions made a 4 ms search of 100k rows read as small);
        every row, per query, under a filter (its mask, an exact search over what passes, crowding's deeper
        fetches) or by popularity (past the popular list, every other row)."""
        spec, n = self.manifest.index, self.rows.count
        if f or by_popularity:
            return queries * n
        if spec.kind == "tree_ah" and spec.num_leaves > 0:
            leaves, depth = self._tree_depths(fetch)
            return queries * (n * leaves // spec.num_leaves + depth)
        return queries * n

    def _tree_depths(self, fetch: int) -> tuple[int, int]:
        """(leaves searched, rows re-scored exactly) of a tree-AH search fetching ``fetch`` rows per query.

        Re-scored as deep per row fetched as for k=10, exclusions included: they are mostly the rows ranked first
        (a customer's own history), so the rows kept sit below them; re-scored only as deep as k, recall@10 fell
        to 0.37 with 300 of the top rows excluded (0.96 without). Leaves: the trained count grown with the square
        root of the fetch over k=10 (rows ranked deeper lie in more leaves: at 200k x 64, 23 of 447 leaves,
        recall@10 past 300 excluded rows was 0.93, 0.997 so grown; bench.exclusions), and at least enough to
        hold the fetch twice over (a tree-AH search sees only its leaves' rows, so a fetch past what they hold
        came back short of k; at a fetch of every row, every leaf)."""
        spec = self.manifest.index
        depth = max(spec.reorder, fetch, math.ceil(spec.reorder * fetch / CALIBRATED_K))
        grown = math.ceil(spec.num_leaves_to_search * math.sqrt(max(1.0, fetch / CALIBRATED_K)))
        holding = math.ceil(2 * spec.num_leaves * fetch / self.rows.count)
        return min(spec.num_leaves, max(spec.num_leaves_to_search, grown, holding)), min(self.rows.count, depth)

    @classmethod
    def load(cls, version_dir: Path, manifest: Manifest, min_recall: float = MIN_RECALL,
             shard: int | None = None, delta_key: Ed25519PublicKey | None = None) -> "CandidateIndex":
        """Loads a verified version's searcher (``shard``'s of a sharded version)
        and self-tests it: recall@10 against exact search over the same
        candidates on the version's probe queries must reach ``min_recall``.
        Then replays the version's catalogue deltas from the registry (a
        shard's upserts of its own candidates; with ``delta_key``, only a log its
        private key signed) and, if there were any, measures recall again over
        the rows it now serves (``remeasure_recall``). Raises VersionError otherwise."""
        start = time.perf_counter()
        version_dir = Path(version_dir)
        whole, manifest = manifest, manifest.shard(shard)
        data_dir = files.shard_dir(version_dir, shard)
        ids = np.load(data_dir / files.CANDIDATE_IDS_FILE, allow_pickle=False)
        if ids.shape != (manifest.num_candidates,):
            raise VersionError(f"version {manifest.version}: {len(ids)} candidate ids but the manifest says "
                               f"{manifest.num_candidates}")
        embeddings = data_dir / files.CANDIDATE_EMBEDDINGS_FILE
        if npy_shape(embeddings) != (len(ids), manifest.embedding_dim):
            raise VersionError(f"version {manifest.version}: candidate embeddings have shape {npy_shape(embeddings)},"
                               f" expected {(len(ids), manifest.embedding_dim)}")
        attributes_path = data_dir / files.ATTRIBUTES_FILE
        attributes = AttributeColumns(Attributes.load(attributes_path, len(ids)) if attributes_path.exists() else None,
                                      len(ids))
        popular = files.read_popular(version_dir, manifest.version)
        scann_dir = data_dir / files.SCANN_DIR
        searcher = load_searcher(scann_dir)
        memory = ids.nbytes + sum(p.stat().st_size for p in scann_dir.iterdir())
        rows = Rows(ids, np.load(embeddings, mmap_mode="r", allow_pickle=False))
        index = cls(manifest, rows, searcher, LoadReport(0.0, memory), attributes, popular,
                    None if shard is None else (shard, len(whole.shards)))
        recall = index._self_test(version_dir, embeddings)
        if recall < min_recall:
            raise VersionError(f"version {manifest.version}: index recall@10 vs exact search is {recall:.3f}, "
                               f"below the required {min_recall}")
        capacity = len(ids) + int(len(ids) * CATALOGUE_HEADROOM)
        searcher.searcher.reserve(capacity)
        rows.reserve(capacity)
        attributes.reserve(capacity)
        replayed = replay(version_dir.parent, manifest.version,  # no rests: nothing searches it yet
                          lambda deltas, generation: index.apply_catalogue(deltas, generation, rest=False), delta_key)
        index.report = LoadReport(time.perf_counter() - start, index.memory_bytes(), recall)
        if replayed:  # the self-test saw the published rows only: report recall over the rows served
            index.remeasure_recall()
        log.info("loaded version %d%s: %d candidates x %d dims, recall@10 %.3f, %d catalogue deltas, in %.2fs",
                 manifest.version, "" if shard is None else f" shard {shard} of {len(whole.shards)}", rows.count,
                 manifest.embedding_dim, index.report.self_test_recall, replayed, index.report.load_seconds)
        return index

    def _self_test(self, version_dir: Path, embeddings: Path, k: int = 10) -> float:
        """recall@k of this searcher vs exact dot-product search on probe queries.
        The exact search reads the embeddings file in blocks (bounded memory)."""
        probes = np.load(version_dir / files.PROBE_QUERIES_FILE, allow_pickle=False)[:SELF_TEST_PROBES]
        if probes.ndim != 2 or probes.shape[1] != self.dim:
            raise VersionError(f"version {self.version}: probe queries have shape {probes.shape}, "
                               f"expected [P, {self.dim}]")
        self._probes = probes
        if len(probes) == 0:
            return 1.0
        k = min(k, self.rows.count)
        exact, _ = exact_top_k(probes, embeddings, k)
        found = self.search(probes, k)
        hits = sum(len(set(self.rows.id_of(row)) & set(result.ids)) for row, result in zip(exact, found))
        return hits / (k * len(probes))

    def remeasure_recall(self) -> float:
        """recall@10 on the self-test's probes against exact search over the
        current rows, catalogue deltas included (``RECHECK_PROBES`` of them), put
        in ``report`` with the catalogue generation it was measured at."""
        generation = self.catalogue_generation
        # One BLAS thread: the exact search (~0.7 s of CPU at 1M x 64) then runs on the calling thread,
        # the slot's idle-priority loader, and takes no core from searches.
        with threadpoolctl.threadpool_limits(1, "blas"):
            recall = self.recall(self._probes[:RECHECK_PROBES], 10) if len(self._probes) else 1.0
        with self._report_lock:
            self.report = replace(self.report, self_test_recall=recall, recall_generation=generation)
        return recall

    def recall(self, queries: np.ndarray, k: int = 10, f: Filter = NO_FILTER) -> float:
        """recall@k of this index's answers (with filter ``f``) vs exact search
        over its current rows (catalogue deltas included) that pass ``f``,
        crowded as ``f`` says."""
        with self._lock.reading():
            subset = np.flatnonzero(self.attributes.mask(f)) if f.selects else None
            database = self.rows if subset is None else self.rows.vectors(subset)
            rows, scores = exact_top_k(queries, database, 10 * k if f.max_per_value else k)
            rows = rows if subset is None else subset[rows]
            truth = [self._keep(r, s, k, frozenset(), f).ids for r, s in zip(rows, scores)]
        found = self.search(queries, k, f=f)
        hits = sum(len(set(t) & set(r.ids)) for t, r in zip(truth, found))
        relevant = sum(len(t) for t in truth)
        return hits / relevant if relevant else 1.0  # nothing passes (say, every candidate deleted): all found

    # --- search --------------------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, exclusions: list[frozenset[str]] | None = None,
               f: Filter = NO_FILTER) -> list[SearchResult]:
        """Top-k candidates for each row of ``queries`` [B, dim], best first,
        passing filter ``f``. Exactly ``min(k, passing - excluded)`` results
        come back; with crowding, fewer when the best ``EXACT_MAX_ROWS`` rows
        cannot fill k."""
        exclusions = exclusions or [frozenset()] * len(queries)
        with self._lock.reading():
            self.attributes.check(f)
            n = self.rows.count
            if n == 0:
                return [SearchResult([], []) for _ in queries]
            share = self.attributes.selectivity(f) if f.selects else 1.0
            if f.selects and share * n <= EXACT_MAX_ROWS:
                return self._exact(queries, k, exclusions, f)
            extra = max((len(e) for e in exclusions), default=0)
            fetch = min(n, math.ceil(k * (OVERFETCH if f else 1.0) / max(share, 1e-9)) + extra)
            # Crowding alone searches the top rows at most (unless a large k's first fetch is deeper): every one of
            # them, not only the last growth step under the bound, which could be a quarter of them.
            deepest = min(n, EXACT_MAX_ROWS + extra) if f and not f.selects else n
            results: list[SearchResult | None] = [None] * len(queries)
            pending = list(range(len(queries)))
            while pending:
                # The estimate was far off: exact is cheaper (and, once the fetch is capped at every row, the only
                # way to find every passing row: tree-AH does not reach them all).
                if f.selects and fetch > EXACT_MAX_ROWS:
                    exact = self._exact(queries[pending], k, [exclusions[i] for i in pending], f)
                    for i, result in zip(pending, exact):
                        results[i] = result
                    break
                rows, scores = self._ann(queries[pending], fetch)
                still = []
                for i, row_ids, row_scores in zip(pending, rows, scores):
                    results[i] = self._keep(row_ids, row_scores, k, exclusions[i], f)
                    if len(results[i].ids) < k and fetch < deepest:
                        still.append(i)
                pending, fetch = still, min(deepest, fetch * FETCH_GROWTH)
            return results

    def _ann(self, queries: np.ndarray, fetch: int) -> tuple[Sequence[np.ndarray], Sequence[np.ndarray]]:
        """ScaNN's top ``fetch`` rows per query (``_tree_depths`` deep for tree-AH), and their scores; fewer for a
        query whose searched leaves held fewer."""
        extra = {}
        if self.manifest.index.kind == "tree_ah":
            leaves, depth = self._tree_depths(fetch)
            extra = {"pre_reorder_num_neighbors": depth, "leaves_to_search": leaves}
        if len(queries) == 1:
            idx, dist = self._searcher.search(queries[0], final_num_neighbors=fetch, **extra)
            return np.asarray(idx)[None], np.asarray(dist)[None]
        idx, dist = (np.asarray(a) for a in self._searcher.search_batched(queries, final_num_neighbors=fetch, **extra))
        # A query whose leaves held fewer rows than the fetch (a region of the catalogue deleted) comes back padded
        # with row 0 at a NaN score, where a single search comes back short: served, the padding was one candidate
        # repeated. Short here too, so the caller fetches deeper as it does for a single search.
        found = ~np.isnan(dist)
        if found.all():
            return idx, dist
        return [i[m] for i, m in zip(idx, found)], [d[m] for d, m in zip(dist, found)]

    def _keep(self, rows: np.ndarray, scores: np.ndarray, k: int, excluded: frozenset[str], f: Filter) -> SearchResult:
        """The first k of ``rows`` (best first) that pass ``f``, are not excluded and fit crowding, each named
        with its tokens of the crowding namespace when ``f`` crowds."""
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores)
        if f.selects:
            keep = self.attributes.passes(rows, f)
            rows, scores = rows[keep], scores[keep]
        if not f.max_per_value:
            ids = self.rows.id_of(rows[:k + len(excluded)])  # the first k not excluded are among these
            if not excluded:
                return SearchResult(ids, scores[:k].tolist())
            kept = list(itertools.islice((j for j, candidate in enumerate(ids) if candidate not in excluded), k))
            return SearchResult([ids[j] for j in kept], scores[kept].tolist())
        if excluded:
            keep = np.array([candidate not in excluded for candidate in self.rows.id_of(rows)], dtype=bool)
            rows, scores = rows[keep], scores[keep]
        taken = self.attributes.crowded(rows, f.crowding_namespace, f.max_per_value, k)
        rows, scores = rows[taken], scores[taken]
        return SearchResult(self.rows.id_of(rows), scores.tolist(),
                            crowding=self.attributes.token_names(rows, f.crowding_namespace))

    def _passing(self, f: Filter) -> tuple[np.ndarray, np.ndarray]:
        """(rows passing ``f``, their vectors), from a small cache when few pass (under the read lock)."""
        with self._subsets_lock:
            cached = self._subsets.get(f)
            if cached is not None and cached[0] == self._changes:
                return cached[1], cached[2]
        subset = np.flatnonzero(self.attributes.mask(f))
        vectors = self.rows.vectors(subset)
        if len(subset) <= EXACT_MAX_ROWS:
            with self._subsets_lock:
                self._subsets[f] = (self._changes, subset, vectors)
        return subset, vectors

    def _exact(self, queries: np.ndarray, k: int, exclusions: list[frozenset[str]], f: Filter) -> list[SearchResult]:
        """Exact search over the rows passing ``f`` (called under the read lock)."""
        subset, vectors = self._passing(f)
        if len(subset) == 0:
            return [SearchResult([], []) for _ in queries]
        results = []
        for query, excluded in zip(np.asarray(queries, dtype=np.float32), exclusions):
            row_scores = vectors @ query
            depth = min(len(subset), 2 * (k + len(excluded)))
            while True:
                top = np.argpartition(-row_scores, depth - 1)[:depth] if depth < len(subset) else \
                    np.arange(len(subset))
                top = top[np.lexsort((subset[top], -row_scores[top]))]
                result = self._keep(subset[top], row_scores[top], k, excluded, f)
                if len(result.ids) >= k or depth == len(subset):
                    break
                depth = min(len(subset), depth * FETCH_GROWTH)
            results.append(result)
        return results

    def similar(self, candidate_id: str, k: int, excluded: frozenset[str] = frozenset(),
                f: Filter = NO_FILTER) -> SearchResult:
        """The k candidates nearest to ``candidate_id``'s own vector (returned
        too), itself excluded; NotFound if this version (with its deltas) does not hold it."""
        with self._lock.reading():
            row = self.rows.row_of(candidate_id)
            if row < 0:
                raise NotFound(f"candidate {candidate_id!r} is not in version {self.version} (catalogue generation "
                               f"{self.catalogue_generation}): pass a candidate id of this version")
            vector = self.rows.vectors(np.array([row]))
        result = self.search(vector, k, [excluded | {candidate_id}], f)[0]
        return replace(result, vector=vector[0])

    def by_popularity(self, k: int, excluded: frozenset[str] = frozenset(), f: Filter = NO_FILTER) -> SearchResult:
        """The version's most popular candidates (its training popularity) passing
        ``f``; past the popular list, the other passing candidates (score 0) in row order."""
        with self._lock.reading():
            self.attributes.check(f)
            rows = self.rows.rows_of(self.popular_ids)
            held = rows >= 0  # a deleted candidate is no longer held
            rows = rows[held]
            scores = np.asarray(self.popular_scores)[held]
            result = self._keep(rows, scores, k, excluded, f)
            if len(result.ids) >= k:
                return result
            rest = np.flatnonzero(self.attributes.mask(f)) if f.selects else np.arange(self.rows.count)
            rest = rest[~np.isin(rest, rows)]
            # One pass over both: crowding counts what the popular ones took.
            return self._keep(np.concatenate([rows, rest]),
                              np.concatenate([scores, np.zeros(len(rest), dtype=np.float32)]), k, excluded, f)

    # --- catalogue deltas ----------------------------------------------------------------------------------------

    def apply_catalogue(self, deltas: list[Delta], generation: int, rest: bool = True) -> None:
        """Applies catalogue deltas in order (upserts, then deletes, of each);
        ``generation`` is the last one's. Takes the write lock per chunk of
        ``DELTA_CHUNK`` candidates and, with ``rest``, rests as long between chunks,
        so searches keep at least half the time (a load's replay, which no search
        waits on, does not, and takes chunks of ``REPLAY_CHUNK``: a load over 5,000
        deltas took 4.0-4.3 s with rests, 3.4 s without). Deleting an id
        the index does not hold is a no-op (a delta can be replayed); a shard
        upserts only its own candidates."""
        raw = self._searcher.searcher
        if self.shard is not None:
            deltas = [delta.of_shard(*self.shard) for delta in deltas]
        for delta in deltas:
            if delta.vectors.shape[1:] != (self.dim,):
                raise VersionError(f"a catalogue delta of version {self.version} has vectors of shape "
                                   f"{delta.vectors.shape}; the version embeds into {self.dim}")
        chunk = DELTA_CHUNK if rest else REPLAY_CHUNK
        with short_gil_slices():  # the Python between ScaNN calls must not hold requests for 5 ms slices
            for delta in deltas:
                tokens = self.attributes.encode(delta.attributes)
                # Each chunk finds its own rows (tens of us for 32 ids), just before the write lock: the
                # applier is the one writer, so reading them outside it is safe. Finding a whole delta's at
                # once took 1-3 ms at 1M (a binary search over a million strings), a GIL hold that neither a
                # rest nor short slices interrupt: searches waited it out twice per delta, enough to set
                # their p99.
                for a in range(0, len(delta.ids), chunk):
                    at = slice(a, a + chunk)
                    self._in_turn(rest, self._upsert, raw, delta, at, self.rows.upsert_rows(delta.ids[at]), tokens)
                for a in range(0, len(delta.deleted), chunk):
                    self._in_turn(rest, self._delete, raw, self.rows.deletion(delta.deleted[a:a + chunk]))
        with self._lock.writing():
            self.catalogue_generation, self._settled = generation, self._changes
        with self._report_lock:
            self.report = replace(self.report, memory_bytes=self.memory_bytes())

    def catalogue_state(self) -> tuple[int, int, bool]:
        """(catalogue generation, chunks of deltas applied, whether no delta is part-applied), read as one: a search
        between two equal readings with nothing part-applied saw exactly that generation's catalogue. Searches run
        between an apply's chunks, so one during an apply sees part of its delta."""
        with self._lock.reading():
            return self.catalogue_generation, self._changes, self._changes == self._settled

    def _in_turn(self, rest: bool, change, *args) -> None:
        started = time.perf_counter()
        with self._lock.writing():
            change(*args)
            self._changes += 1
        if rest:
            time.sleep(time.perf_counter() - started)

    def _upsert(self, raw, delta: Delta, at: slice, rows: np.ndarray, tokens: dict[str, np.ndarray]) -> None:
        docids = [None if row >= self.rows.count else row for row in rows.tolist()]
        raw.upsert(docids, np.ascontiguousarray(delta.vectors[at]), len(docids))
        self.attributes.write(rows, tokens, delta.attributes, at)
        self.rows.write(rows, delta.ids[at], delta.vectors[at])
        self._peak_rows = max(self._peak_rows, self.rows.count)

    def _delete(self, raw, deletion: Deletion) -> None:
        self.attributes.delete(deletion)
        self.rows.delete(deletion)
        raw.delete(deletion.rows)  # ScaNN too moves its last datapoint into each deleted one's place, in order
