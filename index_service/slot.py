"""An index slot: one index process, holding at most one version.

Blue-green at the index tier: a version is loaded only into a slot that
serves no live traffic, never beside the live version in the process answering
its searches (ScaNN's load holds the GIL for seconds at 1M candidates, and
every search in that process would wait). Which version a slot holds is its
state, recorded durably in the registry (``slots/<slot>``) so a restarted slot
process reloads it by itself. A slot that starts with no record while other
slots have records says so in a warning: ``--slot`` may be mistyped.

Loading replaces what the slot holds: verify the new version (checksums,
manifest) -> record it as loading, with the old one as what the slot holds ->
unload the old one -> load and self-test the new one -> record it as held; if
that is refused, the old one is loaded back and recorded again. A record that
cannot be written refuses the load before anything changes. A slot killed while
it loads (a memory cgroup's OOM kill) restarts on the version it held before,
never on the one it died loading, and a version its record names that cannot be
loaded at start (out of memory, a corrupt file) leaves it empty: each says so in
a warning (one asked for by --version stops the start, as before). A load that
runs out of memory is refused as RESOURCE_EXHAUSTED. The slot
refuses a load while it answers searches (any search within
``busy_window_s``): that is the live slot, and the rollout tool
(``recsys-publish``) picks an idle one. Promotion is not the slot's business:
the query replicas switch routing.

Catalogue deltas move recall (ScaNN's partitions were trained on the
published candidates), so once a stream of deltas pauses the slot measures
recall@10 again, on the loader thread at idle priority, and its status and
/metrics report it with the generation it was measured at.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import difflib
import errno
import logging
import time
from typing import Callable

from index_service.searcher import CandidateIndex
from model_registry import Registry, VersionError
from model_registry.registry import SlotRecord
from model_registry.search import MIN_RECALL
from serving.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from serving.lifecycle.admin import StatusReport, VersionAdmin
from serving.lifecycle.loader import Loader
from serving.lifecycle.sources import StartupVersions
from serving.lifecycle.versions import VersionManager

log = logging.getLogger(__name__)

# Recall is measured again once catalogue deltas have paused this long, or this
# long after the first delta waiting for it (a stream that never pauses).
RECALL_SETTLE_S = 2.0
RECALL_MAX_WAIT_S = 60.0


class SlotAdmin(VersionAdmin[CandidateIndex]):
    """Admin operations of an index slot (see the module docstring)."""

    service = "index"

    def __init__(self, slot: str, registry: Registry, manager: VersionManager[CandidateIndex],
                 loader: Loader[CandidateIndex], last_search: Callable[[], float], busy_window_s: float,
                 min_recall: float = MIN_RECALL):
        super().__init__(manager, loader)
        self.slot = slot
        self.registry = registry
        self._last_search = last_search
        self.busy_window_s = busy_window_s
        self.min_recall = min_recall  # what a load requires; a re-measure below it is logged as a warning
        self._delta_at: dict[int, float] = {}  # version -> when it last took deltas (loop time)
        # version -> the loaded index whose re-measure of recall is pending, and its task
        self._rechecks: dict[int, tuple[CandidateIndex, asyncio.Task]] = {}

    def status(self) -> StatusReport:
        report = super().status()
        live = self.manager.states().get(self.manager.live_version or 0, (None, None))[1]
        return dataclasses.replace(report, shard=live.shard) if live is not None and live.shard else report

    def after_catalogue(self, version: int, servable: CandidateIndex) -> None:
        loop = asyncio.get_running_loop()
        self._delta_at[version] = loop.time()
        pending = self._rechecks.get(version)
        if pending is None or pending[0] is not servable:  # a pending one for a copy unloaded since ends by itself
            self._rechecks[version] = (servable, loop.create_task(self._recheck_recall(version, servable)))

    async def _recheck_recall(self, version: int, index: CandidateIndex) -> None:
        loop = asyncio.get_running_loop()
        first = loop.time()
        try:
            while loop.time() - self._delta_at[version] < RECALL_SETTLE_S and loop.time() - first < RECALL_MAX_WAIT_S:
                await asyncio.sleep(RECALL_SETTLE_S / 4)
            if not self._holds(version, index):
                return  # unloaded (or replaced) meanwhile
            measured = loop.time()
            try:
                recall = await self.loader.run(index.remeasure_recall)
            except Exception as e:  # noqa: BLE001 - a health figure: the slot serves on; the next delta retries
                log.warning("version %d: recall could not be measured again after catalogue deltas: %s", version, e)
                return
            low = recall < self.min_recall
            log.log(logging.WARNING if low else logging.INFO,
                    "version %d at catalogue generation %d: recall@10 %.3f (at publish %.3f)%s", version,
                    index.report.recall_generation, recall, index.manifest.index.recall_at_10,
                    f", below the {self.min_recall} a load requires: retrain or republish to rebuild the index"
                    if low else "")
        finally:
            if self._rechecks.get(version, (None,))[0] is index:
                del self._rechecks[version]
        if self._delta_at[version] > measured and self._holds(version, index):  # deltas came while it measured
            self.after_catalogue(version, index)  # once more, after them

    def _holds(self, version: int, index: CandidateIndex) -> bool:
        return self.manager.states().get(version, (None, None))[1] is index

    def start(self, startup: StartupVersions) -> None:
        """Loads what the slot should hold at start (blocking; nothing is served yet); one it cannot load leaves
        it empty. Warns when the slot has no record while other slots have (``_warn_unrecorded``), and when its
        last load did not finish (it starts on what it held before)."""
        try:
            record = self.registry.slot_record(self.slot)
        except VersionError:  # a broken record that --version overrides: written again
            record = None
        if record is not None and record.loading not in (None, startup.live) and record.holds == startup.live:
            log.warning("slot %s: its last load, of version %d, did not finish: the process died while loading it "
                        "(out of memory? a memory cgroup's OOM kill is a SIGKILL, which the kernel logs, not this "
                        "process); it starts on %s, which it held before", self.slot, record.loading,
                        "no version" if record.holds is None else f"version {record.holds}")
        elif not self.registry.slot_file(self.slot).exists():
            self._warn_unrecorded(startup.live)
        if startup.live is not None:
            try:
                self._load_into_manager(startup.live, make_live=True)
            except Exception as e:  # noqa: BLE001 - up and empty, it takes loads; a traceback restarts into the same
                if record is None or record.holds != startup.live:
                    raise  # --version N, which its record does not name: the operator asked for it, and hears why
                log.warning("slot %s: version %d could not be loaded at start (%s); it starts empty, its record "
                            "unchanged (a restart tries it again). recsys-publish loads a version into it",
                            self.slot, startup.live, _why(e))
                return
        if record != SlotRecord(startup.live):
            # A restart reloads what the record names: a read-only slots folder then costs nothing.
            try:
                self._record(startup.live, None)
            except FailedPrecondition as e:
                if record is None or record.holds != startup.live:
                    raise  # --version: a restart must come back on it
                log.warning("slot %s: its record %s could not be written (%s): it still says a load of version %d "
                            "is pending, and a restart comes back on what it holds again", self.slot,
                            self.registry.slot_file(self.slot), e.__cause__, record.loading)

    def _warn_unrecorded(self, starting: int | None) -> None:
        """One warning when other slots have records and this one has none: a mistyped ``--slot`` starts a
        slot beside the one meant, whose stale record then keeps its version from ever being pruned."""
        folder = self.registry.slot_file(self.slot).parent
        others = {}
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if entry.name.startswith("."):  # a record write's temporary file
                continue
            try:
                others[entry.name] = f"version {self.registry.slot_version(entry.name)}"
            except (VersionError, ValueError) as e:  # a broken record, or no slot's: still worth seeing
                others[entry.name] = f"unreadable: {e}"
        if not others:
            return  # the registry's first slot
        close = difflib.get_close_matches(self.slot, others, n=1)
        log.warning(
            "slot %r has no record in %s, which holds records of slots %s; it starts %s. If --slot %s is a typo%s, "
            "restart it with the name meant; a new slot, or one emptied (that removes its record), needs nothing. "
            "A record of a slot no longer run keeps its version from being pruned: remove its file",
            self.slot, folder, ", ".join(f"{name} ({held})" for name, held in others.items()),
            "empty" if starting is None else f"on version {starting} (--version)", self.slot,
            f" (--slot {close[0]}?)" if close else "")

    def _check_idle(self, held: int) -> None:
        last = self._last_search()  # before the clock: a search the event loop records meanwhile is not "-0.1 s ago"
        idle_s = time.monotonic() - last
        if idle_s < self.busy_window_s:
            raise FailedPrecondition(
                f"slot {self.slot!r} answered a search for version {held} {idle_s:.1f} s ago: it serves traffic. "
                f"A version loads only into an idle slot (none for {self.busy_window_s:g} s); recsys-publish "
                "picks one")

    async def load(self, version: int) -> StatusReport:
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        await self.loader.run(self._replace, version)
        return self.status()

    def _replace(self, version: int) -> None:
        held = self.manager.live_version
        if held == version:
            return
        if held is not None:
            self._check_idle(held)
        manifest = self.loader.verify(version)  # a corrupt version is refused before anything changes
        # Recorded before the swap: a record written after it could fail with the new version already in memory,
        # its rollback target gone from the slot, and a restart bringing back what the record still named. As a
        # load that a restart does not take up (a process killed loading a version too big for its memory would
        # die again at every start): it comes back on ``held`` until the record names ``version`` as held, and a
        # record that cannot say so refuses the load as a failed one.
        self._record(version, held, loading=True)
        if held is not None:
            self._drop(held, allow_live=True)
        try:
            self._load_into_manager(version, make_live=True, manifest=manifest)
            try:
                self.registry.set_slot_loading(self.slot, None)  # done: the record already names it
            except OSError as e:
                raise self._unwritable(e, held) from e
        except BaseException as failure:
            if self.manager.live_version == version:  # its record could not be written: a restart would drop it
                self._drop(version, allow_live=True)
            restored = held
            if held is not None:
                log.warning("slot %s: version %d refused; loading back version %d", self.slot, version, held)
                try:
                    self._load_into_manager(held, make_live=True)
                except Exception as e:  # noqa: BLE001 - the refusal is what the caller must hear
                    log.error("slot %s: could not load version %d back: %s", self.slot, held, e)
                    restored = None
            try:
                self.registry.set_slot_version(self.slot, restored)
                self.registry.set_slot_loading(self.slot, None)
            except OSError as e:  # the refusal is what the caller must hear
                log.error("slot %s: its record %s still says it loads version %d, and could not be written: %s; a "
                          "restart comes back on %s", self.slot, self.registry.slot_file(self.slot), version, e,
                          f"version {held}" if held is not None else "no version")
            if _out_of_memory(failure):
                raise ResourceExhausted(
                    f"slot {self.slot!r} ran out of memory loading version {version} ({_why(failure)}); it "
                    f"{f'kept version {held}' if restored is not None else 'holds no version'}: give the slot "
                    "more memory, or publish a smaller version") from failure
            raise
        log.info("slot %s holds version %d", self.slot, version)

    def _record(self, version: int | None, held: int | None, loading: bool = False) -> None:
        """Records that the slot holds ``version`` (None: none) before it changes
        what it holds (``held``), or with ``loading`` that it loads ``version``
        and holds ``held`` until that is done; a record that cannot be written
        refuses the change."""
        try:
            if loading:  # the intent first: a slot killed between the two writes restarts on ``held``
                self.registry.set_slot_loading(self.slot, version, held)
                self.registry.set_slot_version(self.slot, version)
            else:
                self.registry.set_slot_version(self.slot, version)
                self.registry.set_slot_loading(self.slot, None)
        except OSError as e:
            # A write can fail after its rename (its directory's fsync). A load's or an unload's record named ``held``
            # before: it is put back, and the intent goes once the record names ``held`` (left, it restarts the slot
            # on ``held``). A start's record (``held`` None) is left as it is.
            if loading or held is not None:
                with contextlib.suppress(OSError):
                    self.registry.set_slot_version(self.slot, held)
            if loading:
                with contextlib.suppress(OSError, VersionError):
                    if self.registry.slot_named(self.slot) == held:
                        self.registry.set_slot_loading(self.slot, None)
            raise self._unwritable(e, held) from e

    def _unwritable(self, error: OSError, held: int | None) -> FailedPrecondition:
        """The refusal of a change whose record could not be written: the slot holds ``held``."""
        path = self.registry.slot_file(self.slot)
        fix = f"free space on {path.parent}'s file system" if error.errno == errno.ENOSPC else \
            f"make {path.parent} writable"
        return FailedPrecondition(
            f"slot {self.slot!r} cannot write its record {path}: {error.strerror or error}; nothing changed, it "
            f"still holds {f'version {held}' if held is not None else 'no version'}: {fix}, then retry")

    async def unload(self, version: int) -> StatusReport:
        if version < 1:
            raise InvalidArgument(f"version={version}: versions are positive integers")
        await self.loader.run(self._empty, version)
        return self.status()

    def _empty(self, version: int) -> None:
        if self.manager.live_version != version:
            raise FailedPrecondition(f"slot {self.slot!r} does not hold version {version} "
                                     f"(it holds {self.manager.live_version or 'none'})")
        self._check_idle(version)
        self._record(None, version)  # first, as a load does: a slot whose record stays keeps what it names
        self._drop(version, allow_live=True)

    async def promote(self, version: int) -> StatusReport:
        raise FailedPrecondition("index slots have no live version: promotion is a routing switch on the query "
                                 "replicas (recsys-publish does it)")

    async def rollback(self) -> StatusReport:
        raise FailedPrecondition("index slots have no live version: a rollback is a routing switch on the query "
                                 "replicas (recsys-publish --rollback)")


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out (MemoryError: C++'s std::bad_alloc under ``ulimit -v`` too; ENOMEM:
    an mmap refused)."""
    return isinstance(error, MemoryError) or isinstance(error, OSError) and error.errno == errno.ENOMEM


def _why(error: BaseException) -> str:
    """A load's failure in words, saying so when memory ran out."""
    return f"out of memory: {type(error).__name__}: {error}" if _out_of_memory(error) else str(error)
