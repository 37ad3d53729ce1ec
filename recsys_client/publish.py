"""recsys-publish: roll a model version out across the index slots and the
query replicas, or roll back. The one writer of the registry's CURRENT.

    recsys-publish --registry DIR --model NAME [--version V] \\
        --index-admin HOST:PORT,HOST:PORT[,...] --query-admin HOST:PORT[,...]
    recsys-publish --rollback --registry DIR --model NAME --index-admin ... --query-admin ...
    recsys-publish --initial --registry DIR --model NAME --index-admin ...   # first rollout

Rollout of version V (default: the newest published):
  1. Every index slot and query replica reports what it holds; the query
     replicas agree on the live version L (none at the first rollout). Where
     they disagree (a run killed between two promotes, a replica restarted
     before CURRENT moved), the run brings every one to V, each one's undo
     going back to its own live version, and L is the version most of them
     served, CURRENT's where that is tied (it becomes PREVIOUS).
  2. Unless a slot already holds V, an idle slot is picked: one not holding L
     (an empty one first, else the one holding the oldest other version). Each
     of its replicas verifies V (checksums, dimensions), unloads what it held,
     loads V and self-tests its recall, and records V as its content. Traffic
     for L never reaches that slot, so no live request waits on the load.
  3. Every query replica loads V's tower.
  4. Every query replica promotes V: a routing switch, its searches for V go
     to V's slot. L stays loaded, tower and slot, as the rollback target.
  5. CURRENT points at V (PREVIOUS at L); towers that are neither live nor the
     rollback target are unloaded.
A refusal before step 4 undoes the rollout (the towers it loaded are unloaded,
the slot gets its previous version back once the towers' warm-up searches are
past its --busy-window-s) and leaves CURRENT as it was.

Rollback: every query replica promotes its rollback target (they must agree,
and on the live version: a refusal names the rollout that brings them in
step), a routing switch; then CURRENT and PREVIOUS swap. No index load is
involved. Right after another rollback, a rollback is refused: it would roll
forward; the refusal names the rollout (--version N) that does that.

A run cut off after switching the query replicas, before moving CURRENT (or
while moving it: CURRENT and PREVIOUS move as one, so a cut move reads as not
made), is finished by the next one: a rollout or rollback first points CURRENT
at the version the replicas serve; a rollback run again stops there, and so
does a rollout of the version already live, once it has unloaded the stale
towers.

One run per model at a time: a run holds an exclusive lock on the model's
``.publish.lock`` in the registry while it works (the kernel drops it when the
run's process ends, killed or not); a second run is refused at once, naming
the holder. A recsys-catalogue run (a delta, seconds) holds the same lock: a
run waits up to --lock-wait-s for it to end. Every index slot and query
replica must report the ``--model`` and the role (index or query) of the flag
it was given in, or nothing changes. Every query replica must be given: one
left out keeps routing to its own live version, whose slot a rollout may
replace. Each query replica process watches every index endpoint it is given
through a status stream, and each index process counts those it serves
(``status_watchers``): before loading a slot that holds a version, a run
refuses, nothing changed, when one of the slot's replicas has more watchers
than there are query replica processes given (--allow-unlisted-watchers
overrides: a debugging client watching, say). An index slot also refuses the
load while it answers searches, and that refusal names a replica missing from
--query-admin as the likely cause.
SIGINT or SIGTERM undoes what the run changed, as a refusal does.

``--initial`` is the first rollout of a registry, before any query replica
can run (they refuse to start without CURRENT): steps 1, 2 and 5 only. With
CURRENT already set it does nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from model_registry import Registry, VersionError
from model_registry.durable import replace_file
from model_registry.manifest import is_version
from model_registry.deltas import published_generation
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import versions_pb2
from recsys_client.fleet import (ROLLBACK_TARGET, SERVING, Fleet, FleetConfig, PublishError, check_fleet,
                                 versions_in)
from recsys_client import interrupts
from recsys_client.interrupts import Interrupted, stop_on_signals
from recsys_client.rollout_lock import exclusive
from recsys_client.slots import load_into_slot, pick_idle_slot, slots
from recsys_client.undo import Undo, run_undo
from serving.telemetry.observability import text_handler
from settings.flags import add_flags, option, parse, require

log = logging.getLogger("recsys-publish")
# In the model's registry directory (as is rollout_lock.LOCK_FILE), while the last pointer move was a rollback:
# "FROM TO" (the versions). A rollout removes it.
ROLLED_BACK_FILE = ".rolled-back"
# A rollout's lock is waited for only while a catalogue delta (seconds) holds it: another rollout or rollback takes
# minutes, and its outcome changes what this run should do, so the operator hears of it at once.
NOT_WAITED = frozenset({"recsys-publish"})


class PointerError(PublishError, OSError):
    """The registry refused to point CURRENT at the version the replicas already serve. An OSError too: callers
    that caught the registry's own refusal still catch it."""


@contextmanager
def _past_the_switch(version: int) -> Iterator[None]:
    """Names, in a signal's Interrupted, the switch already made: nothing is undone past it, the next run
    finishes the job (module docstring)."""
    try:
        yield
    except Interrupted as e:
        raise Interrupted(e.signum, f" after the query replicas switched to version {version}: nothing was "
                                    "undone; run the same command again to finish") from None


def _agreed(fleet: Fleet, state: int, what: str, fix: str = "bring them in step first") -> int | None:
    """The version every query replica has in ``state`` (None without replicas); else raises PublishError, the
    message ending with ``fix``."""
    found = versions_in(fleet, state)
    if len(set(found.values())) > 1:
        raise PublishError(f"query replicas disagree on the {what} version: {found}; {fix}")
    return next(iter(found.values()), None)


def _most_served(serving: dict[str, int | None], registry: Registry, version: int) -> int | None:
    """The version most of the query replicas that disagree (``serving``) serve, CURRENT's where that is tied: the
    one a rollout of ``version`` that brings them in step moves CURRENT from, so that it becomes PREVIOUS. Logs which,
    and what PREVIOUS will be."""
    current = registry.current_version()
    counts = Counter(v for v in serving.values() if v is not None)
    top = max(counts.values(), default=0)
    tied = sorted(v for v, n in counts.items() if n == top)
    chosen, why = (tied[0], "most of them served it") if len(tied) == 1 else (current, "CURRENT's, as they were tied")
    # A move to the version CURRENT names leaves PREVIOUS as it is; a move from another makes that one PREVIOUS.
    previous = chosen if chosen != version else current if current != version else registry.previous_version()
    log.warning("query replicas disagree on the live version: %s: bringing every one to version %d; PREVIOUS will "
                "be version %s (%s)", serving, version, previous,
                why if previous == chosen else f"version {chosen}, {why}, is the one rolled out")
    return chosen


def _serves(version: int) -> Callable[[pb.ServiceStatus], bool]:
    return lambda status: status.live_version == version


def _on_replicas(fleet: Fleet) -> str:
    return f"on {len(fleet.query)} query replica{'' if len(fleet.query) == 1 else 's'}"


def publish_version(fleet: Fleet, registry: Registry, version: int, drain_s: float = 0.0,
                    keep_versions: int | None = None, lock_wait_s: float = 0.0,
                    allow_unlisted_watchers: bool = False) -> dict[str, float]:
    """Rolls ``version`` out (see the module docstring); raises PublishError.
    With ``keep_versions``, the versions older than that many up to the live one are then
    deleted from the registry (``Registry.prune``: never CURRENT, PREVIOUS, a slot's version
    nor one newer than the live one, which may be waiting for its rollout).
    Holds the model's rollout lock throughout (``exclusive``), waiting up to
    ``lock_wait_s`` for a catalogue run holding it (never for another rollout).
    ``allow_unlisted_watchers``: load a slot watched by more processes than the
    query replicas given (``_check_watchers``) all the same.
    Returns the seconds each step took."""
    with exclusive(registry, wait_s=lock_wait_s, refuse_at_once=NOT_WAITED):
        return _publish_version(fleet, registry, version, drain_s, keep_versions, allow_unlisted_watchers)


def _publish_version(fleet: Fleet, registry: Registry, version: int, drain_s: float,
                     keep_versions: int | None, allow_unlisted_watchers: bool) -> dict[str, float]:
    steps: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = round(now - mark, 3)
        mark = now
        interrupts.check()  # a stop Python dropped during the step (in a ``__del__``): acted on as if raised there

    try:
        registry.manifest(version)
    except VersionError as e:
        raise PublishError(f"version {version} cannot be rolled out: {e} (published: {registry.versions()})") from e
    if not fleet.index:
        raise PublishError("no index slot given (--index-admin): a version is served by its index slot")
    check_fleet(fleet, registry.model)
    serving = versions_in(fleet, SERVING)  # each query replica's own live version
    in_step = len(set(serving.values())) <= 1
    if in_step:
        live = next(iter(serving.values())) if fleet.query else registry.current_version()
        current = registry.current_version()
        _catch_up(fleet, registry, live)
        if live not in (None, current) and _rolled_back(registry) != (current, live):
            # That move finished a rollout cut off past its switch, not a rollback (which wrote its from and to
            # first): a rollback record left from before would refuse the rollback that undoes that rollout.
            _forget_rollback(registry)
    else:
        # A run killed between two promotes, or a replica restarted before CURRENT moved: this run brings them
        # in step, and ``live`` is only the version that becomes PREVIOUS.
        live = _most_served(serving, registry, version)
    slot_list = slots(fleet)
    undo: list[Undo] = []
    if in_step and live == version:
        log.info("version %d is already live; registry CURRENT is %d", version, version)
        if not any(s.version == version for s in slot_list):
            # Its searches fail until a slot holds it (a slot reloaded by hand, or by an old run's undo).
            target = pick_idle_slot(slot_list, set(), keep=_agreed(fleet, ROLLBACK_TARGET, "rollback target"))
            log.warning("no index slot holds the live version %d: loading it into slot %s", version, target.name)
            try:
                load_into_slot(fleet, target, version, undo, allow_unlisted_watchers)
            except PublishError:
                run_undo(fleet, undo)
                raise
        # A run cut off after its promotion (killed in its drain, or CURRENT unwritable) left stale towers loaded.
        unload_stale(fleet, drain_s)
        return steps
    step("status")
    try:
        if not any(s.version == version for s in slot_list):
            lives = ({live} | set(serving.values())) - {None}
            load_into_slot(fleet, pick_idle_slot(slot_list, lives), version, undo, allow_unlisted_watchers)
        step("slot_load")
        for replica in fleet.query:
            if serving[replica.address] == version:  # a replica that disagreed, already on the version
                continue
            before = {v.version for v in fleet.status(replica).versions}
            if version not in before:
                undo.append(Undo(replica, "UnloadVersion", pb.UnloadVersionRequest(version=version),
                                 lambda status: any(v.version == version and v.state not in (SERVING, ROLLBACK_TARGET)
                                                    for v in status.versions),
                                 f"query replica {replica.address} unloaded version {version} again", version))
            fleet.call(replica, "LoadVersion", pb.LoadVersionRequest(version=version))
            log.info("query replica %s loaded version %d", replica.address, version)
        step("query_load")  # towers loaded and caches warmed on every query replica
        for replica in fleet.query:
            own = serving[replica.address]  # where replicas disagree, each one's undo goes back to its own
            if own == version:
                continue
            if own is not None:
                undo.append(Undo(replica, "Promote", pb.PromoteRequest(version=own), _serves(version),
                                 f"query replica {replica.address} serves version {own} again"))
            fleet.call(replica, "Promote", pb.PromoteRequest(version=version))
        step("promote")
    except PublishError:
        run_undo(fleet, undo)
        raise
    with _past_the_switch(version):
        if live not in (None, version, registry.current_version()):
            _point_current(registry, live, fleet)  # so that the move to ``version`` leaves it PREVIOUS
        _point_current(registry, version, fleet)
        _forget_rollback(registry)
        on = _on_replicas(fleet) if fleet.query else "(no query replica given: each serves CURRENT when it starts)"
        log.info("version %d is live %s; registry CURRENT is %d, PREVIOUS %s", version, on, version,
                 registry.previous_version())
        _warn_deltas_left_behind(registry, live, version)
        step("pointers")
        unload_stale(fleet, drain_s)
        step("drain_and_unload")
    if keep_versions is not None:
        try:
            deleted = registry.prune(keep_versions)
        except (VersionError, OSError) as e:  # the rollout is done: its exit status must not say otherwise
            log.warning("version %d is live; pruning older versions failed (%s): fix that, and the next rollout "
                        "prunes them", version, e)
        else:
            if deleted:
                log.info("deleted versions %s from the registry (keeping %d)", deleted, keep_versions)
    return steps


def _warn_deltas_left_behind(registry: Registry, before: int | None, version: int) -> None:
    """A warning when the version that was live has catalogue deltas: they are that version's (its upserts' vectors
    are in its embedding space), so what they deleted or added is served as ``version`` was trained."""
    if before is None or before == version:
        return
    generation = published_generation(registry.model_dir, before)
    if generation:
        log.warning("version %d had %d catalogue delta(s), which do not carry over to version %d: candidates they "
                    "deleted are back, and those they upserted are gone, unless version %d was trained on a catalogue "
                    "that has them. Apply them to version %d with `recsys-catalogue --version %d` (deletes as given; "
                    "upserts as version %d's vectors, or as features where it has a candidate tower)", before,
                    generation, version, version, version, version, version)


def unload_stale(fleet: Fleet, drain_s: float = 0.0) -> None:
    """Unloads from the query replicas every tower that is neither live nor the rollback target, first waiting
    ``drain_s`` if there is any (for the requests still on them)."""
    stale = [(replica, v.version) for replica in fleet.query for v in fleet.status(replica).versions
             if v.state == versions_pb2.VERSION_STATE_READY]
    if stale and drain_s > 0:
        time.sleep(drain_s)
    for replica, version in stale:
        fleet.call(replica, "UnloadVersion", pb.UnloadVersionRequest(version=version))
        log.info("unloaded version %d from query replica %s", version, replica.address)


def _point_current(registry: Registry, version: int, fleet: Fleet) -> None:
    """Points CURRENT at ``version``, which ``fleet`` serves; raises PointerError if the registry refuses."""
    try:
        registry.set_current(version)
    except OSError as e:
        serving = "the query replicas serve" if fleet.query else "its index slot holds"  # --initial: no query tier
        raise PointerError(f"{serving} version {version} but registry CURRENT could not be moved to it ({e}): re-run "
                           "the same command once the registry is writable to finish") from e


def _catch_up(fleet: Fleet, registry: Registry, live: int | None) -> None:
    """Points CURRENT at the query replicas' live version where a run cut off
    after switching them left it behind, so that PREVIOUS names the version
    live before that switch and the next pointer move starts from the truth."""
    if live is not None and registry.current_version() != live:
        log.warning("registry CURRENT is %s but the query replicas serve version %d (a run was cut off after "
                    "switching them, or they were switched without recsys-publish): moving CURRENT to %d",
                    registry.current_version(), live, live)
        _point_current(registry, live, fleet)


def rollback(fleet: Fleet, registry: Registry, lock_wait_s: float = 0.0, refuse_forward: bool = False) -> int:
    """Makes every query replica's rollback target live again (or finishes a
    rollback cut off before its pointer move); returns the version now live.
    With ``refuse_forward`` (the command line's rollback), refuses a second
    rollback in a row: it would roll forward.
    Holds the model's rollout lock throughout (``exclusive``), waiting up to
    ``lock_wait_s`` for a catalogue run holding it (never for another rollout)."""
    if not fleet.query:
        raise PublishError("a rollback switches the query replicas' routing: give them (--query-admin)")
    with exclusive(registry, wait_s=lock_wait_s, refuse_at_once=NOT_WAITED):
        check_fleet(fleet, registry.model)
        return _rollback(fleet, registry, refuse_forward)


def _rollback(fleet: Fleet, registry: Registry, refuse_forward: bool) -> int:
    current, previous = registry.pointers()
    live = _agreed(fleet, SERVING, "live", fix=(
        f"a rollback needs one version to go back from: first run `recsys-publish --version {current}` (the version "
        "CURRENT names) with the index slots (--index-admin) and these query replicas: it loads that version where "
        "missing and promotes it on every query replica, bringing them in step"))
    target = _agreed(fleet, ROLLBACK_TARGET, "rollback target", fix=(
        f"all serve version {live}, so a rollback would not land on one version: roll out the version to go back to "
        f"instead, e.g. `recsys-publish --version {previous or 'N'}` "
        f"({'the version PREVIOUS names' if previous else 'N: the version to go back to'}) with the index slots "
        "(--index-admin) and these query replicas: it loads that version where missing and promotes it on every "
        "query replica"))
    if target is None:
        raise PublishError("the query replicas have no rollback target loaded")
    rolled_back = _rolled_back(registry)
    _catch_up(fleet, registry, live)
    if live != current and (live, target) == (previous, current) and rolled_back == (current, live):
        # The replicas already made this switch: a rollback cut off before its pointer move (it wrote its from and
        # to first), run again. Switching them once more would undo it. A rollout to the rollback target cut off
        # the same way leaves the same pointers and replicas, but not that record: that switch is rolled back.
        log.info("finished the rollback to version %d", live)
        return live
    if refuse_forward and rolled_back == (target, live) and registry.pointers() == (live, target):
        # A second rollback in a row: the first made the version it left the rollback target. (The target of a
        # rollout of an older version is newer too, and a rollback is how that rollout is undone.)
        raise PublishError(
            f"the last run was a rollback from version {target} to {live}: another would roll forward to version "
            f"{target}; nothing changed. To go to version {target} on purpose, run `recsys-publish --version "
            f"{target}` with the index slots (--index-admin) and these query replicas; to go back further, roll out "
            "the older version the same way (`--version N`)")
    # Written before the switch: one undone or cut off before its pointer move leaves pointers it does not match.
    _write_rolled_back(registry, f"{live} {target}\n")
    done: list[Undo] = []
    try:
        for replica in fleet.query:
            done.append(Undo(replica, "Promote", pb.PromoteRequest(version=live), _serves(target),
                             f"query replica {replica.address} serves version {live} again"))
            fleet.call(replica, "Rollback", pb.RollbackRequest())
    except PublishError:
        run_undo(fleet, done)
        raise
    with _past_the_switch(target):
        _point_current(registry, target, fleet)
    log.info("rolled back to version %d %s", target, _on_replicas(fleet))
    _warn_deltas_left_behind(registry, live, target)
    return target


def _rolled_back(registry: Registry) -> tuple[int, int] | None:
    """(from, to) of the rollback that was the last pointer move (``ROLLED_BACK_FILE``); None if there is none."""
    try:
        words = (registry.model_dir / ROLLED_BACK_FILE).read_text().split()
    except FileNotFoundError:
        return None
    return (int(words[0]), int(words[1])) if len(words) == 2 and all(map(is_version, words)) else None


def _write_rolled_back(registry: Registry, text: str) -> None:
    """Writes ``ROLLED_BACK_FILE`` whole (a write cut off leaves the record before it); raises PublishError if the
    registry refuses."""
    path = registry.model_dir / ROLLED_BACK_FILE
    try:
        replace_file(path, text)
    except OSError as e:
        raise PublishError(f"cannot write {path} ({e}): recsys-publish writes the registry, run it where the "
                           "registry is writable; nothing changed") from e


def _forget_rollback(registry: Registry) -> None:
    """Removes ``ROLLED_BACK_FILE`` once a rollout moved the pointers; one left behind only refuses a rollback
    that would undo a rollout of an older version, naming the rollout that does the same, so a failure is logged."""
    path = registry.model_dir / ROLLED_BACK_FILE
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove %s (%s): a rollback back to version %s will be refused until it is removed",
                    path, e, registry.previous_version())


@dataclass(frozen=True)
class PublishConfig(FleetConfig):
    version: int = option(0, "version to roll out (0: the newest published)", env=False)
    rollback: bool = option(False, "make the rollback target live again everywhere", env=False)
    initial: bool = option(False, "the registry's first rollout, before any query replica runs; does nothing "
                                  "once CURRENT is set", env=False)
    drain_s: float = option(5.0, "wait before unloading stale towers")
    keep_versions: int = option(5, "versions up to the live one kept on disk after a rollout (at least 2; "
                                   "newer ones, not rolled out yet, are never deleted)")
    allow_unlisted_watchers: bool = option(False, "load an idle slot even when one of its replicas has more status "
                                                  "watchers than there are query replica processes given (a client "
                                                  "known to route no searches there, e.g. a debugging one)", env=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(not (self.rollback and self.initial), "rollback", "a rollback cannot be an initial rollout")
        # Ignored, it read as a rollback to the version named: "rolled back to version 2" of --version 7.
        require(not (self.rollback and self.version), "version", "goes without --rollback: a rollback makes the "
                                                                "rollback target (registry PREVIOUS) live")
        require(self.version >= 0, "version", "must be >= 0")
        require(self.keep_versions >= 2, "keep_versions",
                "must be at least 2 (the live version and its rollback target)")
        require(bool(self.query_admin) or self.initial, "query_admin",
                "is required (every query replica), except for --initial")
        require(bool(self.index_admin) or self.rollback, "index_admin", "is required (every index slot replica)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, PublishConfig)
    return parser


def main(argv: list[str] | None = None) -> None:
    config = parse(build_parser(), PublishConfig, argv)
    logging.basicConfig(level=logging.INFO, handlers=[text_handler("%(asctime)s %(message)s")])
    registry = Registry(config.registry, config.model)
    with stop_on_signals(log):
        try:
            fleet = Fleet.connect(list(config.index_admin), list(config.query_admin), config.admin_token,
                                  config.timeout_s, config.connect_timeout_s, config.tls)
        except PublishError as e:
            _exit(e)
        try:
            if config.initial and registry.current_version() is not None:
                print(f"CURRENT is already {registry.current_version()}: nothing to do")
                return
            if config.rollback:
                version = rollback(fleet, registry, config.lock_wait_s, refuse_forward=True)
            else:
                version = config.version or (registry.versions() or [None])[-1]
                if version is None:
                    raise PublishError(f"no published version of {config.model} under {config.registry}")
                publish_version(fleet, registry, version, config.drain_s, config.keep_versions, config.lock_wait_s,
                                config.allow_unlisted_watchers)
            print(f"live version {version}")
        except (PublishError, VersionError) as e:
            _exit(e)
        finally:
            fleet.close()


def _exit(error: Exception) -> None:
    print(f"recsys-publish: {error}", file=sys.stderr)
    sys.exit(error.exit_code if isinstance(error, Interrupted) else 1)


if __name__ == "__main__":
    main()
