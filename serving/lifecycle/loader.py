"""Loads model versions off the request path (TensorFlow Serving's *loader* role).

Every load runs on the loader's own thread and goes: find the version in the
registry -> verify every file's checksum and the manifest -> the service's
``load`` (read the artifacts, self-test). A version number that is not one is
``InvalidArgument``, an unpublished version ``NotFound``, a refused one
``FailedPrecondition``, each with a message that says what was wrong; other
failures (out of memory) pass through. Nothing is added to the manager by the
loader.

How a load stays out of the way of requests depends on the process:

* ``Background.IDLE`` (index slots: no live traffic shares the process): the
  loader thread runs under SCHED_IDLE (else at nice 19), so a load uses only
  CPU that the processes serving traffic on the machine leave idle.
* ``Background.GIL`` (query replicas: the live version is served by the same
  process): a lower priority would make things worse, since a descheduled
  loader holding the GIL stalls the event loop (measured: 75 ms). Instead the
  interpreter's switch interval drops to 1 ms while a load runs, so the event
  loop waits at most that long for the GIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import gc
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Generic, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from model_registry import Manifest, Registry, VersionError, signing, verify_version
from serving.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")

LOAD_SWITCH_INTERVAL_S = 0.001  # the interpreter's GIL switch interval during a load (Background.GIL)


class Background(enum.Enum):
    IDLE = "idle"
    GIL = "gil"


def _idle_priority() -> None:
    """Puts the calling thread (and the threads it starts) at idle CPU priority."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):  # SCHED_IDLE refused or not Linux: nice 19 (the lowest priority) instead
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 19)
        except OSError as e:  # not fatal: the load just competes at normal priority
            log.warning("could not lower the loader thread's priority: %s", e)


class _ShortSlices:
    """The process's switch interval while any thread is inside ``short_gil_slices``.
    The interval is process-wide, so blocks that overlap on different threads (an
    index replaying a loading version's deltas while it catches the live one up)
    share one setting: the last to leave restores what the first found."""

    lock = threading.Lock()
    users = 0
    previous = 0.0


@contextlib.contextmanager
def short_gil_slices():
    """While in the block, a thread doing Python work hands the GIL to request threads every millisecond, not
    every 5 (the interpreter's default): their latency grows by at most that much."""
    with _ShortSlices.lock:
        if _ShortSlices.users == 0:
            _ShortSlices.previous = sys.getswitchinterval()
            sys.setswitchinterval(LOAD_SWITCH_INTERVAL_S)
        _ShortSlices.users += 1
    try:
        yield
    finally:
        with _ShortSlices.lock:
            _ShortSlices.users -= 1
            if _ShortSlices.users == 0:
                sys.setswitchinterval(_ShortSlices.previous)


class Loader(Generic[T]):
    """Verifies and loads versions of ``registry`` with ``load(version_dir, manifest)``,
    kept in the background as ``background`` says (see the module docstring)."""

    def __init__(self, registry: Registry, load: Callable[[Path, Manifest], T], name: str,
                 background: Background, reads: tuple[str, ...] | None = None,
                 public_key: Ed25519PublicKey | None = None):
        self.registry = registry
        self._load = load
        self._reads = reads  # the version's files this service reads: the ones it checksums
        self.public_key = public_key  # when set, only versions and catalogue deltas signed by its private key load
        self._background = background
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-loader",
                                            initializer=_idle_priority if background is Background.IDLE else None)

    def verify(self, version: int) -> Manifest:
        """Checks that ``version`` is published, intact and of this model (blocking)."""
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        version_dir = self.registry.version_dir(version)
        if not version_dir.is_dir():
            raise NotFound(str(self.registry.unpublished(version)))
        try:
            signed = signing.verify(version_dir, self.public_key) if self.public_key is not None else None
            manifest = verify_version(version_dir, self._reads, signed)
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
            with short_gil_slices() if self._background is Background.GIL else contextlib.nullcontext():
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
        """Runs blocking ``fn(*args)`` (a verify, load or a sequence of them) on the loader thread, in the caller's
        context: the admin call's request id and span reach the lines the load logs (a refusal, a load's figures)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, contextvars.copy_context().run, fn,
                                                                *args)

    @staticmethod
    def released() -> None:
        """After a version is dropped: gives its reference cycles back to the
        collector (one full collection, off the hot path), then freezes again."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
