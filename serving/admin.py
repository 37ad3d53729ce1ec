"""Admin operations over a service's loaded versions: load (off the request
path), promote, rollback, unload, status. Shared by both services; free of gRPC.

A load that fails verification or self-test raises FailedPrecondition with the
reason and leaves the set of loaded versions, and the live one, untouched.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Generic, Protocol, TypeVar

from model_registry import Manifest, Registry, VersionError
from serving.errors import FailedPrecondition, InvalidArgument, NotFound
from serving.versions import State, VersionSet

log = logging.getLogger(__name__)


class Servable(Protocol):
    """What the admin plane reads of a loaded version."""

    manifest: Manifest
    load_seconds: float
    memory_bytes: int
    self_test_recall: float


S = TypeVar("S", bound=Servable)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    state: State
    num_candidates: int = 0
    embedding_dim: int = 0
    self_test_recall: float = 0.0
    memory_bytes: int = 0
    load_seconds: float = 0.0


@dataclass(frozen=True)
class StatusReport:
    model: str
    service: str
    live_version: int
    versions: list[VersionInfo]


class VersionAdmin(Generic[S]):
    """Admin operations for one service. ``load_servable(version_dir)`` does the
    expensive, blocking load and self-test; it runs on ``executor``."""

    def __init__(self, service: str, registry: Registry, versions: VersionSet[S],
                 load_servable: Callable[[int], S], executor: ThreadPoolExecutor):
        self.service = service
        self.registry = registry
        self.versions = versions
        self._load_servable = load_servable
        self._executor = executor

    def _load_blocking(self, version: int, make_live: bool) -> None:
        if not self.versions.begin_loading(version):
            if make_live:
                self.versions.promote(version)
            return
        try:
            if not self.registry.version_dir(version).is_dir():
                raise NotFound(f"version {version} of {self.registry.model} is not published under "
                               f"{self.registry.model_dir} (published: {self.registry.versions()})")
            servable = self._load_servable(version)
        except VersionError as e:
            self.versions.abandon_loading(version)
            log.error("refused %s version %d: %s", self.registry.model, version, e)
            raise FailedPrecondition(f"version {version} refused: {e}") from e
        except BaseException:
            self.versions.abandon_loading(version)
            raise
        self.versions.add(version, servable, make_live=make_live)
        # A loaded TensorFlow tower is hundreds of thousands of Python objects; a
        # full (generation 2) collection then walks all of them, stalling every
        # request for ~200 ms (measured in the query service under load). Loaded
        # versions live until unloaded, so they leave the collector's view here.
        gc.freeze()

    async def load(self, version: int) -> StatusReport:
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_blocking, version, False)
        return self.status()

    def load_at_start(self) -> int:
        """Loads the registry's current version (live) and the published version
        before it (for rollback; best effort). Blocking; returns the live version."""
        current = self.registry.current_version()
        if current is None:
            raise VersionError(f"no published version of {self.registry.model} under {self.registry.root}; "
                               "run recsys-train first")
        self._load_blocking(current, make_live=True)
        older = [v for v in self.registry.versions() if v < current]
        if older:
            try:
                self._load_blocking(older[-1], make_live=False)
                self.versions.promote(older[-1])
                self.versions.promote(current)  # makes older[-1] the rollback target
            except (FailedPrecondition, NotFound) as e:
                log.warning("previous version %d not kept for rollback: %s", older[-1], e)
        return current

    def promote(self, version: int) -> StatusReport:
        self.versions.promote(version)
        log.info("%s: promoted %s version %d", self.service, self.registry.model, version)
        return self.status()

    def rollback(self) -> StatusReport:
        version = self.versions.rollback()
        log.info("%s: rolled back %s to version %d", self.service, self.registry.model, version)
        return self.status()

    def unload(self, version: int) -> StatusReport:
        self.versions.remove(version)
        # Give the unloaded version's reference cycles back to the collector (one
        # full collection, off the hot path: unloads follow a drain), then freeze again.
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        log.info("%s: unloaded %s version %d", self.service, self.registry.model, version)
        return self.status()

    def status(self) -> StatusReport:
        infos = []
        for version, (state, servable) in self.versions.states().items():
            if servable is None:
                infos.append(VersionInfo(version, state))
                continue
            m = servable.manifest
            infos.append(VersionInfo(version, state, m.num_candidates, m.embedding_dim,
                                     servable.self_test_recall, servable.memory_bytes, servable.load_seconds))
        return StatusReport(self.registry.model, self.service, self.versions.live_version or 0, infos)
