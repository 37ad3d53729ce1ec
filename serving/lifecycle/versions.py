"""The versions a service holds and which one is live (TensorFlow Serving's
*manager* role).

Requests take a handle to one loaded version (``get``) and use only it, so a
promotion between two steps of a request cannot mix versions; a servable
stays usable by requests holding it after it leaves the manager. Switching the
live version is one reference assignment under a lock.

States: LOADING -> READY -> SERVING (live) -> ROLLBACK_TARGET (the version live
before, kept loaded so a rollback is a switch) -> unloaded. Listeners hear of
every change (the index's status stream, the query service's health).
"""

from __future__ import annotations

import enum
import threading
from typing import Callable, Generic, TypeVar

from serving.errors import FailedPrecondition, Unavailable

T = TypeVar("T")


class State(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    SERVING = "SERVING"
    ROLLBACK_TARGET = "ROLLBACK_TARGET"


class VersionManager(Generic[T]):
    """Loaded versions keyed by integer version; thread-safe."""

    def __init__(self, model: str):
        self.model = model
        self._lock = threading.Lock()
        self._loaded: dict[int, T] = {}
        self._loading: set[int] = set()
        self._live: int | None = None
        self._rollback_target: int | None = None
        self._listeners: list[Callable[[], None]] = []

    def listen(self, callback: Callable[[], None]) -> None:
        """Calls ``callback()`` after every change, from the thread that made it."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    def announce(self) -> None:
        """Tells the listeners that a loaded version changed in place (a catalogue delta)."""
        self._changed()

    def begin_loading(self, version: int) -> bool:
        """Marks a version as loading; False if it is already loaded or loading."""
        with self._lock:
            if version in self._loaded or version in self._loading:
                return False
            self._loading.add(version)
        self._changed()
        return True

    def abandon_loading(self, version: int) -> None:
        with self._lock:
            self._loading.discard(version)
        self._changed()

    def add(self, version: int, servable: T, make_live: bool = False) -> None:
        """Adds a loaded version (READY); it becomes live if asked or if none is."""
        with self._lock:
            self._loading.discard(version)
            self._loaded[version] = servable
            if self._live is None or make_live:
                self._switch(version)
        self._changed()

    def _switch(self, version: int) -> None:
        if version != self._live:
            self._rollback_target, self._live = self._live, version

    def promote(self, version: int) -> None:
        """Makes a loaded version live; the live one becomes the rollback target."""
        with self._lock:
            if version not in self._loaded:
                raise FailedPrecondition(f"version {version} of {self.model} is not loaded; load it first")
            self._switch(version)
        self._changed()

    def remove(self, version: int, allow_live: bool = False) -> T:
        """Takes a version out; the live one only with ``allow_live`` (an index
        slot replacing what it holds)."""
        with self._lock:
            if version not in self._loaded:
                raise FailedPrecondition(f"version {version} of {self.model} is not loaded")
            if version == self._live:
                if not allow_live:
                    raise FailedPrecondition(
                        f"version {version} is live; promote another version before unloading it")
                self._live = None
            if version == self._rollback_target:
                self._rollback_target = None
            servable = self._loaded.pop(version)
        self._changed()
        return servable

    @property
    def live_version(self) -> int | None:
        return self._live

    @property
    def rollback_target(self) -> int | None:
        with self._lock:
            return self._rollback_target if self._rollback_target in self._loaded else None

    def loaded_versions(self) -> list[int]:
        with self._lock:
            return sorted(self._loaded)

    def states(self) -> dict[int, tuple[State, T | None]]:
        """Every loaded or loading version with its state and servable."""
        with self._lock:
            result: dict[int, tuple[State, T | None]] = {v: (State.LOADING, None) for v in self._loading}
            for version, servable in self._loaded.items():
                state = (State.SERVING if version == self._live else
                         State.ROLLBACK_TARGET if version == self._rollback_target else State.READY)
                result[version] = (state, servable)
            return dict(sorted(result.items()))

    def get(self, version: int = 0) -> tuple[int, T]:
        """Returns (version, servable); version 0 means the live one."""
        with self._lock:
            if version == 0:
                if self._live is None:
                    raise Unavailable(f"no version of model {self.model} is loaded here yet; retry shortly")
                return self._live, self._loaded[self._live]
            servable = self._loaded.get(version)
        if servable is None:
            raise FailedPrecondition(
                f"model {self.model} version {version} is not loaded here (loaded: {self.loaded_versions()}); "
                "the caller's version and this replica's are out of step"
            )
        return version, servable
