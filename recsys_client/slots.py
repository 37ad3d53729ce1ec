"""The index slots of a rollout: ``slots`` (the slots by name and what each holds), ``pick_idle_slot`` (the one a
rollout loads: it serves no live traffic) and ``load_into_slot`` (the load on each of its replicas, each with its
``Undo``, refused first where the slot has watchers no query replica given accounts for)."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

from protos.recsys.v1 import admin_pb2 as pb
from recsys_client.fleet import SERVING, Fleet, PublishError, Replica, ReplicaError, slot_busy, versions_in
from recsys_client.undo import Undo

log = logging.getLogger("recsys-publish")


@dataclass
class Slot:
    """The replicas of one index slot (same slot name) and the version they hold."""

    name: str
    replicas: list[Replica]
    version: int | None  # None: empty


def slots(fleet: Fleet) -> list[Slot]:
    """The index slots by name, with the version each holds (replicas must agree)."""
    by_name: dict[str, list[tuple[Replica, int]]] = defaultdict(list)
    for replica in fleet.index:
        status = fleet.status(replica)
        by_name[status.slot or replica.address].append((replica, status.live_version))
    out = []
    for name, members in sorted(by_name.items()):
        held = {version for _, version in members}
        if len(held) > 1:
            raise PublishError(f"replicas of index slot {name!r} hold different versions "
                               f"{ {r.address: v for r, v in members} }; reload the odd ones first")
        out.append(Slot(name, [r for r, _ in members], held.pop() or None))
    return out


def pick_idle_slot(slot_list: list[Slot], live: set[int], keep: int | None = None) -> Slot:
    """An index slot not holding a live version (``live``: more than one where query replicas disagree): an empty
    one first, else one not holding ``keep``, else the one holding the oldest version (the rollback target is the
    newest non-live one, so it survives when a third slot exists)."""
    idle = [s for s in slot_list if s.version not in live]
    if not idle:
        named = f"the live version {min(live)}" if len(live) == 1 else f"a version a query replica serves {live}"
        raise PublishError(f"every index slot holds {named} ({[s.name for s in slot_list]}): "
                           "a rollout needs an idle slot; start a second index slot (e.g. --slot green)")
    return min(idle, key=lambda s: (s.version is not None, keep is not None and s.version == keep, s.version or 0))


def _slot_undo(slot: Slot, replica: Replica, version: int) -> Undo:
    """The undo of loading ``version`` into ``slot``'s ``replica``: its previous content back."""
    def holds(status: pb.ServiceStatus) -> bool:
        # 0: the load emptied the slot and did not finish (cut off by its deadline or a signal).
        return status.live_version in (version, 0) and status.live_version != (slot.version or 0)

    if slot.version:
        return Undo(replica, "LoadVersion", pb.LoadVersionRequest(version=slot.version), holds,
                    f"index slot {slot.name} holds version {slot.version} again ({replica.address})", version)
    return Undo(replica, "UnloadVersion", pb.UnloadVersionRequest(version=version), holds,
                f"index slot {slot.name} is empty again ({replica.address})", version)


def load_into_slot(fleet: Fleet, target: Slot, version: int, undo: list[Undo],
                    allow_unlisted_watchers: bool = False) -> None:
    if not allow_unlisted_watchers:
        _check_watchers(fleet, target, version)
    for replica in target.replicas:
        undo.append(_slot_undo(target, replica, version))
        try:
            fleet.call(replica, "LoadVersion", pb.LoadVersionRequest(version=version))
        except PublishError as e:
            raise _unlisted_traffic(fleet, target, e) from e.__cause__
    log.info("index slot %s now holds version %d (it held %s)", target.name, version, target.version or "none")


def _check_watchers(fleet: Fleet, slot: Slot, version: int) -> None:
    """Refuses, before ``slot`` is loaded with ``version``, a replica of it with more status watchers than the query
    replica processes given (a replica is one, one run with --workers N is N): each process watches every index
    endpoint it is given through one status stream, so the others are a query replica missing from --query-admin,
    whose searches for the version the slot holds would fail once it is replaced, even one too quiet for the slot's
    busy refusal. Per replica of the slot, not summed over them: a query process watches each one it is given."""
    if slot.version is None:
        return  # a slot holding nothing answers no one's searches
    listed = sum(len(fleet.status(replica).workers) or 1 for replica in fleet.query)
    for replica in slot.replicas:
        status = fleet.status(replica)
        # A pool's processes each count the streams on their own connections: the endpoint's are their sum.
        watchers = sum(w.status_watchers for w in status.workers) if status.workers else status.status_watchers
        if watchers > listed:
            given = ", ".join(r.address for r in fleet.query) or "none"
            raise PublishError(
                f"index slot {slot.name} holds version {slot.version}, which this rollout would replace with version "
                f"{version}, yet its replica {replica.address} serves {watchers} status streams while the query "
                f"replicas given (--query-admin: {given}) are {listed} process(es): each query replica process "
                "watches every index endpoint it is given, so a query replica missing from --query-admin (or "
                f"another client) watches it, and one routing to version {slot.version} would fail its searches "
                "once the slot is replaced. Give every query replica in --query-admin (each one's admin address; a "
                "--workers N replica counts as its N processes); if the other watchers route no searches there (a "
                "debugging client), run again with --allow-unlisted-watchers; nothing changed")


def _unlisted_traffic(fleet: Fleet, slot: Slot, error: PublishError) -> PublishError:
    """``error``, a load into ``slot`` refused, naming its likely cause where the slot refused because it answers
    searches (within its --busy-window-s) for a version that no query replica given serves: a query replica left out
    of --query-admin, routing its cache misses there, which would fail every one once the slot is replaced."""
    if not slot_busy(error) or slot.version is None or not fleet.query:
        return error
    try:
        serving = versions_in(fleet, SERVING)
    except ReplicaError:  # the refusal is what the operator must hear
        return error
    if slot.version in serving.values():
        return error
    return PublishError(f"{error}; none of the query replicas given ({', '.join(serving)}) serves version "
                        f"{slot.version}, yet slot {slot.name} answers searches for it: a query replica missing from "
                        f"--query-admin? Give every query replica: a rollout replacing version {slot.version} "
                        "would fail its searches")
