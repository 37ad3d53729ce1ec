"""The set of model versions a service has loaded, and which one is live.

Requests take a reference to one loaded version (``get``) and use only it, so a
promotion between two steps of a request cannot mix versions. Switching the live
version is a single reference assignment under a lock; a version object stays
usable by requests that hold it even after it is removed from the set.

States follow TensorFlow Serving's lifecycle, adapted to blue-green swaps:
LOADING -> READY -> SERVING (live) -> DRAINING (the previous live version, kept
loaded for an instant rollback) -> unloaded.
"""

from __future__ import annotations

import enum
import threading
from typing import Generic, TypeVar

from serving.errors import FailedPrecondition, Unavailable

T = TypeVar("T")


class State(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    SERVING = "SERVING"
    DRAINING = "DRAINING"


class VersionSet(Generic[T]):
    """Loaded versions keyed by integer version; thread-safe."""

    def __init__(self, model: str):
        self.model = model
        self._lock = threading.Lock()
        self._loaded: dict[int, T] = {}
        self._loading: set[int] = set()
        self._live: int | None = None
        self._previous: int | None = None

    def begin_loading(self, version: int) -> bool:
        """Marks a version as loading; False if it is already loaded or loading."""
        with self._lock:
            if version in self._loaded or version in self._loading:
                return False
            self._loading.add(version)
            return True

    def abandon_loading(self, version: int) -> None:
        with self._lock:
            self._loading.discard(version)

    def add(self, version: int, servable: T, make_live: bool = False) -> None:
        with self._lock:
            self._loading.discard(version)
            self._loaded[version] = servable
            if self._live is None:
                self._live = version
            elif make_live:
                self._switch(version)

    def _switch(self, version: int) -> None:
        if version != self._live:
            self._previous, self._live = self._live, version

    def promote(self, version: int) -> None:
        with self._lock:
            if version not in self._loaded:
                raise FailedPrecondition(f"version {version} of {self.model} is not loaded; load it first")
            self._switch(version)

    def rollback(self) -> int:
        """Makes the previously live version live again; returns it."""
        with self._lock:
            if self._previous is None or self._previous not in self._loaded:
                raise FailedPrecondition(
                    f"no previous version of {self.model} is loaded to roll back to (live: {self._live})")
            self._switch(self._previous)
            return self._live

    def remove(self, version: int) -> T:
        with self._lock:
            if version == self._live:
                raise FailedPrecondition(f"version {version} is live; promote another version before unloading it")
            if version not in self._loaded:
                raise FailedPrecondition(f"version {version} of {self.model} is not loaded")
            if version == self._previous:
                self._previous = None
            return self._loaded.pop(version)

    @property
    def live_version(self) -> int | None:
        return self._live

    def loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._loaded)

    def states(self) -> dict[int, tuple[State, T | None]]:
        """Every loaded or loading version with its state and servable."""
        with self._lock:
            result: dict[int, tuple[State, T | None]] = {v: (State.LOADING, None) for v in self._loading}
            for version, servable in self._loaded.items():
                state = (State.SERVING if version == self._live else
                         State.DRAINING if version == self._previous else State.READY)
                result[version] = (state, servable)
            return dict(sorted(result.items()))

    def get(self, version: int = 0) -> tuple[int, T]:
        """Returns (version, servable); version 0 means the live one."""
        with self._lock:
            if version == 0:
                if self._live is None:
                    raise Unavailable(f"no version of model {self.model} is loaded yet; retry shortly")
                return self._live, self._loaded[self._live]
            servable = self._loaded.get(version)
        if servable is None:
            raise FailedPrecondition(
                f"model {self.model} version {version} is not loaded here (loaded: {self.loaded_versions()}); "
                "the caller's version and this replica's are out of step"
            )
        return version, servable
