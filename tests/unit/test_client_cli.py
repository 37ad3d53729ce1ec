"""recsys-client against a real gRPC server in process: what the data plane may send, the client takes."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client import cli
from serving.validation import DEFAULT_MAX_MESSAGE_BYTES, MAX_ID_BYTES


class LongAnswers(pb_grpc.QueryServiceServicer):
    """Answers each request of a BatchRecommend with k candidates whose ids are as long as ids may be."""

    def BatchRecommend(self, request, context):
        return pb.BatchRecommendResponse(responses=[
            pb.RecommendResponse(candidates=[pb.ScoredCandidate(candidate_id=f"{j:0{MAX_ID_BYTES}d}", score=1.0)
                                             for j in range(r.k)]) for r in request.requests])


def test_a_batch_answer_over_grpcs_default_4_mib_is_taken(capsys):
    limits = [("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
              ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES)]
    server = grpc.server(ThreadPoolExecutor(2), options=limits)  # as the query service's data plane
    pb_grpc.add_QueryServiceServicer_to_server(LongAnswers(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        customers = ",".join(f"c{i}" for i in range(20))  # 20 x 1000 ids of 256 bytes: ~5.3 MB
        with pytest.raises(SystemExit) as exit_:
            cli.main(["batch", "--address", f"127.0.0.1:{port}", "--customer-ids", customers, "--k", "1000",
                      "--timeout-s", "30"])
        captured = capsys.readouterr()
        assert exit_.value.code == 0, captured.err
        answers = json.loads(captured.out)["responses"]
        assert len(answers) == 20 and all(len(a["candidates"]) == 1000 for a in answers)
    finally:
        server.stop(None)
