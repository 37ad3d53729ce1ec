"""A bare grpc.aio QueryService that answers Recommend with a canned response
of the same size as the real one: the ceiling of Python gRPC on this machine,
against which the real service is compared.

    python bench/echo_server.py --port P [--k 10]
"""

from __future__ import annotations

import argparse

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving.rpc.grpc_server import ServiceSpec, run_event_loop, serve_until_signalled, start_server


class EchoServicer(pb_grpc.QueryServiceServicer):
    def __init__(self, k: int):
        self.response = pb.RecommendResponse(
            candidates=[pb.ScoredCandidate(candidate_id=f"i{i:06d}", score=1.0 / (i + 1)) for i in range(k)],
            model_version=1, model_name="echo", source=pb.RESULT_SOURCE_MODEL)

    async def Recommend(self, request, context):
        return self.response


async def serve(port: int, k: int) -> None:
    running = await start_server([ServiceSpec(pb_grpc.add_QueryServiceServicer_to_server, EchoServicer(k),
                                              "recsys.v1.QueryService")], "127.0.0.1", port)
    await running.set_serving(True)
    await serve_until_signalled(running.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    run_event_loop(serve(args.port, args.k))


if __name__ == "__main__":
    main()
