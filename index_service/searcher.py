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

    def __init__(self, manifest: Manifest, candidate_ids: np.ndarray, searcher, load_seconds: float):
        self.manifest = manifest
        self.candidate_ids = candidate_ids
        self._searcher = searcher
        self.load_seconds = load_seconds

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def dim(self) -> int:
        return self.manifest.embedding_dim

    @classmethod
    def load(cls, version_dir: Path, model: str) -> "CandidateIndex":
        """Verifies checksums and shapes, then loads the searcher.

        Raises VersionError if anything is missing, corrupt or inconsistent.
        """
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
        searcher = scann_ops_pybind.load_searcher(str(version_dir / files.SCANN_DIR))
        index = cls(manifest, ids, searcher, time.perf_counter() - start)
        probe = np.zeros((1, manifest.embedding_dim), np.float32)
        index.search(probe, 1)  # fails here, not on the first request, if dims disagree
        log.info("loaded %s version %d: %d candidates x %d dims in %.2fs",
                 model, manifest.version, len(ids), manifest.embedding_dim, index.load_seconds)
        return index

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
