"""Loads model versions off the request path (TensorFlow Serving's *loader* role).

Every load runs on the loader's own thread, at a lower CPU priority than the
threads answering requests, and goes: find the version in the registry ->
verify every file's checksum and the manifest -> the service's ``load``
(read the artifacts, self-test). Any refusal is a ``FailedPrecondition`` whose
message says what was wrong; nothing is added to the manager by the loader.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Generic, TypeVar

from model_registry import Manifest, Registry, VersionError, verify_version
from serving.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

# Added to the loader thread's nice value: a load (seconds of CPU at 1M
# candidates) yields the cores to the threads answering requests.
LOADER_NICENESS = 10


def _lower_priority() -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOADER_NICENESS)
    except OSError as e:  # not fatal: the load just competes at normal priority
        log.warning("could not lower the loader thread's priority: %s", e)


class Loader(Generic[T]):
    """Verifies and loads versions of ``registry`` with ``load(version_dir, manifest)``."""

    def __init__(self, registry: Registry, load: Callable[[Path, Manifest], T], name: str):
        self.registry = registry
        self._load = load
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-loader", initializer=_lower_priority)

    def verify(self, version: int) -> Manifest:
        """Checks that ``version`` is published, intact and of this model (blocking)."""
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        version_dir = self.registry.version_dir(version)
        if not version_dir.is_dir():
            raise NotFound(f"version {version} of {self.registry.model} is not published under "
                           f"{self.registry.model_dir} (published: {self.registry.versions()})")
        try:
            manifest = verify_version(version_dir)
            if manifest.model != self.registry.model:
                raise VersionError(f"{version_dir} holds model {manifest.model!r}, not {self.registry.model!r}")
            if manifest.version != version:
                raise VersionError(f"{version_dir} holds version {manifest.version} by its manifest")
        except VersionError as e:
            log.error("refused %s version %d: %s", self.registry.model, version, e)
            raise FailedPrecondition(f"version {version} refused: {e}") from e
        return manifest

    def load(self, version: int, manifest: Manifest | None = None) -> T:
        """Verifies (unless ``manifest`` comes from a ``verify`` just made) and loads (blocking)."""
        manifest = manifest or self.verify(version)
        try:
            servable = self._load(self.registry.version_dir(version), manifest)
        except VersionError as e:
            log.error("refused %s version %d: %s", self.registry.model, version, e)
            raise FailedPrecondition(f"version {version} refused: {e}") from e
        # A loaded TensorFlow tower is hundreds of thousands of Python objects; a
        # full (generation 2) collection then walks all of them, stalling every
        # request for ~200 ms (measured in the query service under load). Loaded
        # versions live until unloaded, so they leave the collector's view here.
        gc.freeze()
        return servable

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Runs blocking ``fn(*args)`` (a verify, load or a sequence of them) on the loader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def released() -> None:
        """After a version is dropped: gives its reference cycles back to the
        collector (one full collection, off the hot path), then freezes again."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
