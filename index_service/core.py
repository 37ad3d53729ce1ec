"""The index service's core: which versions are loaded and how a search runs.
Knows nothing of gRPC; the servicer translates protos to these calls."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from index_service.searcher import CandidateIndex, SearchResult
from model_registry import Registry, VersionError
from serving import validation
from serving.errors import InvalidArgument
from serving.versions import VersionSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Query:
    """One query of a (batch) search, as received; validated by ``IndexCore``."""

    vector: list[float]
    k: int
    exclusions: tuple[str, ...] = ()


class IndexCore:
    """Loaded candidate indexes and search over them.

    Searches run on ``executor`` threads so the event loop keeps serving while
    ScaNN works; ScaNN releases the GIL, so two threads use both cores.
    """

    def __init__(self, registry: Registry, executor: ThreadPoolExecutor, max_k: int = validation.DEFAULT_MAX_K):
        self.registry = registry
        self.executor = executor
        self.max_k = max_k
        self.versions: VersionSet[CandidateIndex] = VersionSet(registry.model)

    def load(self, version: int, make_live: bool = False) -> CandidateIndex:
        """Loads and verifies a version (blocking). The live version is untouched
        unless ``make_live``; a failed load raises and changes nothing."""
        index = CandidateIndex.load(self.registry.version_dir(version), self.registry.model)
        self.versions.add(version, index, make_live=make_live)
        return index

    def load_current(self) -> int:
        """Loads the registry's current version and makes it live."""
        version = self.registry.current_version()
        if version is None:
            raise VersionError(
                f"no published version of {self.registry.model} under {self.registry.root}; "
                "run recsys-train first"
            )
        self.load(version, make_live=True)
        return version

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
        k = max(ks)
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, index.search, vectors, k, exclusions)
        return version, [SearchResult(r.ids[:qk], r.scores[:qk]) for r, qk in zip(results, ks)]

