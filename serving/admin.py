"""Admin operations over a service's versions, free of gRPC.

A service is built from TensorFlow Serving's three roles, made once in its
``create_server``: a *source* (``serving.sources``: which versions it should
hold at start), a *loader* (``serving.loader``: verify, load, self-test off the
request path) and a *manager* (``serving.versions``: the loaded versions and
the live one). ``VersionAdmin`` is what the admin plane calls on top of them;
each service subclasses it with its own meaning of load / promote / rollback
(an index slot replaces what it holds; a query replica switches routing).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Generic, Protocol, TypeVar

from model_registry import Manifest
from serving.loader import Loader
from serving.versions import State, VersionManager

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What a load measured: its time, the memory the version holds and, for
    an index, its recall@10 against exact search (None where none is measured)."""

    load_seconds: float
    memory_bytes: int
    self_test_recall: float | None = None


class Servable(Protocol):
    """What the admin plane reads of a loaded version."""

    manifest: Manifest
    report: LoadReport


S = TypeVar("S", bound=Servable)


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    version: int
    state: State
    num_candidates: int = 0
    embedding_dim: int = 0
    report: LoadReport | None = None


@dataclasses.dataclass(frozen=True)
class StatusReport:
    model: str
    service: str  # "index" or "query"
    live_version: int  # 0: none
    versions: list[VersionInfo]
    slot: str = ""  # index slots only


class VersionAdmin(Generic[S]):
    """The admin operations of one service over its manager and loader.
    Subclasses define ``load``, ``promote``, ``rollback`` and ``unload``."""

    service = "base"
    slot = ""  # an index slot's name

    def __init__(self, manager: VersionManager[S], loader: Loader[S]):
        self.manager = manager
        self.loader = loader

    def _drop(self, version: int, allow_live: bool = False) -> None:
        """Takes a version out of the manager and frees it (blocking: a full GC)."""
        self.manager.remove(version, allow_live=allow_live)
        Loader.released()
        log.info("%s: unloaded %s version %d", self.service, self.manager.model, version)

    def _load_into_manager(self, version: int, make_live: bool = False, manifest: Manifest | None = None) -> None:
        """Loads ``version`` unless it is loaded or loading (blocking); ``manifest``:
        the version was just verified."""
        if not self.manager.begin_loading(version):
            return
        try:
            servable = self.loader.load(version, manifest)
        except BaseException:
            self.manager.abandon_loading(version)
            raise
        self.manager.add(version, servable, make_live=make_live)

    def status(self) -> StatusReport:
        infos = []
        for version, (state, servable) in self.manager.states().items():
            if servable is None:
                infos.append(VersionInfo(version, state))
            else:
                m = servable.manifest
                infos.append(VersionInfo(version, state, m.num_candidates, m.embedding_dim, servable.report))
        return StatusReport(self.manager.model, self.service, self.manager.live_version or 0, infos, self.slot)
