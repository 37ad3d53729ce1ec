"""``recsys-client status``: every replica's versions, their states and key
figures in one table, from each admin plane's GetStatus.

    recsys-client status --index-admin HOST:PORT,... --query-admin HOST:PORT,... [--admin-token-file F]

All replicas are asked at once; one that does not answer gets a row saying
why, and the others are still shown (exit status 1 when any failed). Under a
query replica's rows, one line per index endpoint it cannot send all the
searches it should (``IndexEndpointStatus.problem``: unreachable, holding
nothing, behind the live tower's catalogue generation), saying what fixes it;
none when every endpoint serves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import admin_pb2_grpc as pb_grpc
from protos.recsys.v1 import versions_pb2
from serving.rpc.admin_rpc import state_name
from serving.rpc.tls import ClientTls, tls_hint

# WATCHERS: the status streams an index process serves, one per query replica process routing over it (blank: none);
# recsys-publish refuses to replace a slot one of whose replicas has more than the query replica processes given.
COLUMNS = ("ADDRESS", "SERVICE", "SLOT", "VERSION", "STATE", "CANDIDATES", "RECALL@10", "MEMORY", "LOAD_S",
           "CATALOGUE_GEN", "WATCHERS")


@dataclass(frozen=True)
class ReplicaStatus:
    """One replica's answer: its status, or why there is none."""

    role: str  # "index" or "query": what the caller listed it as
    address: str
    status: pb.ServiceStatus | None = None
    error: str = ""


# The flag naming each role's admin addresses, in recsys-client status and recsys-publish.
FLAGS = {"index": "--index-admin", "query": "--query-admin"}


def admin_port_hint(code: grpc.StatusCode, address: str, role: str) -> str:
    """What to do about an UNIMPLEMENTED answer of ``address``: a data port answers gRPC too, without the admin
    service. Empty for any other code."""
    return (f"; {address} is not an admin port: give the replica's --admin-port address in {FLAGS[role]}"
            if code == grpc.StatusCode.UNIMPLEMENTED else "")


def gather(index: list[str], query: list[str], token: str = "", timeout_s: float = 5.0,
           tls: ClientTls = ClientTls()) -> list[ReplicaStatus]:
    """Asks every replica's admin plane for its status, all at once, each within ``timeout_s``."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    asked = []
    channels = []
    try:
        for role, addresses in (("index", index), ("query", query)):
            for address in addresses:
                channels.append(tls.channel(address))
                stub = pb_grpc.AdminServiceStub(channels[-1])
                asked.append((role, address, stub.GetStatus.future(pb.GetStatusRequest(), metadata=metadata,
                                                                   timeout=timeout_s)))
        out = []
        for role, address, future in asked:
            try:
                out.append(ReplicaStatus(role, address, future.result()))
            except grpc.RpcError as e:
                hint = tls_hint(e.details()) + admin_port_hint(e.code(), address, role)
                out.append(ReplicaStatus(role, address, error=f"{e.code().name}: {e.details()}{hint}"))
        return out
    finally:
        for channel in channels:
            channel.close()


def _size(n: int) -> str:
    """``n`` bytes in the largest binary unit that keeps it >= 1 (e.g. 3.0MiB)."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f}{unit}" if unit != "B" else f"{n}B"
        n /= 1024
    return f"{n:.1f}GiB"


def rows(replicas: list[ReplicaStatus]) -> list[tuple[str, ...]]:
    """The table's rows: one per loaded version of each replica (of each worker
    of a replica run with --workers, its address followed by ``/w<i>``); one for
    a replica holding none; one with the error for a replica that did not answer."""
    out = []
    for replica in replicas:
        if replica.status is None:
            out.append((replica.address, replica.role, "-", "-", f"UNREACHABLE ({replica.error})"))
            continue
        for address, status in _processes(replica):
            out.extend(_version_rows(address, replica.role, status))
    return out


def _processes(replica: ReplicaStatus) -> list[tuple[str, pb.ServiceStatus]]:
    """(address, status) of each process of an answering replica: each worker's of one run with --workers
    (``ADDRESS/w<i>``), else the replica's own."""
    workers = [(f"{replica.address}/w{i}", w) for i, w in enumerate(replica.status.workers)]
    return workers or [(replica.address, replica.status)]


def endpoint_problems(replica: ReplicaStatus) -> list[str]:
    """One line per index endpoint a query replica's process (each worker's) names a problem of: none for an
    index replica, one that did not answer, or one whose endpoints all serve it."""
    if replica.status is None:
        return []
    out = []
    for address, status in _processes(replica):
        for e in status.index_endpoints:
            if e.problem:
                where = ", ".join(([f"slot {e.slot}"] if e.slot else []) +
                                  ([f"shard {e.shard} of {e.shards}"] if e.shards else []))
                out.append(f"  ! {address} -> index endpoint {e.address}{f' ({where})' if where else ''}: "
                           f"{e.problem}")
    return out


def _version_rows(address: str, role: str, status: pb.ServiceStatus) -> list[tuple[str, ...]]:
    out = []
    slot = (status.slot or "-") + (f"[{status.shard}/{status.shards}]" if status.shards else "")
    service = status.service or role
    head = (address, service, slot)
    watchers = str(status.status_watchers or "")
    if status.not_answering:  # a worker being replaced: nothing served, which EMPTY would also say of a healthy one
        return [(*head, "-", f"UNREACHABLE (worker not answering: {status.not_answering})")]
    if not status.versions:  # an empty slot is watched too
        out.append((*head, "-", "EMPTY", *[""] * 5, watchers))
    for v in sorted(status.versions, key=lambda v: v.version):
        live = "*" if v.version == status.live_version else ""
        out.append((*head, f"{v.version}{live}", state_name(v.state), str(v.num_candidates),
                    _recall(v, service),
                    _size(v.memory_bytes), f"{v.load_seconds:.2f}", str(v.catalogue_generation), watchers))
    return out


def _recall(v, service: str) -> str:
    """The self-test recall, with the catalogue generation it was measured at when not the load's; "-" where none
    is measured (a query service's versions, a version still loading)."""
    # proto3 sends no recall as 0.0, so a measured 0.0 (a broken index) is told apart by who measured it, not by value.
    if service != "index" or v.state == versions_pb2.VERSION_STATE_LOADING:
        return "-"
    return f"{v.self_test_recall_at_10:.3f}" + (f"@g{v.self_test_generation}" if v.self_test_generation else "")


def failed(replica: ReplicaStatus) -> bool:
    """Whether ``replica`` (or a worker of it) did not answer: ``recsys-client status`` then exits 1."""
    return replica.status is None or any(w.not_answering for w in replica.status.workers)


def table(replicas: list[ReplicaStatus]) -> str:
    """A fixed-width table (``*`` marks the version each replica serves: a query replica's live version, the
    version an index slot has loaded); an unreachable replica's reason runs past the columns, and so do the
    lines under a query replica naming its index endpoints' problems (``endpoint_problems``)."""
    bodies = [rows([replica]) for replica in replicas]
    widths = [len(column) for column in COLUMNS]
    for row in (row for body in bodies for row in body):
        for i, cell in enumerate(row[:-1] if row[-1].startswith("UNREACHABLE") else row):
            widths[i] = max(widths[i], len(cell))

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()

    out = [line(COLUMNS)]
    for replica, body in zip(replicas, bodies):
        out += [line(row) for row in body] + endpoint_problems(replica)
    return "\n".join(out)
