"""recsys-client: call the query and index services from a shell.

    recsys-client recommend --address HOST:PORT --customer-id ID --k 10 [--exclude ID ...] [--exclude-seen]
                            [--filter JSON]
    recsys-client similar   --address HOST:PORT --candidate-id ID --k 10 [--exclude ID ...] [--filter JSON]
    recsys-client batch     --address HOST:PORT --customer-ids ID,ID,... --k 10 [--exclude ID ...]
                            [--exclude-seen] [--filter JSON]
    recsys-client record    --address HOST:PORT --customer-id ID --candidate-ids ID,ID,...  (oldest first)
    recsys-client embed     --address HOST:PORT --customer-id ID
    recsys-client health    --address HOST:PORT [--service NAME]
    recsys-client status    --index-admin HOST:PORT,... --query-admin HOST:PORT,... [--admin-token-file F]

``--filter`` is a ``recsys.v1.Filter`` in protobuf's JSON form; every part is
optional, and a candidate must pass every restrict and every range::

    {"restricts": [{"namespace": "genres", "allow": ["Drama", "Comedy"], "deny": ["Horror"]}],
     "ranges": [{"namespace": "release_year", "min": 1990, "max": 1999}],
     "crowding_namespace": "genres", "max_per_value": 2}

Against servers serving TLS: ``--tls-ca CA.pem`` (and, for mutual TLS,
``--tls-cert`` / ``--tls-key``), or ``$RECSYS_TLS_CA`` (``_CERT``, ``_KEY``).

Prints the response as JSON; on an RPC error prints the status code and message
to stderr and exits 1 (health exits 1 unless SERVING). ``status`` prints one
table of every listed replica's versions, states and figures from its admin
plane (``*``: the version each replica serves, which for an index slot is the
one it has loaded, live or not), and exits 1 if any replica did not answer.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client import status
from serving.errors import InvalidArgument
from serving.rpc.filter_protos import filter_from_proto
from serving.rpc.tls import ToolTls, tls_hint
from settings.flags import (MAX_INT32, ConfigError, add_flags, add_secret_file, comma_list, deadline_s, flag_name,
                            from_args, host_port, host_ports)


def parse_filter(text: str) -> pb.Filter:
    """A ``--filter`` value: a ``recsys.v1.Filter`` in JSON, checked as the server checks it."""
    try:
        value = json_format.Parse(text, pb.Filter())
        filter_from_proto(value)
    except (json_format.ParseError, InvalidArgument) as e:
        raise argparse.ArgumentTypeError(f"not a filter: {e} (see recsys-client --help for the JSON shape)") from None
    return value


def k_flag(text: str) -> int:
    """--k as the request carries it (int32); the service refuses a k over its own --max-k, naming it."""
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= k <= MAX_INT32:
        raise argparse.ArgumentTypeError(f"{text} is out of range: ask for 1 or more candidates (the service says "
                                         "its largest k)")
    return k


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("recommend", "similar", "batch", "record", "embed", "health"):
        sub = commands.add_parser(name)
        sub.add_argument("--address", type=host_port, required=True, help="service HOST:PORT")
        _add_connection(sub)
        if name in ("recommend", "record", "embed"):
            sub.add_argument("--customer-id", required=True)
        if name == "similar":
            sub.add_argument("--candidate-id", required=True)
        if name == "batch":
            sub.add_argument("--customer-ids", type=comma_list, required=True, help="customer ids, comma-separated")
        if name == "record":
            sub.add_argument("--candidate-ids", type=comma_list, required=True,
                             help="candidates the customer interacted with, comma-separated, oldest first")
        if name in ("recommend", "similar", "batch"):
            sub.add_argument("--k", type=k_flag, default=10)
            sub.add_argument("--exclude", nargs="*", default=[], help="candidate ids to exclude")
            sub.add_argument("--filter", type=parse_filter, help="only candidates passing this filter (JSON, above)")
        if name in ("recommend", "batch"):
            sub.add_argument("--exclude-seen", action="store_true",
                             help="also exclude what the customer interacted with")
        if name == "health":
            sub.add_argument("--service", default="", help="service name; empty for the whole server")
    sub = commands.add_parser("status", help="every replica's versions and states, from the admin planes")
    sub.add_argument("--index-admin", type=host_ports, default=[],
                     help="index slot replicas' admin HOST:PORT, comma-separated")
    sub.add_argument("--query-admin", type=host_ports, default=[],
                     help="query replicas' admin HOST:PORT, comma-separated")
    add_secret_file(parser, sub, "admin-token", "file holding the bearer token of the admin plane")
    _add_connection(sub)
    return parser


def _add_connection(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--timeout-s", type=deadline_s, default=5.0, help="RPC deadline")
    add_flags(sub, ToolTls)


def _call(stub: pb_grpc.QueryServiceStub, args: argparse.Namespace):
    """The query service call a subcommand makes, and its answer."""
    if args.command == "embed":
        return stub.Embed(pb.EmbedRequest(customer_id=args.customer_id), timeout=args.timeout_s)
    if args.command == "record":
        return stub.RecordInteractions(pb.RecordInteractionsRequest(customer_id=args.customer_id,
                                                                    candidate_ids=args.candidate_ids),
                                       timeout=args.timeout_s)
    if args.command == "similar":
        return stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=args.candidate_id, k=args.k,
                                                                exclude_candidate_ids=args.exclude,
                                                                filter=args.filter), timeout=args.timeout_s)
    requests = [pb.RecommendRequest(customer_id=customer, k=args.k, exclude_candidate_ids=args.exclude,
                                    exclude_seen=args.exclude_seen, filter=args.filter)
                for customer in (args.customer_ids if args.command == "batch" else [args.customer_id])]
    if args.command == "batch":
        return stub.BatchRecommend(pb.BatchRecommendRequest(requests=requests), timeout=args.timeout_s)
    return stub.Recommend(requests[0], timeout=args.timeout_s)


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                               preserving_proto_field_name=True), indent=2))


def _services(channel: grpc.Channel, timeout_s: float) -> list[str]:
    """The names a server reports health for: the whole server ('') and, as its reflection lists them, its
    services."""
    names = ["'' (the whole server)"]
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    try:
        for reply in reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(iter([request]),
                                                                                            timeout=timeout_s):
            # grpc.* are health and reflection themselves, which report no health.
            names += sorted(s.name for s in reply.list_services_response.service if not s.name.startswith("grpc."))
    except grpc.RpcError:
        pass  # a server without reflection: the whole server is the one name known here
    return names


def run(args: argparse.Namespace) -> int:
    tls = from_args(ToolTls, args).tls
    if args.command == "status":
        replicas = status.gather(args.index_admin, args.query_admin, args.admin_token, args.timeout_s, tls)
        print(status.table(replicas))
        return 1 if any(status.failed(r) for r in replicas) else 0
    with tls.channel(args.address) as channel:
        if args.command == "health":
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                # The health service answers an unknown name with an empty message.
                print(f"recsys-client: NOT_FOUND: no service {args.service!r} at {args.address}; its services: "
                      f"{', '.join(_services(channel, args.timeout_s))}", file=sys.stderr)
                return 1
            print(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
            return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
        _print(_call(pb_grpc.QueryServiceStub(channel), args))
        return 0


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status" and not (args.index_admin or args.query_admin):
        parser.error("status: give --index-admin and/or --query-admin (the replicas' admin HOST:PORT)")
    try:
        sys.exit(run(args))
    except ConfigError as e:
        parser.error(f"{flag_name(ToolTls, e.field)} {e.message}")
    except grpc.RpcError as e:
        hint = tls_hint(e.details()) if e.code() == grpc.StatusCode.UNAVAILABLE else ""
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # gRPC answers, without the query service: another port
            hint = (f"; {args.address} is not a query service's data port (an index slot's, or an admin port?): "
                    "give the query service's --port address in --address")
        print(f"recsys-client: {e.code().name}: {e.details()}{hint}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
