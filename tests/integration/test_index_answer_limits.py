"""An index slot process's answers at its message limit: a BatchSearch whose
answer would pass ``--max-message-bytes`` is refused INVALID_ARGUMENT naming
the limit (gRPC's own refusal, after all the work, is a bare RESOURCE_EXHAUSTED
that reads as load shedding), with the call's request id. Real processes:
recsys-train, an index slot (conftest.long_ids_version: candidates with ids of 256 bytes)."""

from __future__ import annotations

import grpc
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from serving import validation
from tests.integration.conftest import index_slot

pytestmark = pytest.mark.integration

LIMIT = 4 << 20  # --max-message-bytes: 16 answers at k = 1000 of ids of 256 bytes take more, 8 less


def test_a_batch_search_answer_over_the_slots_message_limit_is_refused_naming_it(long_ids_version, tmp_path):
    root, vector = long_ids_version
    index = index_slot(root, "blue", tmp_path / "index.log", "--max-message-bytes", str(LIMIT)).start()
    try:
        query = pb.SearchRequest(vector=vector.tolist(), k=1000)
        with grpc.insecure_channel(index.address, options=[("grpc.max_receive_message_length", 1 << 30)]) as channel:
            stub = pb_grpc.IndexServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.BatchSearch(pb.BatchSearchRequest(queries=[query] * 16), timeout=60,
                                 metadata=[("x-request-id", "over-the-limit")])
            error = refused.value
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
            assert f"over the {LIMIT:,} bytes a message may take (--max-message-bytes): split the batch or lower k" \
                in error.details(), error.details()
            assert ("x-request-id", "over-the-limit") in list(error.trailing_metadata())
            answer = stub.BatchSearch(pb.BatchSearchRequest(queries=[query] * 8), timeout=60)
            assert [len(r.candidates) for r in answer.results] == [1000] * 8
            assert all(len(c.candidate_id) == validation.MAX_ID_BYTES for r in answer.results for c in r.candidates)
    finally:
        index.stop()
    assert "ExecuteBatchError" not in index.log_path.read_text()  # gRPC's failure to send, with a traceback
