"""A bare grpc.aio QueryService that answers Recommend with a canned response
of the same size as the real one: the ceiling of Python gRPC on this machine,
against which the real service is compared. Bare: a ``grpc.aio.server()`` with
health and reflection (what the load tools ask of a server) and none of the
services' interceptors (timing, request ids, call limits: until stop 62 it was
started as the services are, and so the baseline carried their cost too).

    python bench/echo_server.py --port P [--k 10]
"""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving.rpc.grpc_server import CannotListen, add_port, run_event_loop, serve_until_signalled

SERVICE_NAME = "recsys.v1.QueryService"


class EchoServicer(pb_grpc.QueryServiceServicer):
    def __init__(self, k: int):
        self.response = pb.RecommendResponse(
            candidates=[pb.ScoredCandidate(candidate_id=f"i{i:06d}", score=1.0 / (i + 1)) for i in range(k)],
            model_version=1, model_name="echo", source=pb.RESULT_SOURCE_MODEL)

    async def Recommend(self, request, context):
        return self.response


async def serve(port: int, k: int) -> None:
    # gRPC's default shares a port already taken (SO_REUSEPORT): a second echo server would split the load.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_QueryServiceServicer_to_server(EchoServicer(k), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    try:
        add_port(server, f"127.0.0.1:{port}")
    except CannotListen as e:
        raise SystemExit(f"echo server: {e}") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    await serve_until_signalled(server.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    run_event_loop(serve(args.port, args.k))


if __name__ == "__main__":
    main()
