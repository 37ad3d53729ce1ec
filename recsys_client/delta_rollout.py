"""A catalogue delta's way to the replicas: ``publish_delta`` (appended to the version's log in the registry, then
applied), ``catch_up`` (every replica to where the log ends) and ``apply_everywhere`` (index replicas first, then
query replicas, which route only to index replicas at their generation); ``Rollout`` says which took it."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_registry import Registry, signing
from model_registry.deltas import Delta, catalogue_dir, published_generation, write_delta
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1.versions_pb2 import VERSION_STATE_LOADING as LOADING
from recsys_client.fleet import SERVING, Fleet, PublishError, Replica, ReplicaError, version_in
from recsys_client.interrupts import Interrupted
from recsys_client.upserts import CatalogueError, check_scale

log = logging.getLogger("recsys-catalogue")


@dataclass(frozen=True)
class Rollout:
    """What one delta reached: the generation, and which replicas took it."""

    generation: int
    applied: list[str]
    failed: dict[str, str]


def apply_everywhere(fleet: Fleet, version: int, generation: int) -> Rollout:
    """Asks every index replica holding ``version``, then every query replica, to
    catch up to ``generation`` (the replicas of a tier at once). Index first: a
    query replica at G routes only to index replicas at G or later, so the query
    tier is not moved while a shard of the version has no index replica at G.
    SIGINT or SIGTERM (``Interrupted``) lets the calls under way end, then
    raises naming the replicas that took the generation."""
    request = pb.ApplyCatalogueRequest(version=version, generation=generation)
    shards: dict[str, tuple[int, int]] = {}  # index replica holding the version -> (its shard, of how many)
    took: set[str] = set()  # filled by the calls themselves, which a signal does not cut off

    def apply(replica: Replica) -> str | None:
        """None if applied, "" if the replica does not hold the version, else the error."""
        try:
            if replica.role == "index":
                status = fleet.status(replica)
                states = {v.version: v.state for v in status.versions}
                if version not in states:
                    return ""
                if states[version] != LOADING:  # a slot reports the shard of the version it has loaded
                    shards[_name(replica)] = (status.shard, status.shards)
            fleet.call(replica, "ApplyCatalogue", request)
            took.add(_name(replica))
            return None
        except PublishError as e:
            return str(e)

    applied: list[str] = []
    # An index replica not reached may hold the version, of a shard unknown here: it counts as one that refused.
    failed = {f"{role} {address}": why for (role, address), why in fleet.unreachable.items() if role == "index"}
    try:
        with ThreadPoolExecutor(max(len(fleet.index), len(fleet.query), 1)) as pool:
            for replica, outcome in zip(fleet.index, pool.map(apply, fleet.index)):
                if outcome is None:
                    applied.append(_name(replica))
                elif outcome:
                    failed[_name(replica)] = outcome
            stuck = _unserved(version, generation, shards, applied, bool(failed))
            if stuck:
                for replica in fleet.query:
                    failed[_name(replica)] = (f"not moved to generation {generation}: {stuck}, and a query replica "
                                              "routes only to index replicas at its generation or later (its cache "
                                              "misses would fail); the delta stays in the registry for when they "
                                              "catch up")
            else:
                for replica, outcome in zip(fleet.query, pool.map(apply, fleet.query)):
                    if outcome is None:
                        applied.append(_name(replica))
                    else:
                        failed[_name(replica)] = outcome
    except Interrupted as e:  # raised once the pool's calls under way ended, so ``took`` is what they did
        at = [name for name in map(_name, (*fleet.index, *fleet.query)) if name in took]
        raise Interrupted(e.signum, f" while the replicas caught up to generation {generation} of version {version} "
                                    f"({'at it: ' + ', '.join(at) if at else 'none at it yet'})") from None
    failed |= {f"{role} {address}": why for (role, address), why in fleet.unreachable.items() if role == "query"}
    return Rollout(generation, applied, failed)


def _name(replica: Replica) -> str:
    return f"{replica.role} {replica.address}"


def _unserved(version: int, generation: int, shards: dict[str, tuple[int, int]], applied: list[str],
              refused: bool) -> str:
    """Why no query replica may move to ``generation`` ("" if it may): the index replicas holding ``version``
    (``shards``, or ``refused`` ones whose status was not read) leave some shard of it without one at it, or none
    listed holds it at all (``applied`` names the index replicas that took it, slots still loading it included)."""
    took = {shards[name] for name in applied if name in shards}  # a slot still loading the version names no shard
    if not took:
        if shards or refused:
            return f"no index replica holding version {version} took generation {generation}"
        # The replicas that do hold it were left out of the flag: they stay behind, and a query replica moved to
        # the generation would find no index replica at it.
        return "" if applied else (f"no index replica listed in --index-admin holds version {version} (list those "
                                   "that do, as recsys-client status shows them, and run again with --catch-up)")
    # Every shard of the version, also one whose replicas all refused before saying they hold it (or were not reached).
    missing = sorted((set(shards.values()) | {(shard, of) for _, of in took for shard in range(of)}) - took)
    return "; ".join(f"no replica of shard {shard} of {of} of version {version} took generation {generation}"
                     for shard, of in missing)


def _check_replicas(fleet: Fleet, registry: Registry, version: int, served: bool = False) -> None:
    """Raises CatalogueError, writing nothing, where a replica holds ``version`` at a catalogue generation the
    registry's log does not reach: a record was removed by hand, or the registry was restored from an older copy.
    The next delta would take a generation that replica already holds with other contents, and it would never
    apply it (nor would its catch-up, which looks for the generation after its own). With ``served`` (a delta for
    CURRENT), also where a query replica serves another version: a rollout or rollback cut off past its switch left
    CURRENT behind, and a delete would land on a version that serves nothing. A replica whose status does not
    answer is skipped here: the apply names it."""
    published = published_generation(registry.model_dir, version)
    others: dict[str, int] = {}  # query replicas serving another version than ``version``
    for replica in fleet.index + fleet.query:
        try:
            status = fleet.status(replica)
        except ReplicaError:
            continue
        live = version_in(status, SERVING)
        if replica.role == "query" and live not in (None, version):
            others[replica.address] = live
        held = {v.version: v.catalogue_generation for v in status.versions}
        if held.get(version, 0) > published:
            raise CatalogueError(
                f"{replica.role} replica {replica.address} holds version {version} at catalogue generation "
                f"{held[version]}, but the registry's log of it ends at generation {published} "
                f"({catalogue_dir(registry.model_dir, version)}): records were removed, or the registry was restored "
                "from an older copy; a new delta would take a generation that replica applied with other contents. "
                "Restore the missing records, or publish a new version (recsys-train, recsys-publish)")
    if served and others:
        raise CatalogueError(
            f"CURRENT names version {version} but query replicas serve another: {others} (a rollout or rollback "
            "was cut off after switching them): nothing was written; finish that run first (run it again, e.g. "
            "`recsys-publish --version N` for the version they serve), or pass --version to change a version on "
            "purpose")


def publish_delta(fleet: Fleet, registry: Registry, version: int, delta: Delta,
                  key: Ed25519PrivateKey | None = None, served: bool = False) -> Rollout:
    """Appends ``delta`` to ``version``'s log (signed by ``key`` if given), then applies it on every replica.
    Raises VersionError, writing nothing, if the version's replicas would refuse the delta's signature, and
    CatalogueError, writing nothing, for an upsert far outside the version's scale (``check_scale``), a replica
    past the registry's log or, with ``served``, a query replica serving another version (``_check_replicas``),
    or if the catalogue directory cannot be written."""
    signing.check_delta_signer(registry.version_dir(version), key)
    check_scale(registry, version, delta)
    _check_replicas(fleet, registry, version, served)
    try:
        generation = write_delta(registry.model_dir, version, delta, key)
    except OSError as e:
        directory = catalogue_dir(registry.model_dir, version)
        raise CatalogueError(f"the delta was not written: catalogue directory {directory} cannot be written "
                             f"({e.strerror or e})") from e
    log.info("version %d: catalogue delta %d (%d upserts, %d deletes) written", version, generation,
             len(delta.ids), len(delta.deleted))
    return apply_everywhere(fleet, version, generation)


def catch_up(fleet: Fleet, registry: Registry, version: int, generation: int) -> Rollout:
    """Has every replica of ``version`` catch up to ``generation``, where the registry's log ends, writing nothing.
    Raises CatalogueError, calling no replica, where one is past the log (``_check_replicas``): it would
    answer from what it holds, and the run would report it caught up."""
    _check_replicas(fleet, registry, version)
    return apply_everywhere(fleet, version, generation)
