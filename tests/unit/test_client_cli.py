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


@pytest.mark.parametrize("argv, message", [
    # Each reached a server: inf, 0, nan and 1e300 (past gRPC's deadline) failed at once with DEADLINE_EXCEEDED.
    (["--timeout-s", "inf"], "--timeout-s: inf is out of range: give seconds over 0 and at most 86400 (a day)"),
    (["--timeout-s", "-1"], "--timeout-s: -1 is out of range"),
    (["--timeout-s", "1e300"], "--timeout-s: 1e300 is out of range"),
    (["--timeout-s", "soon"], "--timeout-s: 'soon' is not a number of seconds"),
    # Port 65536 + P answered from the service on port P (gRPC takes the port modulo 65536).
    (["--address", "127.0.0.1:70000"], "--address: '127.0.0.1:70000' is not HOST:PORT with a port from 1 to 65535"),
    (["--address", "127.0.0.1:0"], "--address: '127.0.0.1:0' is not HOST:PORT"),
])
def test_a_deadline_or_address_out_of_range_is_refused_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["recommend", "--address", "127.0.0.1:1", "--customer-id", "c1", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_an_address_the_flag_takes():
    for address in ("127.0.0.1:50051", "[::1]:50051", "query.recsys.svc:443", "unix:/run/recsys.sock"):
        assert cli.build_parser().parse_args(["embed", "--address", address, "--customer-id", "c"]).address == address



def test_status_takes_admin_addresses_as_host_port_only(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["status", "--index-admin", "127.0.0.1:1", "--query-admin", "127.0.0.1:70000"])
    assert exit_.value.code == 2 and "--query-admin: '127.0.0.1:70000' is not HOST:PORT" in capsys.readouterr().err
