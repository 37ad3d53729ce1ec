"""One model version's candidate index: a ScaNN searcher plus candidate ids.

Thread-safety: ``search`` may be called from several threads at once (ScaNN's
searcher is safe for concurrent searches; everything else here is read-only
after load).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scann import scann_ops_pybind

from model_registry import Manifest, VersionError, verify_version
from model_registry import manifest as files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    ids: list[str]
    scores: list[float]


class CandidateIndex:
    """A loaded, verified version's ScaNN searcher and candidate ids."""

    def __init__(self, manifest: Manifest, candidate_ids: np.ndarray, searcher, memory_bytes: int):
        self.manifest = manifest
        self.candidate_ids = candidate_ids
        self._searcher = searcher
        self.memory_bytes = memory_bytes
        self.self_test_recall = 0.0
        self.load_seconds = 0.0

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def rows_scanned_per_query(self) -> int:
        """About how many candidate rows one query scores: all of them for brute
        force, the searched leaves' share for tree-AH (plus the exact reorder)."""
        spec, n = self.manifest.index, len(self.candidate_ids)
        if spec.kind == "tree_ah" and spec.num_leaves > 0:
            return n * spec.num_leaves_to_search // spec.num_leaves + spec.reorder
        return n

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @classmethod
    def load(cls, version_dir: Path, model: str, min_recall: float = 0.9) -> "CandidateIndex":
        """Verifies checksums and shapes, loads the searcher and self-tests it:
        recall@10 against exact search on the version's probe queries must reach
        ``min_recall``. Raises VersionError otherwise."""
        start = time.perf_counter()
        version_dir = Path(version_dir)
        manifest = verify_version(version_dir)
        if manifest.model != model:
            raise VersionError(f"{version_dir} holds model {manifest.model!r}, not {model!r}")
        ids = np.load(version_dir / files.CANDIDATE_IDS_FILE, allow_pickle=False)
        if ids.shape != (manifest.num_candidates,):
            raise VersionError(
                f"version {manifest.version}: {len(ids)} candidate ids but the manifest says "
                f"{manifest.num_candidates}"
            )
        scann_dir = version_dir / files.SCANN_DIR
        # load_searcher holds the GIL throughout (~1.6 s at 1M x 64): searches on
        # this replica stall that long, which the query service's index deadline
        # (--index-timeout-s, 3 s) absorbs. See docs/BENCHMARKS.md, swap.
        searcher = scann_ops_pybind.load_searcher(str(scann_dir))
        memory = ids.nbytes + sum(p.stat().st_size for p in scann_dir.iterdir())
        index = cls(manifest, ids, searcher, memory)
        index.self_test_recall = index._self_test(version_dir)
        if index.self_test_recall < min_recall:
            raise VersionError(f"version {manifest.version}: index recall@10 vs exact search is "
                               f"{index.self_test_recall:.3f}, below the required {min_recall}")
        index.load_seconds = time.perf_counter() - start
        log.info("loaded %s version %d: %d candidates x %d dims, recall@10 %.3f, in %.2fs", model,
                 manifest.version, len(ids), manifest.embedding_dim, index.self_test_recall, index.load_seconds)
        return index

    def _self_test(self, version_dir: Path, max_probes: int = 100, k: int = 10) -> float:
        """recall@k of this searcher vs exact dot-product search on probe queries."""
        probes = np.load(version_dir / files.PROBE_QUERIES_FILE, allow_pickle=False)[:max_probes]
        if probes.ndim != 2 or probes.shape[1] != self.dim:
            raise VersionError(f"version {self.version}: probe queries have shape {probes.shape}, "
                               f"expected [P, {self.dim}]")
        embeddings = np.load(version_dir / files.CANDIDATE_EMBEDDINGS_FILE, mmap_mode="r")
        if embeddings.shape != (len(self.candidate_ids), self.dim):
            raise VersionError(f"version {self.version}: candidate embeddings have shape {embeddings.shape}, "
                               f"expected {(len(self.candidate_ids), self.dim)}")
        if len(probes) == 0:
            return 1.0
        k = min(k, len(self.candidate_ids))
        found = self.search(probes, k)
        hits = 0
        for start in range(0, len(probes), 16):  # 16 rows of scores at a time bounds memory at 1M candidates
            scores = probes[start:start + 16] @ embeddings.T
            exact = np.argpartition(scores, -k, axis=1)[:, -k:]  # no negated copy of a 16 x N matrix
            for row, result in zip(exact, found[start:start + 16]):
                hits += len(set(self.candidate_ids[row].tolist()) & set(result.ids))
        return hits / (k * len(probes))

    def search(self, queries: np.ndarray, k: int,
               exclusions: list[frozenset[str]] | None = None) -> list[SearchResult]:
        """Top-k candidates for each row of ``queries`` [B, dim], best first.

        Excluded ids are removed after an over-fetch of ``k + len(exclusions)``
        so that exactly ``min(k, N - excluded)`` results come back.
        """
        exclusions = exclusions or [frozenset()] * len(queries)
        n = len(self.candidate_ids)
        fetch = min(n, k + max((len(e) for e in exclusions), default=0))
        spec = self.manifest.index
        extra = {}
        if spec.kind == "tree_ah":
            extra = {"pre_reorder_num_neighbors": max(spec.reorder, fetch),
                     "leaves_to_search": spec.num_leaves_to_search}
        if len(queries) == 1:
            idx, dist = self._searcher.search(queries[0], final_num_neighbors=fetch, **extra)
            idx, dist = idx[None], dist[None]
        else:
            idx, dist = self._searcher.search_batched(queries, final_num_neighbors=fetch, **extra)
        results = []
        for row_idx, row_dist, excluded in zip(idx, dist, exclusions):
            ids = self.candidate_ids[row_idx].tolist()
            scores = row_dist.tolist()
            if excluded:
                kept = [(i, s) for i, s in zip(ids, scores) if i not in excluded]
                ids, scores = [i for i, _ in kept], [s for _, s in kept]
            results.append(SearchResult(ids[:k], scores[:k]))
        return results
