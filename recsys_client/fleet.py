"""The admin planes of a model's replicas: ``FleetConfig`` (the flags recsys-publish and recsys-catalogue share:
registry, model, replica admin lists, token, TLS, timeouts, lock wait), ``Fleet`` (admin connections to every index
slot replica and query replica), ``version_in`` and ``versions_in`` (a replica's, and each query replica's, version in
a state such as ``SERVING``), ``slot_busy`` (an index slot's refusal of a load while it answers searches),
``check_fleet`` (every replica of the model and of the role of its flag, checked before a rollout changes anything)
and ``PublishError``, which names the replica whose call failed. Shared by both tools, so that they reach, read and
name the replicas alike."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import grpc

from model_registry.registry import check_model_name
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from recsys_client.status import FLAGS, admin_port_hint
from serving.config import check_token
from serving.rpc.tls import ClientTls, tls_hint
from serving.telemetry.observability import REQUEST_ID_KEY
from settings.flags import MAX_DEADLINE_S, check_address, option, require, require_distinct, require_valid

SERVING, ROLLBACK_TARGET = versions_pb2.VERSION_STATE_SERVING, versions_pb2.VERSION_STATE_ROLLBACK_TARGET
LOADING = versions_pb2.VERSION_STATE_LOADING


class PublishError(Exception):
    """A rollout step failed; the message says which replica and why."""


class ReplicaError(PublishError):
    """A replica's admin call failed (``Replica.call``): caught alone where a replica that does not answer is
    passed over, so that a signal's stop (``recsys_client.interrupts.Interrupted``, a PublishError raised inside
    the call) is not."""


@dataclass
class Replica:
    role: str  # "index" or "query"
    address: str
    stub: pb_grpc.AdminServiceStub

    def call(self, method: str, request, metadata: list[tuple[str, str]], timeout_s: float) -> pb.ServiceStatus:
        try:
            return getattr(self.stub, method)(request, metadata=metadata, timeout=timeout_s)
        except grpc.RpcError as e:
            hint = admin_port_hint(e.code(), self.address, self.role)
            request_id = dict(metadata).get(REQUEST_ID_KEY)
            # Where the hint says the call reached another plane, that plane's log has nothing of it to find.
            named = f" (request id {request_id})" if request_id and not hint else ""
            raise ReplicaError(f"{self.role} replica {self.address}: {method} failed: {e.code().name}: {e.details()}"
                               f"{hint}{named}") from e


@dataclass(frozen=True)
class FleetConfig:
    """What recsys-publish and recsys-catalogue share: the model, its replicas' admin planes and how to reach them,
    and the wait for the model's rollout lock. The help texts are recsys-publish's (recsys-catalogue re-words two);
    ``Fleet.connect`` takes its defaults from here."""

    registry: str = option(help="model registry root directory")
    model: str = option(help="model name under the registry")
    index_admin: tuple[str, ...] = option((), "every index slot replica's admin HOST:PORT, comma-separated")
    query_admin: tuple[str, ...] = option((), "every query replica's admin HOST:PORT, comma-separated")
    admin_token: str = option("", "bearer token of the admin plane", secret=True)
    tls: ClientTls = option(ClientTls(), "TLS to the admin planes", prefix="tls-")
    timeout_s: float = option(120.0, "deadline of each admin call")
    connect_timeout_s: float = option(10.0, "how long to wait for each replica's admin server to answer")
    # recsys-catalogue waits for a rollout: 6-10 s on the demo and ~40 s for a 10M-candidate index
    # (docs/BENCHMARKS.md), plus its drain.
    lock_wait_s: float = option(60.0, "how long to wait for a catalogue delta (recsys-catalogue) of the model to end "
                                      "before refusing; another recsys-publish run is refused at once")

    def __post_init__(self) -> None:
        require_valid(check_model_name, self.model, "model")
        for field in ("index_admin", "query_admin"):
            require_distinct(getattr(self, field), field)
            for address in getattr(self, field):
                require_valid(check_address, address, field)
        require_valid(check_token, self.admin_token, "admin_token")
        # A negative wait wrote a delta no replica was then asked to take; 0 failed every call, blamed on the replica.
        for field in ("timeout_s", "connect_timeout_s"):
            require(0 < getattr(self, field) <= MAX_DEADLINE_S, field, f"must be over 0 and at most {MAX_DEADLINE_S:g}")
        require(self.lock_wait_s >= 0, "lock_wait_s", "must be >= 0")


@dataclass
class Fleet:
    """Admin connections to every index slot replica and query replica. Every call of one run (one Fleet) carries
    one request id, which the replicas' log lines for it carry and a failed call's error names."""

    index: list[Replica]
    query: list[Replica]
    token: str = FleetConfig.admin_token
    timeout_s: float = FleetConfig.timeout_s
    _channels: list[grpc.Channel] = field(default_factory=list)
    unreachable: dict[tuple[str, str], str] = field(default_factory=dict)  # (role, address) -> why, left out
    request_id: str = field(default_factory=lambda: f"admin-{secrets.token_hex(6)}")

    @classmethod
    def connect(cls, index_addresses: list[str], query_addresses: list[str], token: str = FleetConfig.admin_token,
                timeout_s: float = FleetConfig.timeout_s, connect_timeout_s: float = FleetConfig.connect_timeout_s,
                tls: ClientTls = FleetConfig.tls, strict: bool = True) -> "Fleet":
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

    def call(self, replica: Replica, method: str, request, timeout_s: float | None = None) -> pb.ServiceStatus:
        """``method`` on ``replica``'s admin plane, within ``timeout_s`` (default: the fleet's ``--timeout-s``)."""
        metadata = [(REQUEST_ID_KEY, self.request_id)]
        if self.token:
            metadata.append(("authorization", f"Bearer {self.token}"))
        return replica.call(method, request, metadata, self.timeout_s if timeout_s is None else timeout_s)

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


def version_in(status: pb.ServiceStatus, state: int) -> int | None:
    """The version a replica's ``status`` has in ``state``; None if none."""
    return next((v.version for v in status.versions if v.state == state), None)


def versions_in(fleet: Fleet, state: int) -> dict[str, int | None]:
    """Each query replica's version in ``state`` (None: it has none), by address."""
    return {r.address: version_in(fleet.status(r), state) for r in fleet.query}


def slot_busy(error: PublishError) -> bool:
    """Whether ``error`` is a slot's refusal of a load because it answered searches within its --busy-window-s."""
    rpc = error.__cause__
    # The slot's refusal (index_service.slot's _check_idle) says "answered a search"; other refusals are as they are.
    return (isinstance(rpc, grpc.RpcError) and rpc.code() == grpc.StatusCode.FAILED_PRECONDITION
            and "answered a search" in rpc.details())


def check_fleet(fleet: Fleet, model: str, unanswered_ok: bool = False) -> None:
    """Refuses, before any change, a replica that is not of ``model`` or not of the role of the flag it was
    given in (a query replica's admin address among the index slots, or another model's replicas).
    ``unanswered_ok``: a replica whose status call fails is left to the run, which reports it failed."""
    for replica in fleet.index + fleet.query:
        try:
            status = fleet.status(replica)
        except ReplicaError:
            if unanswered_ok:
                continue
            raise
        if status.service != replica.role or status.model_name != model:
            raise PublishError(f"{FLAGS[replica.role]} {replica.address} is the {status.service or 'unknown'} "
                               f"service of model {status.model_name!r}, not the {replica.role} service of "
                               f"{model!r}: give {FLAGS[replica.role]} only the admin addresses of {model!r}'s "
                               f"{'index slots' if replica.role == 'index' else 'query replicas'}; nothing changed")
