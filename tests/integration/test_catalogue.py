"""A live catalogue end to end: a model trained by ``recsys-train`` on a file
with a catalogue (genre tokens, a numeric price), served by a real index slot
and query replica with Redis; filters through both services; ``recsys-catalogue``
upserting and deleting candidates on every replica; a restarted slot replaying
the log."""

from __future__ import annotations

import json
import subprocess

import grpc
import numpy as np
import pytest

from model_registry import Registry
from model_registry.deltas import published_generation, read_deltas
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.integration.conftest import MODEL, index_slot, make_live, query_replica
from tests.processes import console_script, wait_until

GENRES = ["rock", "jazz", "folk", "punk"]


@pytest.fixture(scope="module")
def registry_root(tmp_path_factory):
    """A version trained on 300 customers x 200 items; item j has genre GENRES[j % 4] and price j,
    which its candidate tower takes too."""
    root = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,ts"]
    for c in range(300):
        genre = c % 4
        for t, item in enumerate(rng.choice(np.arange(genre, 200, 4), 15, replace=False)):
            rows.append(f"u{c},m{item},{t}")
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    (root / "items.csv").write_text("item_id,genre,price\n" + "".join(f"m{j},{GENRES[j % 4]},{j}\n"
                                                                        for j in range(200)))
    result = subprocess.run(
        [console_script("recsys-train"), "--dataset", "interactions-csv", "--data-path", str(root / "interactions.csv"),
         "--time-col", "ts", "--catalog-path", str(root / "items.csv"), "--catalog-feature-cols", "genre,price",
         "--candidate-features",
         "--registry", str(root / "registry"), "--model", MODEL, "--epochs", "2", "--embedding-dim", "16",
         "--tune-budget-s", "0", "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    make_live(root / "registry", 1)
    return root / "registry"


@pytest.fixture(scope="module")
def stack(registry_root, redis_server, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    index = index_slot(registry_root, "blue", logs / "index.log").start()
    query = query_replica(registry_root, [index], logs / "query.log", "--redis-url", redis_server.url).start()
    yield index, query
    query.stop()
    index.stop()


def _genre(candidate: str) -> str:
    return GENRES[int(candidate[1:]) % 4]


def test_filters_select_crowd_and_name_only_the_versions_namespaces(stack):
    index, query = stack
    with grpc.insecure_channel(query.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        jazz = pb.Filter(restricts=[pb.TokenRestrict(namespace="genre", allow=["jazz"])],
                         ranges=[pb.NumericRange(namespace="price", min=50)])
        response = stub.Recommend(pb.RecommendRequest(customer_id="u0", k=10, filter=jazz))
        ids = [c.candidate_id for c in response.candidates]
        assert len(ids) == 10 and all(_genre(i) == "jazz" and int(i[1:]) >= 50 for i in ids)
        crowded = stub.Recommend(pb.RecommendRequest(
            customer_id="u0", k=8, filter=pb.Filter(crowding_namespace="genre", max_per_value=2)))
        genres = [_genre(c.candidate_id) for c in crowded.candidates]
        assert len(genres) == 8 and all(genres.count(g) == 2 for g in GENRES)
        # A customer the tower does not know gets the popular candidates that pass.
        unknown = stub.Recommend(pb.RecommendRequest(customer_id="nobody", k=5, filter=jazz))
        assert unknown.source == pb.RESULT_SOURCE_POPULARITY_FALLBACK
        assert [_genre(c.candidate_id) for c in unknown.candidates] == ["jazz"] * 5
        with pytest.raises(grpc.RpcError) as error:
            stub.Recommend(pb.RecommendRequest(customer_id="u0", k=5, filter=pb.Filter(
                restricts=[pb.TokenRestrict(namespace="colour", allow=["red"])])))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'colour' is not a token namespace of this version (token namespaces: ['genre'])" in \
            error.value.details()


def _search(address: str, vector, k: int = 10, **kwargs) -> pb.SearchResponse:
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.IndexServiceStub(channel).Search(pb.SearchRequest(vector=vector, k=k, **kwargs), timeout=10)


def test_upserts_and_deletes_reach_every_replica_and_survive_a_restart(stack, registry_root, tmp_path):
    index, query = stack
    with grpc.insecure_channel(query.address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        vector = list(stub.Embed(pb.EmbedRequest(customer_id="u1")).embedding)
        before = stub.Recommend(pb.RecommendRequest(customer_id="u1", k=10))
        assert stub.Recommend(pb.RecommendRequest(customer_id="u1", k=10)).cache_hit
        top = before.candidates[0].candidate_id
        upserts = tmp_path / "upserts.jsonl"
        upserts.write_text(json.dumps({"id": "brand-new", "vector": [10 * v for v in vector],
                                       "tokens": {"genre": ["jazz"]}, "numeric": {"price": 7}}) + "\n")
        result = subprocess.run(
            [console_script("recsys-catalogue"), "--registry", str(registry_root), "--model", MODEL,
             "--upserts", str(upserts), "--delete", top, "--index-admin", index.admin_address,
             "--query-admin", query.admin_address], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert (report["generation"], report["upserts"], report["deletes"], report["failed"]) == (1, 1, 1, {})
        # The call has returned: the next request sees the change, not the cached answer of generation 0.
        after = stub.Recommend(pb.RecommendRequest(customer_id="u1", k=10))
        ids = [c.candidate_id for c in after.candidates]
        assert not after.cache_hit and after.catalogue_generation == 1
        assert ids[0] == "brand-new" and top not in ids
        similar = stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id="brand-new", k=5))
        assert len(similar.candidates) == 5 and similar.catalogue_generation == 1
        jazz_cheap = pb.Filter(restricts=[pb.TokenRestrict(namespace="genre", allow=["jazz"])],
                               ranges=[pb.NumericRange(namespace="price", max=7)])
        found = stub.Recommend(pb.RecommendRequest(customer_id="u1", k=3, filter=jazz_cheap))
        assert [c.candidate_id for c in found.candidates][0] == "brand-new"  # its attributes came with it
        with pytest.raises(grpc.RpcError) as error:
            stub.RecommendSimilar(pb.RecommendSimilarRequest(candidate_id=top, k=5))
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
    answers = _search(index.address, vector, 20)
    # A restarted slot replays the log and answers identically.
    index.stop()
    index.start()
    replayed = _search(index.address, vector, 20)
    assert [(c.candidate_id, c.score) for c in replayed.candidates] == \
        [(c.candidate_id, c.score) for c in answers.candidates]
    assert replayed.catalogue_generation == 1 and top not in {c.candidate_id for c in replayed.candidates}
    with grpc.insecure_channel(index.admin_address) as channel:
        status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest())
    assert (status.versions[0].catalogue_generation, status.versions[0].num_candidates) == (1, 200)
    assert Registry(registry_root, MODEL).versions() == [1]


def test_a_delta_that_does_not_fit_the_version_is_refused_before_it_is_written(stack, registry_root, tmp_path):
    index, _ = stack
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "vector": [1.0, 2.0]}) + "\n")
    result = subprocess.run(
        [console_script("recsys-catalogue"), "--registry", str(registry_root), "--model", MODEL, "--upserts",
         str(bad), "--index-admin", index.admin_address], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "vector must be" in result.stderr
    assert not (registry_root / MODEL / "catalogue" / "1" / "00000002.json").exists()


def test_upserts_given_as_features_are_embedded_by_the_versions_candidate_tower(stack, registry_root, tmp_path):
    index, _ = stack
    version_dir = registry_root / MODEL / "1"
    published = dict(zip(np.load(version_dir / "candidate_ids.npy").tolist(),
                         np.load(version_dir / "candidate_embeddings.npy")))
    upserts = tmp_path / "features.jsonl"
    upserts.write_text("".join(json.dumps(line) + "\n" for line in (
        {"id": "m5", "features": {"genre": "jazz", "price": 5}},  # a published candidate, its own values
        {"id": "fresh-folk", "features": {"genre": ["folk"], "price": 3.5}},
        {"id": "fresh-bare", "features": {}})))
    command = [console_script("recsys-catalogue"), "--registry", str(registry_root), "--model", MODEL,
               "--index-admin", index.admin_address]
    result = subprocess.run(command + ["--upserts", str(upserts)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    generation = json.loads(result.stdout)["generation"]
    delta = read_deltas(registry_root / MODEL, 1, after=generation - 1)[0]
    vectors = dict(zip(delta.ids.tolist(), delta.vectors))
    # The tower embeds a published candidate's own values as training did.
    np.testing.assert_allclose(vectors["m5"], published["m5"], atol=1e-5)
    # A new candidate's values move it off the unknown-id row that a candidate without values gets.
    assert np.abs(vectors["fresh-folk"] - vectors["fresh-bare"]).max() > 1e-3
    # Its attributes come from the same values, and the index serves it.
    folk_cheap = pb.Filter(restricts=[pb.TokenRestrict(namespace="genre", allow=["folk"])],
                           ranges=[pb.NumericRange(namespace="price", max=3.5)])
    found = _search(index.address, vectors["fresh-folk"].tolist(), 3, filter=folk_cheap)
    # m2 is the only published folk candidate priced <= 3.5.
    assert found.catalogue_generation == generation
    assert sorted(c.candidate_id for c in found.candidates) == ["fresh-folk", "m2"]
    # Once the deltas pause, the slot measures its recall again and says at which generation.
    with grpc.insecure_channel(index.admin_address) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        wait_until(lambda: admin.GetStatus(admin_pb2.GetStatusRequest()).versions[0].self_test_generation
                   == generation, 30, "the recall to be measured at the new generation")
        assert admin.GetStatus(admin_pb2.GetStatusRequest()).versions[0].self_test_recall_at_10 >= 0.9

    bad = tmp_path / "bad-features.jsonl"
    bad.write_text(json.dumps({"id": "x", "features": {"colour": "red"}}) + "\n")
    result = subprocess.run(command + ["--upserts", str(bad)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "['colour'] are not columns of this version's candidate tower" in result.stderr
    assert "['genre', 'price']" in result.stderr


def test_an_upsert_whose_features_embed_far_outside_the_versions_scale_is_refused_and_not_written(
        stack, registry_root, tmp_path):
    index, _ = stack
    generation = published_generation(registry_root / MODEL, 1)
    # A price far beyond the trained ones (0..199): the tower embeds it far longer than any trained candidate.
    upserts = tmp_path / "dear.jsonl"
    upserts.write_text(json.dumps({"id": "fresh-dear", "features": {"genre": "jazz", "price": 1e6}}) + "\n")
    result = subprocess.run([console_script("recsys-catalogue"), "--registry", str(registry_root), "--model", MODEL,
                             "--upserts", str(upserts), "--index-admin", index.admin_address],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "upsert 'fresh-dear' has a vector of norm" in result.stderr, result.stderr
    assert "times the largest norm of version 1's trained candidates" in result.stderr
    assert published_generation(registry_root / MODEL, 1) == generation


def test_a_rerun_of_a_delta_no_replica_took_brings_every_replica_to_it(stack, registry_root):
    index, query = stack
    version_dir = registry_root / MODEL / "1"
    held = set(np.load(version_dir / "candidate_ids.npy").tolist())
    for delta in read_deltas(registry_root / MODEL, 1):
        held = (held | set(delta.ids.tolist())) - set(delta.deleted.tolist())
    victim = sorted(held)[0]
    command = [console_script("recsys-catalogue"), "--registry", str(registry_root), "--model", MODEL,
               "--delete", victim, "--query-admin", query.admin_address, "--connect-timeout-s", "1"]

    def index_generation() -> int:
        with grpc.insecure_channel(index.admin_address) as channel:
            status = admin_pb2_grpc.AdminServiceStub(channel).GetStatus(admin_pb2.GetStatusRequest())
        return status.versions[0].catalogue_generation

    # The index replica is listed at an address where nothing answers: the delta is written, taken by none.
    result = subprocess.run(command + ["--index-admin", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    generation = json.loads(result.stdout)["generation"]
    assert index_generation() == generation - 1
    # The same run again: nothing new to write, and every replica catches up to the delta.
    result = subprocess.run(command + ["--index-admin", index.admin_address], capture_output=True, text=True,
                            timeout=120)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stderr
    assert (report["generation"], report["deletes"], report["not_present"], report["failed"]) == \
        (generation, 0, [victim], {})
    assert report["applied"] == [f"index {index.admin_address}", f"query {query.admin_address}"]
    assert index_generation() == generation == published_generation(registry_root / MODEL, 1)
    with grpc.insecure_channel(query.address) as channel:
        answer = pb_grpc.QueryServiceStub(channel).Recommend(pb.RecommendRequest(customer_id="u2", k=5))
    assert answer.catalogue_generation == generation
    result = subprocess.run([console_script("recsys-catalogue"), "--registry", str(registry_root), "--model", MODEL,
                             "--catch-up", "--index-admin", index.admin_address], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout)["generation"] == generation, result.stderr
