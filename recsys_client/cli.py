"""recsys-client: call the query and index services from a shell.

    recsys-client recommend --address HOST:PORT --customer-id ID --k 10 [--exclude ID ...]
    recsys-client embed     --address HOST:PORT --customer-id ID
    recsys-client health    --address HOST:PORT [--service NAME]

Against servers serving TLS: ``--tls-ca CA.pem`` (and, for mutual TLS,
``--tls-cert`` / ``--tls-key``).

Prints the response as JSON; on an RPC error prints the status code and message
to stderr and exits 1 (health exits 1 unless SERVING).
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving.tls import ClientTls
from settings.flags import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("recommend", "embed", "health"):
        sub = commands.add_parser(name)
        sub.add_argument("--address", required=True, help="service HOST:PORT")
        sub.add_argument("--timeout-s", type=float, default=5.0, help="RPC deadline")
        sub.add_argument("--tls-ca", default="", help="PEM CA bundle of the server's certificate: TLS")
        sub.add_argument("--tls-cert", default="", help="PEM client certificate (mutual TLS)")
        sub.add_argument("--tls-key", default="", help="PEM private key of the client certificate")
        if name in ("recommend", "embed"):
            sub.add_argument("--customer-id", required=True)
        if name == "recommend":
            sub.add_argument("--k", type=int, default=10)
            sub.add_argument("--exclude", nargs="*", default=[], help="candidate ids to exclude")
        if name == "health":
            sub.add_argument("--service", default="", help="service name; empty for the whole server")
    return parser


def _print(message) -> None:
    print(json.dumps(json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                               preserving_proto_field_name=True), indent=2))


def run(args: argparse.Namespace) -> int:
    tls = ClientTls(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    with tls.channel(args.address) as channel:
        if args.command == "health":
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s)
            print(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
            return 0 if response.status == health_pb2.HealthCheckResponse.SERVING else 1
        stub = pb_grpc.QueryServiceStub(channel)
        if args.command == "recommend":
            response = stub.Recommend(pb.RecommendRequest(customer_id=args.customer_id, k=args.k,
                                                          exclude_candidate_ids=args.exclude),
                                      timeout=args.timeout_s)
        else:
            response = stub.Embed(pb.EmbedRequest(customer_id=args.customer_id), timeout=args.timeout_s)
        _print(response)
        return 0


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sys.exit(run(args))
    except ConfigError as e:
        parser.error(f"--tls-{e.field.replace('_', '-')} {e.message}")
    except grpc.RpcError as e:
        print(f"recsys-client: {e.code().name}: {e.details()}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
