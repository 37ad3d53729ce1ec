"""A history-aware version served end to end: the tower reads the stored history,
the live one (RecordInteractions) or the request's, unknown customers with a
history get personal results, and exclude_seen removes what the customer
already interacted with."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry import manifest as files
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.conftest import RedisProcess
from tests.integration.conftest import MODEL, blue_and_query, index_slot, make_live, query_replica, train
from tests.processes import start_all

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def history_version(tmp_path_factory):
    root = tmp_path_factory.mktemp("history-registry")
    train(root, "--tower", "history")
    make_live(root, 1)
    return Registry(root, MODEL).version_dir(1)


@pytest.fixture(scope="module")
def stub(history_version, redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("history-logs")
    root = history_version.parent.parent
    with blue_and_query(root, logs, redis_server.url) as (_, query), grpc.insecure_channel(query.address) as channel:
        yield pb_grpc.QueryServiceStub(channel)


def recommend(stub, customer_id, **kwargs):
    return stub.Recommend(pb.RecommendRequest(customer_id=customer_id, k=kwargs.pop("k", 10), **kwargs), timeout=10)


def ids_of(response):
    return [c.candidate_id for c in response.candidates]


def stored(version_dir, customer_id):
    with np.load(version_dir / files.CUSTOMER_STORE_FILE) as store:
        row = int(np.searchsorted(store["ids"], customer_id))
        assert store["ids"][row] == customer_id
        seen = store["seen_items"][store["seen_offsets"][row]:store["seen_offsets"][row + 1]]
        history = [h for h in store["history"][row] if h]
    return set(seen.tolist()), history


def test_version_takes_a_history(history_version):
    assert files.read_manifest(history_version).tower == "history"


def test_exclude_seen_removes_every_training_item(stub, history_version):
    seen, _ = stored(history_version, "c000005")
    response = recommend(stub, "c000005", k=50, exclude_seen=True)
    assert response.source == pb.RESULT_SOURCE_MODEL and len(response.candidates) == 50
    assert not seen & set(ids_of(response))
    assert seen & set(ids_of(recommend(stub, "c000005", k=50)))  # without the flag they do come back


def test_unknown_customer_with_a_history_gets_that_history_s_results(stub, history_version):
    _, history = stored(history_version, "c000007")
    assert recommend(stub, "brand-new").source == pb.RESULT_SOURCE_POPULARITY_FALLBACK
    with_history = recommend(stub, "brand-new", recent_candidate_ids=history)
    assert with_history.source == pb.RESULT_SOURCE_MODEL
    other = recommend(stub, "brand-new", recent_candidate_ids=history[-1:] if len(history) > 1 else ["i000001"])
    assert ids_of(with_history) != ids_of(other)  # the request's history drives the results
    excluded = recommend(stub, "brand-new", recent_candidate_ids=history, exclude_seen=True, k=20)
    assert not set(history) & set(ids_of(excluded))


def test_bad_recent_ids_are_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as err:
        recommend(stub, "c000001", recent_candidate_ids=["ok", ""])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "recent_candidate_ids[1] is empty" in err.value.details()


# ------------------------------------------------------------------ the live history (RecordInteractions)


def record(stub, customer_id, candidate_ids):
    return stub.RecordInteractions(pb.RecordInteractionsRequest(customer_id=customer_id,
                                                                candidate_ids=candidate_ids), timeout=10)


def scores_of(response):
    return [c.score for c in response.candidates]


def test_a_recorded_interaction_changes_the_next_recommend_and_is_excluded_as_seen(stub, history_version):
    seen, history = stored(history_version, "c000009")
    _, elsewhere = stored(history_version, "c000150")
    new_items = [i for i in elsewhere if i not in seen][:5]
    assert new_items
    before = recommend(stub, "c000009")
    assert recommend(stub, "c000009").cache_hit
    assert record(stub, "c000009", new_items).history_length == len(set(new_items))  # each item once
    after = recommend(stub, "c000009")
    assert not after.cache_hit  # the customer's cached result is no longer served
    assert after.source == pb.RESULT_SOURCE_MODEL and scores_of(after) != scores_of(before)
    assert recommend(stub, "c000009").cache_hit  # until the next interaction, the new one is
    excluded = recommend(stub, "c000009", k=50, exclude_seen=True)
    assert len(excluded.candidates) == 50 and not (set(new_items) | seen) & set(ids_of(excluded))


def test_with_redis_stopped_recommend_uses_the_stored_history_and_recording_fails(history_version, tmp_path):
    root = history_version.parent.parent
    redis = RedisProcess().start()
    index = index_slot(root, "blue", tmp_path / "index.log")
    (tmp_path / "cache.key").write_text("a secret the replicas share")  # live history entries carry its HMAC
    query = query_replica(root, [index], tmp_path / "query.log", "--redis-url", redis.url, "--local-cache-mb", "0",
                          "--cache-key-file", str(tmp_path / "cache.key"))
    try:
        start_all(index, query)
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            from_store = recommend(stub, "c000012")
            _, elsewhere = stored(history_version, "c000160")
            record(stub, "c000012", elsewhere[:5])
            assert scores_of(recommend(stub, "c000012")) != scores_of(from_store)
            redis.stop()
            for _ in range(3):
                answer = recommend(stub, "c000012")
                assert (ids_of(answer), answer.cache_hit) == (ids_of(from_store), False)
            with pytest.raises(grpc.RpcError) as err:
                record(stub, "c000012", ["i000001"])
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "Redis" in err.value.details()
    finally:
        query.stop()
        index.stop()
        redis.stop()


def test_embed_takes_the_live_history_as_recommend_does(stub, history_version):
    """Embed is the vector Recommend searches with: for a customer the model never saw, once they have a live
    history, exact search of the version's candidates with it finds what Recommend answers."""
    _, elsewhere = stored(history_version, "c000170")
    before = np.array(stub.Embed(pb.EmbedRequest(customer_id="newcomer-embed"), timeout=10).embedding)
    record(stub, "newcomer-embed", elsewhere[:5])
    vector = np.array(stub.Embed(pb.EmbedRequest(customer_id="newcomer-embed"), timeout=10).embedding, np.float32)
    assert not np.allclose(vector, before)
    ids = np.load(history_version / files.CANDIDATE_IDS_FILE)
    scores = np.load(history_version / files.CANDIDATE_EMBEDDINGS_FILE) @ vector
    top = {str(ids[i]) for i in np.argsort(-scores, kind="stable")[:10]}
    answer = recommend(stub, "newcomer-embed")
    assert answer.source == pb.RESULT_SOURCE_MODEL
    assert len(top & set(ids_of(answer))) >= 9, (sorted(top), ids_of(answer))  # float ties may swap the 10th
