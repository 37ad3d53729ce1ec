"""recsys-publish: blue-green rollout of a model version across all replicas.

    recsys-publish --registry DIR --model NAME [--version V] \\
        --index-admin HOST:PORT[,HOST:PORT...] --query-admin HOST:PORT[,...]
    recsys-publish --rollback --registry DIR --model NAME --index-admin ... --query-admin ...

Rollout: load V on every index replica, then on every query replica (each
verifies checksums and self-tests); only when all succeeded, promote V on the
index replicas, then the query replicas, and point the registry's CURRENT at V
so restarted replicas come back on it. The previous version stays loaded for an
instant rollback; versions older than that are unloaded after a drain period.
Any failure before promotion unloads what this run loaded and changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, field

import grpc

from model_registry import Registry, VersionError
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc

log = logging.getLogger("recsys-publish")


class PublishError(Exception):
    """A rollout step failed; the message says which replica and why."""


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
    """Admin connections to every replica of both services."""

    index: list[Replica]
    query: list[Replica]
    token: str = ""
    timeout_s: float = 120.0
    _channels: list[grpc.Channel] = field(default_factory=list)

    @classmethod
    def connect(cls, index_addresses: list[str], query_addresses: list[str], token: str = "",
                timeout_s: float = 120.0) -> "Fleet":
        channels: list[grpc.Channel] = []

        def replicas(role: str, addresses: list[str]) -> list[Replica]:
            out = []
            for address in addresses:
                channels.append(grpc.insecure_channel(address))
                out.append(Replica(role, address, pb_grpc.AdminServiceStub(channels[-1])))
            return out

        return cls(replicas("index", index_addresses), replicas("query", query_addresses), token, timeout_s,
                   channels)

    @property
    def replicas(self) -> list[Replica]:
        return [*self.index, *self.query]

    def call(self, replica: Replica, method: str, request) -> pb.ServiceStatus:
        metadata = [("authorization", f"Bearer {self.token}")] if self.token else None
        return replica.call(method, request, metadata, self.timeout_s)

    def close(self) -> None:
        for channel in self._channels:
            channel.close()


def _loaded(status: pb.ServiceStatus) -> set[int]:
    return {v.version for v in status.versions if v.state != pb.VERSION_STATE_LOADING}


def publish_version(fleet: Fleet, registry: Registry, version: int, drain_s: float = 0.0,
                    keep_versions: int | None = None) -> None:
    """Runs the blue-green rollout of ``version``; raises PublishError. With
    ``keep_versions``, older published versions beyond that many are then
    deleted from the registry (never the live one or its rollback target)."""
    try:
        registry.manifest(version)
    except VersionError as e:
        raise PublishError(f"version {version} cannot be published: {e}") from e
    loaded_here: list[Replica] = []
    try:
        for replica in fleet.replicas:  # index replicas first, then query replicas
            before = _loaded(fleet.call(replica, "GetStatus", pb.GetStatusRequest()))
            fleet.call(replica, "LoadVersion", pb.LoadVersionRequest(version=version))
            if version not in before:
                loaded_here.append(replica)
            log.info("loaded version %d on %s replica %s", version, replica.role, replica.address)
    except PublishError:
        for replica in loaded_here:
            try:
                fleet.call(replica, "UnloadVersion", pb.UnloadVersionRequest(version=version))
            except PublishError as e:
                log.warning("could not unload version %d after the failed rollout: %s", version, e)
        raise
    statuses = [fleet.call(r, "Promote", pb.PromoteRequest(version=version)) for r in fleet.replicas]
    registry.set_current(version)
    log.info("promoted version %d on %d replicas; registry CURRENT is %d", version, len(statuses), version)
    if drain_s > 0:
        time.sleep(drain_s)
    unload_stale(fleet)
    if keep_versions is not None:
        deleted = registry.prune(keep_versions)
        if deleted:
            log.info("deleted versions %s from the registry (keeping %d)", deleted, keep_versions)


def unload_stale(fleet: Fleet) -> None:
    """Unloads every version that is neither live nor the rollback target."""
    for replica in fleet.replicas:
        status = fleet.call(replica, "GetStatus", pb.GetStatusRequest())
        for v in status.versions:
            if v.state == pb.VERSION_STATE_READY:
                fleet.call(replica, "UnloadVersion", pb.UnloadVersionRequest(version=v.version))
                log.info("unloaded version %d from %s replica %s", v.version, replica.role, replica.address)


def rollback(fleet: Fleet, registry: Registry) -> int:
    """Makes every replica's previous version live again; returns it."""
    targets = set()
    for replica in fleet.replicas:
        status = fleet.call(replica, "GetStatus", pb.GetStatusRequest())
        targets |= {v.version for v in status.versions if v.state == pb.VERSION_STATE_DRAINING}
    if len(targets) != 1:
        raise PublishError(f"replicas disagree on (or lack) a previous version to roll back to: {sorted(targets)}")
    target = targets.pop()
    for replica in fleet.replicas:
        fleet.call(replica, "Promote", pb.PromoteRequest(version=target))
    registry.set_current(target)
    log.info("rolled back to version %d on %d replicas", target, len(fleet.replicas))
    return target


def build_parser() -> argparse.ArgumentParser:
    from serving.flags import add_flag

    parser = argparse.ArgumentParser(prog="recsys-publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flag(parser, "registry", required=True, help="model registry root directory")
    add_flag(parser, "model", required=True, help="model name under the registry")
    parser.add_argument("--version", type=int, help="version to roll out (default: the newest published)")
    parser.add_argument("--rollback", action="store_true", help="promote the previous version everywhere")
    add_flag(parser, "index-admin", required=True, help="index replicas' admin HOST:PORT, comma-separated")
    add_flag(parser, "query-admin", required=True, help="query replicas' admin HOST:PORT, comma-separated")
    add_flag(parser, "admin-token", default="", help="bearer token of the admin plane")
    parser.add_argument("--drain-s", type=float, default=5.0, help="wait before unloading older versions")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="deadline of each admin call")
    parser.add_argument("--keep-versions", type=int, default=5,
                        help="published versions kept on disk after a rollout (at least 2)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keep_versions < 2:
        parser.error("--keep-versions must be at least 2 (the live version and its rollback target)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    registry = Registry(args.registry, args.model)
    split = lambda value: [a for a in value.split(",") if a]  # noqa: E731
    fleet = Fleet.connect(split(args.index_admin), split(args.query_admin), args.admin_token, args.timeout_s)
    try:
        if args.rollback:
            version = rollback(fleet, registry)
        else:
            version = args.version or (registry.versions() or [None])[-1]
            if version is None:
                raise PublishError(f"no published version of {args.model} under {args.registry}")
            publish_version(fleet, registry, version, args.drain_s, args.keep_versions)
        print(f"live version {version} on {len(fleet.replicas)} replicas")
    except PublishError as e:
        print(f"recsys-publish: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        fleet.close()


if __name__ == "__main__":
    main()
