"""recsys-publish: roll a model version out across the index slots and the
query replicas, or roll back. The one writer of the registry's CURRENT.

    recsys-publish --registry DIR --model NAME [--version V] \\
        --index-admin HOST:PORT,HOST:PORT[,...] --query-admin HOST:PORT[,...]
    recsys-publish --rollback --registry DIR --model NAME --index-admin ... --query-admin ...
    recsys-publish --initial --registry DIR --model NAME --index-admin ...   # first rollout

Rollout of version V (default: the newest published):
  1. Every index slot and query replica reports what it holds; the query
     replicas agree on the live version L (none at the first rollout).
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
the slot gets its previous version back) and leaves CURRENT as it was.

Rollback: every query replica promotes its rollback target (they must agree),
a routing switch; then CURRENT and PREVIOUS swap. No index load is involved.

A run cut off after switching the query replicas, before moving CURRENT (or
while moving it: CURRENT and PREVIOUS move as one, so a cut move reads as not
made), is finished by the next one: a rollout or rollback first points CURRENT
at the version the replicas serve; a rollback run again stops there, and so
does a rollout of the version already live, once it has unloaded the stale
towers.

``--initial`` is the first rollout of a registry, before any query replica
can run (they refuse to start without CURRENT): steps 1, 2 and 5 only. With
CURRENT already set it does nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field

import grpc

from model_registry import Registry, VersionError
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from serving.tls import ClientTls, tls_hint
from settings.flags import add_flags, option, parse, require

log = logging.getLogger("recsys-publish")
SERVING, ROLLBACK_TARGET = versions_pb2.VERSION_STATE_SERVING, versions_pb2.VERSION_STATE_ROLLBACK_TARGET


class PublishError(Exception):
    """A rollout step failed; the message says which replica and why."""


class PointerError(PublishError, OSError):
    """The registry refused to point CURRENT at the version the replicas already serve. An OSError too: callers
    that caught the registry's own refusal still catch it."""


@dataclass
class Replica:
    role: str  # "index" or "query"
    address: str
    stub: pb_grpc.AdminServiceStub

    def call(self, method: str, request, metadata, timeout_s: float) -> pb.ServiceStatus:
        try:
            return getattr(self.stub, method)(request, metadata=metadata, timeout=timeout_s)
        except grpc.RpcError as e:
            raise PublishError(f"{self.role} replica {self.address}: {method} failed: "
                               f"{e.code().name}: {e.details()}") from e


@dataclass
class Fleet:
    """Admin connections to every index slot replica and query replica."""

    index: list[Replica]
    query: list[Replica]
    token: str = ""
    timeout_s: float = 120.0
    _channels: list[grpc.Channel] = field(default_factory=list)
    unreachable: dict[tuple[str, str], str] = field(default_factory=dict)  # (role, address) -> why, left out

    @classmethod
    def connect(cls, index_addresses: list[str], query_addresses: list[str], token: str = "",
                timeout_s: float = 120.0, connect_timeout_s: float = 10.0, tls: ClientTls = ClientTls(),
                strict: bool = True) -> "Fleet":
        """Opens a channel to every replica, waiting up to ``connect_timeout_s``
        for each (replicas still starting, as under compose). A replica that
        does not answer raises PublishError, or with ``strict`` false is left
        out of the fleet and named in its ``unreachable``."""
        channels: list[grpc.Channel] = []
        unreachable: dict[tuple[str, str], str] = {}

        def replicas(role: str, addresses: list[str]) -> list[Replica]:
            out = []
            for address in addresses:
                channels.append(tls.channel(address))
                try:
                    grpc.channel_ready_future(channels[-1]).result(timeout=connect_timeout_s)
                except grpc.FutureTimeoutError:
                    why = _unreachable(f"{role} replica {address}", tls, address, connect_timeout_s)
                    if not strict:
                        channels.pop().close()
                        unreachable[role, address] = why
                        continue
                    for channel in channels:
                        channel.close()
                    raise PublishError(why) from None
                out.append(Replica(role, address, pb_grpc.AdminServiceStub(channels[-1])))
            return out

        return cls(replicas("index", index_addresses), replicas("query", query_addresses), token, timeout_s,
                   channels, unreachable)

    def call(self, replica: Replica, method: str, request) -> pb.ServiceStatus:
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else None
        return replica.call(method, request, metadata, self.timeout_s)

    def status(self, replica: Replica) -> pb.ServiceStatus:
        return self.call(replica, "GetStatus", pb.GetStatusRequest())

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _unreachable(replica: str, tls: ClientTls, address: str, waited_s: float) -> str:
    """Why ``replica`` at ``address`` was not reached in ``waited_s``: a server that refuses the handshake does
    answer there, and its refusal names TLS."""
    details = tls.connect_failure(address)
    hint = tls_hint(details)
    return (f"{replica}: no admin server answers there{' with these TLS settings' if hint else ''} (waited "
            f"{waited_s:g} s){f': {details}' if details else ''}{hint}")


def _with_state(status: pb.ServiceStatus, state: int) -> int | None:
    return next((v.version for v in status.versions if v.state == state), None)


def _agreed(fleet: Fleet, state: int, what: str) -> int | None:
    """The version every query replica has in ``state`` (None without replicas)."""
    found = {r.address: _with_state(fleet.status(r), state) for r in fleet.query}
    if len(set(found.values())) > 1:
        raise PublishError(f"query replicas disagree on the {what} version: {found}; bring them in step first")
    return next(iter(found.values()), None)


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


def pick_idle_slot(slot_list: list[Slot], live: int | None) -> Slot:
    """An index slot not holding the live version: an empty one first, else
    the one holding the oldest version (the rollback target is the newest
    non-live one, so it survives when a third slot exists)."""
    idle = [s for s in slot_list if s.version != live or live is None]
    if not idle:
        raise PublishError(f"every index slot holds the live version {live} ({[s.name for s in slot_list]}): "
                           "a rollout needs an idle slot; start a second index slot (e.g. --slot green)")
    return min(idle, key=lambda s: (s.version is not None, s.version or 0))


def _undo(fleet: Fleet, steps: list[tuple[Replica, str, object]]) -> None:
    """Runs undo calls in reverse order, logging (not raising) failures."""
    for replica, method, request in reversed(steps):
        try:
            fleet.call(replica, method, request)
        except PublishError as e:
            log.warning("could not undo on %s replica %s: %s", replica.role, replica.address, e)


def publish_version(fleet: Fleet, registry: Registry, version: int, drain_s: float = 0.0,
                    keep_versions: int | None = None) -> dict[str, float]:
    """Rolls ``version`` out (see the module docstring); raises PublishError.
    With ``keep_versions``, older published versions beyond that many are then
    deleted from the registry (never CURRENT, PREVIOUS or a slot's version).
    Returns the seconds each step took."""
    steps: dict[str, float] = {}
    mark = time.perf_counter()

    def step(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        steps[name] = round(now - mark, 3)
        mark = now

    try:
        registry.manifest(version)
    except VersionError as e:
        raise PublishError(f"version {version} cannot be rolled out: {e}") from e
    if not fleet.index:
        raise PublishError("no index slot given (--index-admin): a version is served by its index slot")
    live = _agreed(fleet, SERVING, "live") if fleet.query else registry.current_version()
    _catch_up(fleet, registry, live)
    if live == version:
        log.info("version %d is already live; registry CURRENT is %d", version, version)
        # A run cut off after its promotion (killed in its drain, or CURRENT unwritable) left stale towers loaded.
        unload_stale(fleet, drain_s)
        return steps
    slot_list = slots(fleet)
    step("status")
    undo: list[tuple[Replica, str, object]] = []
    try:
        if not any(s.version == version for s in slot_list):
            target = pick_idle_slot(slot_list, live)
            for replica in target.replicas:
                fleet.call(replica, "LoadVersion", pb.LoadVersionRequest(version=version))
                undo.append((replica, "LoadVersion", pb.LoadVersionRequest(version=target.version))
                            if target.version else (replica, "UnloadVersion", pb.UnloadVersionRequest(version=version)))
            log.info("index slot %s now holds version %d (it held %s)", target.name, version,
                     target.version or "none")
        step("slot_load")
        for replica in fleet.query:
            before = {v.version for v in fleet.status(replica).versions}
            fleet.call(replica, "LoadVersion", pb.LoadVersionRequest(version=version))
            if version not in before:
                undo.append((replica, "UnloadVersion", pb.UnloadVersionRequest(version=version)))
            log.info("query replica %s loaded version %d", replica.address, version)
        step("query_load")  # towers loaded and caches warmed on every query replica
        for replica in fleet.query:
            fleet.call(replica, "Promote", pb.PromoteRequest(version=version))
            if live is not None:
                undo.append((replica, "Promote", pb.PromoteRequest(version=live)))
        step("promote")
    except PublishError:
        _undo(fleet, undo)
        raise
    _point_current(registry, version, fleet)
    log.info("version %d is live on %d query replicas; registry CURRENT is %d, PREVIOUS %s", version,
             len(fleet.query), version, registry.previous_version())
    step("pointers")
    unload_stale(fleet, drain_s)
    step("drain_and_unload")
    if keep_versions is not None:
        deleted = registry.prune(keep_versions)
        if deleted:
            log.info("deleted versions %s from the registry (keeping %d)", deleted, keep_versions)
    return steps


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
                    "switching them): moving CURRENT to %d", registry.current_version(), live, live)
        _point_current(registry, live, fleet)


def rollback(fleet: Fleet, registry: Registry) -> int:
    """Makes every query replica's rollback target live again (or finishes a
    rollback cut off before its pointer move); returns the version now live."""
    if not fleet.query:
        raise PublishError("a rollback switches the query replicas' routing: give them (--query-admin)")
    target = _agreed(fleet, ROLLBACK_TARGET, "rollback target")
    if target is None:
        raise PublishError("the query replicas have no rollback target loaded")
    live = _agreed(fleet, SERVING, "live")
    current, previous = registry.pointers()
    _catch_up(fleet, registry, live)
    if live != current and (live, target) == (previous, current):
        # The replicas already made this switch: a rollback cut off before its pointer move, run again.
        # Switching them once more would undo it.
        log.info("finished the rollback to version %d", live)
        return live
    done: list[tuple[Replica, str, object]] = []
    try:
        for replica in fleet.query:
            fleet.call(replica, "Rollback", pb.RollbackRequest())
            done.append((replica, "Promote", pb.PromoteRequest(version=live)))
    except PublishError:
        _undo(fleet, done)
        raise
    _point_current(registry, target, fleet)
    log.info("rolled back to version %d on %d query replicas", target, len(fleet.query))
    return target


@dataclass(frozen=True)
class PublishConfig:
    registry: str = option(help="model registry root directory")
    model: str = option(help="model name under the registry")
    index_admin: tuple[str, ...] = option((), "every index slot replica's admin HOST:PORT, comma-separated")
    query_admin: tuple[str, ...] = option((), "every query replica's admin HOST:PORT, comma-separated")
    admin_token: str = option("", "bearer token of the admin plane", secret=True)
    tls: ClientTls = option(ClientTls(), "TLS to the admin planes", prefix="tls-")
    version: int = option(0, "version to roll out (0: the newest published)", env=False)
    rollback: bool = option(False, "make the rollback target live again everywhere", env=False)
    initial: bool = option(False, "the registry's first rollout, before any query replica runs; does nothing "
                                  "once CURRENT is set", env=False)
    drain_s: float = option(5.0, "wait before unloading stale towers")
    timeout_s: float = option(120.0, "deadline of each admin call")
    connect_timeout_s: float = option(10.0, "how long to wait for each replica's admin server to answer")
    keep_versions: int = option(5, "published versions kept on disk after a rollout (at least 2)")

    def __post_init__(self) -> None:
        require(not (self.rollback and self.initial), "rollback", "a rollback cannot be an initial rollout")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    registry = Registry(config.registry, config.model)
    try:
        fleet = Fleet.connect(list(config.index_admin), list(config.query_admin), config.admin_token,
                              config.timeout_s, config.connect_timeout_s, config.tls)
    except PublishError as e:
        print(f"recsys-publish: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        if config.initial and registry.current_version() is not None:
            print(f"CURRENT is already {registry.current_version()}: nothing to do")
            return
        if config.rollback:
            version = rollback(fleet, registry)
        else:
            version = config.version or (registry.versions() or [None])[-1]
            if version is None:
                raise PublishError(f"no published version of {config.model} under {config.registry}")
            publish_version(fleet, registry, version, config.drain_s, config.keep_versions)
        print(f"live version {version}")
    except (PublishError, VersionError) as e:
        print(f"recsys-publish: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        fleet.close()


if __name__ == "__main__":
    main()
