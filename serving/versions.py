"""The set of model versions a service has loaded, and which one is live.

Requests take a reference to one loaded version (``get``) and use only it, so a
promotion between two steps of a request cannot mix versions. Switching the live
version is a single reference assignment under a lock; a version object stays
usable by requests that hold it even after it is removed from the set.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from serving.errors import FailedPrecondition, Unavailable

T = TypeVar("T")


class VersionSet(Generic[T]):
    """Loaded versions keyed by integer version; thread-safe."""

    def __init__(self, model: str):
        self.model = model
        self._lock = threading.Lock()
        self._loaded: dict[int, T] = {}
        self._live: int | None = None

    def add(self, version: int, servable: T, make_live: bool = False) -> None:
        with self._lock:
            self._loaded[version] = servable
            if make_live or self._live is None:
                self._live = version

    def promote(self, version: int) -> None:
        with self._lock:
            if version not in self._loaded:
                raise FailedPrecondition(f"version {version} of {self.model} is not loaded; load it first")
            self._live = version

    def remove(self, version: int) -> T:
        with self._lock:
            if version == self._live:
                raise FailedPrecondition(f"version {version} is live; promote another version before unloading it")
            return self._loaded.pop(version)

    @property
    def live_version(self) -> int | None:
        return self._live

    def loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._loaded)

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
