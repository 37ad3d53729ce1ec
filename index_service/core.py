"""The index service's core: loaded versions and how a search runs.
Knows nothing of gRPC; the servicer translates protos to these calls."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from index_service.searcher import CandidateIndex, SearchResult
from model_registry import Registry
from serving import validation
from serving.admin import VersionAdmin
from serving.errors import InvalidArgument
from serving.versions import VersionSet

# About 0.1 ms of ScaNN at 64 dims (a 1M tree-AH query scores ~30k rows): less
# than handing the search to a thread and back costs the event loop.
INLINE_MAX_ROWS = 50_000


@dataclass(frozen=True)
class Query:
    """One query of a (batch) search, as received; validated by ``IndexCore``."""

    vector: list[float]
    k: int
    exclusions: tuple[str, ...] = ()


class IndexCore:
    """Loaded candidate indexes and search over them.

    Searches run on ``search_executor`` threads so the event loop keeps serving
    while ScaNN works (ScaNN releases the GIL, so two threads use both cores),
    except small ones (under ``INLINE_MAX_ROWS`` scored rows in all): those take
    less time than the hop to a thread and back, so they run inline. Version
    loads run on their own single thread so a load never queues behind searches
    or blocks them.
    """

    def __init__(self, registry: Registry, search_executor: ThreadPoolExecutor,
                 max_k: int = validation.DEFAULT_MAX_K, min_recall: float = 0.9):
        self.registry = registry
        self.executor = search_executor
        self.max_k = max_k
        self.versions: VersionSet[CandidateIndex] = VersionSet(registry.model)
        self.admin = VersionAdmin(
            "index", registry, self.versions,
            lambda version: CandidateIndex.load(registry.version_dir(version), registry.model, min_recall),
            ThreadPoolExecutor(1, thread_name_prefix="index-loader"))

    async def search(self, queries: list[Query], version: int) -> tuple[int, list[SearchResult]]:
        """Searches every query in one version; returns (version used, results)."""
        if not queries:
            raise InvalidArgument("no queries: send at least one")
        if version < 0:
            raise InvalidArgument(f"model_version={version} is negative: pass 0 for the live version")
        version, index = self.versions.get(version)
        vectors = np.stack([validation.check_vector(q.vector, index.dim, version) for q in queries])
        ks = [validation.check_k(q.k, self.max_k) for q in queries]
        exclusions = [validation.check_exclusions(q.exclusions) for q in queries]
        if len(queries) * index.rows_scanned_per_query <= INLINE_MAX_ROWS:
            results = index.search(vectors, max(ks), exclusions)
        else:
            results = await asyncio.get_running_loop().run_in_executor(
                self.executor, index.search, vectors, max(ks), exclusions)
        return version, [SearchResult(r.ids[:qk], r.scores[:qk]) for r, qk in zip(results, ks)]
