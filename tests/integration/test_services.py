"""Both real servers over loopback gRPC, with a real Redis and a model trained
by recsys-train: the Recommend path, exclusions, fallbacks, bad input, and
what happens when Redis or the index service goes away."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from model_registry import Registry
from model_registry import manifest as files
from model_registry.deltas import Delta, write_delta
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc
from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.index.index_client import IndexEndpoint
from query_service.index.searches import IndexQuery
from query_service.storage.cache import cache_key
from serving import validation
from tests.conftest import RedisProcess
from tests.integration.conftest import MODEL, index_slot, make_live, query_replica, train
from tests.processes import console_script, start_all, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def version_dir(trained_registry):
    registry = Registry(trained_registry, MODEL)
    return registry.version_dir(registry.current_version())


@pytest.fixture(scope="module")
def query_stub(query_service):
    with grpc.insecure_channel(query_service.address) as channel:
        yield pb_grpc.QueryServiceStub(channel)


@pytest.fixture(scope="module")
def index_stub(index_service):
    with grpc.insecure_channel(index_service.address) as channel:
        yield pb_grpc.IndexServiceStub(channel)


def exact_top_k(version_dir, vector, k, excluded=()):
    ids = np.load(version_dir / files.CANDIDATE_IDS_FILE)
    embeddings = np.load(version_dir / files.CANDIDATE_EMBEDDINGS_FILE)
    scores = embeddings @ np.asarray(vector, np.float32)
    order = [i for i in np.argsort(-scores, kind="stable") if ids[i] not in set(excluded)]
    return [str(ids[i]) for i in order[:k]]


def recommend(stub, customer_id, k=10, exclude=()):
    return stub.Recommend(pb.RecommendRequest(customer_id=customer_id, k=k, exclude_candidate_ids=list(exclude)),
                          timeout=10)


def ids_of(response):
    return [c.candidate_id for c in response.candidates]


def test_recommend_miss_then_hit_and_matches_exact_search_of_its_version(query_stub, version_dir):
    manifest = files.read_manifest(version_dir)
    first = recommend(query_stub, "c000001")
    assert (first.cache_hit, first.source, first.model_version, first.model_name) == (
        False, pb.RESULT_SOURCE_MODEL, manifest.version, MODEL)
    vector = query_stub.Embed(pb.EmbedRequest(customer_id="c000001"), timeout=10).embedding
    assert len(vector) == manifest.embedding_dim
    assert ids_of(first) == exact_top_k(version_dir, vector, 10)  # brute-force index: exact
    scores = [c.score for c in first.candidates]
    assert scores == sorted(scores, reverse=True)

    second = recommend(query_stub, "c000001")
    assert second.cache_hit and ids_of(second) == ids_of(first)
    assert second.model_version == first.model_version


def test_exclusions_are_removed_and_k_still_filled(query_stub, version_dir):
    top = ids_of(recommend(query_stub, "c000002", k=10))
    excluded = top[:3]
    response = recommend(query_stub, "c000002", k=10, exclude=excluded)
    assert not response.cache_hit  # exclusions are part of the cache key
    assert len(response.candidates) == 10 and not set(excluded) & set(ids_of(response))
    vector = query_stub.Embed(pb.EmbedRequest(customer_id="c000002"), timeout=10).embedding
    assert ids_of(response) == exact_top_k(version_dir, vector, 10, excluded)


def test_unknown_customer_gets_popularity_fallback(query_stub, version_dir):
    with np.load(version_dir / files.POPULAR_FILE) as popular:
        expected = [str(i) for i in popular["ids"] if i != popular["ids"][0]][:5]
        excluded = str(popular["ids"][0])
    response = recommend(query_stub, "never-seen-before", k=5, exclude=[excluded])
    assert response.source == pb.RESULT_SOURCE_POPULARITY_FALLBACK
    assert ids_of(response) == expected
    embed = query_stub.Embed(pb.EmbedRequest(customer_id="never-seen-before"), timeout=10)
    assert not embed.known_customer


@pytest.mark.parametrize("request_kwargs, message", [
    ({"customer_id": "c1", "k": 0}, "k=0 is out of range"),
    ({"customer_id": "c1", "k": 1001}, "k=1001 is out of range: ask for 1 to 1000"),
    ({"customer_id": "", "k": 5}, "customer_id is empty"),
    ({"customer_id": "x" * 300, "k": 5}, "at most 256 bytes"),
    ({"customer_id": "c1", "k": 5, "exclude_candidate_ids": ["i"] * 10_001}, "at most 10000"),
])
def test_bad_recommend_input_is_invalid_argument(query_stub, request_kwargs, message):
    with pytest.raises(grpc.RpcError) as err:
        query_stub.Recommend(pb.RecommendRequest(**request_kwargs), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_bad_search_input(index_stub, version_dir):
    dim = files.read_manifest(version_dir).embedding_dim
    cases = [
        (pb.SearchRequest(vector=[0.1] * (dim + 1), k=5), grpc.StatusCode.INVALID_ARGUMENT, "dimensions"),
        (pb.SearchRequest(vector=[float("nan")] * dim, k=5), grpc.StatusCode.INVALID_ARGUMENT, "non-finite"),
        (pb.SearchRequest(vector=[0.1] * dim, k=5, model_version=99), grpc.StatusCode.FAILED_PRECONDITION,
         "version 99 is not loaded"),
        (pb.SearchRequest(vector=[0.1] * dim, k=5, model_version=-1), grpc.StatusCode.INVALID_ARGUMENT,
         "negative"),
    ]
    for request, code, message in cases:
        with pytest.raises(grpc.RpcError) as err:
            index_stub.Search(request, timeout=10)
        assert (err.value.code(), message in err.value.details()) == (code, True), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        index_stub.BatchSearch(pb.BatchSearchRequest(queries=[
            pb.SearchRequest(vector=[0.1] * dim, k=5, model_version=1),
            pb.SearchRequest(vector=[0.1] * dim, k=5, model_version=2)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "one batch searches one version" in \
        err.value.details()


def test_an_amplifying_batch_search_is_refused_and_the_index_keeps_serving(index_stub, version_dir):
    dim = files.read_manifest(version_dir).embedding_dim
    query = pb.SearchRequest(vector=[0.1] * dim, k=1000)
    for count, message in ((10_000, "10000 queries in one batch; at most 1024"),
                           (500, "500 queries x k=1000 = 500000 results; at most 100000")):
        with pytest.raises(grpc.RpcError) as err:
            index_stub.BatchSearch(pb.BatchSearchRequest(queries=[query] * count), timeout=10)
        assert (err.value.code(), message in err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, True), \
            err.value.details()
    assert len(index_stub.Search(pb.SearchRequest(vector=[0.1] * dim, k=5), timeout=10).candidates) == 5


def test_request_bytes_that_do_not_parse_are_invalid_argument(query_stub, query_service, index_service):
    for service, method in ((query_service, "/recsys.v1.QueryService/Recommend"),
                            (index_service, "/recsys.v1.IndexService/BatchSearch")):
        with grpc.insecure_channel(service.address) as channel:
            send_bytes = channel.unary_unary(method)  # no serializers: raw bytes out and in
            for garbage in (b"\x0a\xff\xff", b"\xff" * 64):
                with pytest.raises(grpc.RpcError) as err:
                    send_bytes(garbage, timeout=10, metadata=[("x-request-id", "garbage-1")])
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                assert "bytes do not parse" in err.value.details()
                # As for every failed call: the caller's request id comes back in the trailers.
                assert ("x-request-id", "garbage-1") in tuple(err.value.trailing_metadata()), method
    assert len(recommend(query_stub, "c000040").candidates) == 10


def test_a_forged_redis_value_is_never_served(query_stub, redis_server, version_dir):
    manifest = files.read_manifest(version_dir)
    key = cache_key(MODEL, manifest.version, "c000030", 10, frozenset())
    raw = redis.Redis.from_url(redis_server.url)
    try:
        # Whoever can write to Redis writes a plausible answer under the key the service will look up.
        raw.set(key, json.dumps([["fake-1", "fake-2"], [9.0, 8.0], "model"]), ex=300)
        response = recommend(query_stub, "c000030")
        assert not response.cache_hit and len(response.candidates) == 10
        assert not {"fake-1", "fake-2"} & set(ids_of(response))
        raw.set(key, b"{malformed", ex=300)
        assert not recommend(query_stub, "c000031").cache_hit  # another key: the service is unaffected
        response = recommend(query_stub, "c000030")  # answered from the process's own tier, never Redis
        assert len(response.candidates) == 10 and not {"fake-1", "fake-2"} & set(ids_of(response))
    finally:
        raw.close()


def test_batch_search_answers_each_query_with_its_own_k(index_stub, version_dir):
    manifest = files.read_manifest(version_dir)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, manifest.embedding_dim)).astype(np.float32)
    response = index_stub.BatchSearch(pb.BatchSearchRequest(queries=[
        pb.SearchRequest(vector=v.tolist(), k=k, model_version=manifest.version)
        for v, k in zip(vectors, (1, 5, 20))]), timeout=10)
    assert response.model_version == manifest.version
    for result, vector, k in zip(response.results, vectors, (1, 5, 20)):
        assert ids_of(result) == exact_top_k(version_dir, vector, k)


async def test_a_batch_of_searches_each_within_the_limits_is_not_refused_for_its_size(index_service, version_dir):
    manifest = files.read_manifest(version_dir)
    # Concurrent misses of callers each sending the most exclusions allowed, batched into one index search.
    excluded = frozenset(f"{i:05d}".ljust(250, "x") for i in range(validation.MAX_EXCLUSIONS))
    query = IndexQuery(np.full(manifest.embedding_dim, 0.1, np.float32), 5, excluded)
    endpoint = IndexEndpoint(index_service.address)
    try:
        hits = await endpoint.search([query] * 8, manifest.version, 30)
    finally:
        await endpoint.close()
    assert [len(h.ids) for h in hits] == [5] * 8


async def test_a_batch_of_misses_past_the_index_batch_bounds_is_searched_in_parts(index_service, version_dir):
    manifest = files.read_manifest(version_dir)
    # A --max-batch-size over 100 at k = 1000, and one over the index's 1,024 queries: each miss alone is fine.
    vector = np.full(manifest.embedding_dim, 0.1, np.float32)
    endpoint = IndexEndpoint(index_service.address)
    try:
        deep = await endpoint.search([IndexQuery(vector, 1000, frozenset())] * 101, manifest.version, 30)
        wide = await endpoint.search([IndexQuery(vector, 1, frozenset())] * 1025, manifest.version, 30)
    finally:
        await endpoint.close()
    assert [len(h.ids) for h in deep] == [min(1000, manifest.num_candidates)] * 101
    assert [len(h.ids) for h in wide] == [1] * 1025


def test_health_and_reflection_on_both_services(query_service, index_service):
    for service, name in ((query_service, "recsys.v1.QueryService"), (index_service, "recsys.v1.IndexService")):
        with grpc.insecure_channel(service.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                  timeout=10)
            names = {s.name for r in responses for s in r.list_services_response.service}
        assert {name, "grpc.health.v1.Health"} <= names


def test_redis_outage_degrades_to_uncached_serving(trained_registry, index_service, tmp_path):
    redis = RedisProcess().start()
    query = query_replica(trained_registry, [index_service], tmp_path / "query.log", "--redis-url", redis.url,
                          "--redis-timeout-s", "0.05", "--local-cache-mb", "0")
    try:
        query.start()
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            assert not recommend(stub, "c000010").cache_hit
            assert recommend(stub, "c000010").cache_hit
            redis.stop()
            for _ in range(5):
                response = recommend(stub, "c000010")
                assert not response.cache_hit and len(response.candidates) == 10
            redis.start()

            def cached_again() -> bool:
                recommend(stub, "c000011")
                return recommend(stub, "c000011").cache_hit

            wait_until(cached_again, 15, "the cache to come back after Redis restarted", interval_s=0.5)
    finally:
        query.stop()
        redis.stop()


def test_index_outage_fails_fast_with_unavailable_and_recovers(trained_registry, redis_server, tmp_path):
    """Without Redis the replica's in-process tier is its cache: through an index outage it
    still answers what it answered before, and fails fast on everything else."""
    index = index_slot(trained_registry, "blue", tmp_path / "index.log")
    query = query_replica(trained_registry, [index], tmp_path / "query.log")  # no --redis-url
    try:
        start_all(index, query)
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            answered = recommend(stub, "c000020")
            assert len(answered.candidates) == 10 and not answered.cache_hit
            index.stop()
            held = recommend(stub, "c000020")
            assert held.cache_hit and ids_of(held) == ids_of(answered)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                recommend(stub, "c000021")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no index endpoint holds version" in err.value.details()
            assert index.address not in err.value.details()  # addresses are for the log, not for callers
            assert time.monotonic() - start < 3.0
            # The popularity fallback needs no index, so it keeps working.
            assert recommend(stub, "unknown-customer").source == pb.RESULT_SOURCE_POPULARITY_FALLBACK
            index.start()

            def recovered() -> bool:
                try:
                    return len(recommend(stub, "c000022").candidates) == 10
                except grpc.RpcError:
                    return False

            wait_until(recovered, 20, "the query service to reach the restarted index", interval_s=0.5)
    finally:
        query.stop()
        index.stop()


def test_sigterm_drains_not_serving_first_then_stops_with_nothing_lost(trained_registry, index_service, tmp_path):
    query = query_replica(trained_registry, [index_service], tmp_path / "query.log", "--shutdown-drain-s", "1.5")
    query.start()
    outcomes: list[str] = []
    try:
        with grpc.insecure_channel(query.address) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            calls = [stub.Recommend.future(pb.RecommendRequest(customer_id=f"c{i:06d}", k=10), timeout=10)
                     for i in range(40)]  # in flight when the signal arrives
            query.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                       == health_pb2.HealthCheckResponse.NOT_SERVING, 1.0, "health to say NOT_SERVING")
            # Draining: a client that has not yet noticed is still answered.
            assert len(recommend(stub, "c000050").candidates) == 10
            for call in calls:
                try:
                    outcomes.append("ok" if len(call.result().candidates) == 10 else "short")
                except grpc.RpcError as e:
                    outcomes.append(e.code().name)
        assert query.proc.wait(10) == 0
    finally:
        query.stop()
    assert outcomes == ["ok"] * 40


def test_a_service_given_the_publishers_key_loads_only_versions_and_deltas_it_signed(trained_registry, tmp_path):
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "signing.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "signing.pub").write_bytes(public)
    verify = ["--manifest-public-key", str(tmp_path / "signing.pub")]
    signed = tmp_path / "signed-registry"
    train(signed, "--signing-key-file", str(tmp_path / "signing.pem"))
    make_live(signed, 1)
    slot = index_slot(signed, "blue", tmp_path / "signed.log", *verify)
    try:
        slot.start()  # recsys-train signed it: it loads
        vector = [0.5] * Registry(signed, MODEL).manifest(1).embedding_dim
        upserts = tmp_path / "upserts.jsonl"
        upserts.write_text(json.dumps({"id": "signed-new", "vector": [10 * v for v in vector]}) + "\n")
        result = subprocess.run(
            [console_script("recsys-catalogue"), "--registry", str(signed), "--model", MODEL, "--upserts",
             str(upserts), "--index-admin", slot.admin_address, "--signing-key-file", str(tmp_path / "signing.pem")],
            capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["applied"] == [f"index {slot.admin_address}"]
        # A registry writer without the key appends a delta: the slot refuses it and keeps generation 1.
        write_delta(signed / MODEL, 1, Delta.make(["forged"], np.ones((1, len(vector)), np.float32)))
        with grpc.insecure_channel(slot.admin_address) as channel:
            admin = admin_pb2_grpc.AdminServiceStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                admin.ApplyCatalogue(admin_pb2.ApplyCatalogueRequest(version=1, generation=2), timeout=30)
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "catalogue delta 2 of version 1 is unsigned" in error.value.details()
            assert admin.GetStatus(admin_pb2.GetStatusRequest()).versions[0].catalogue_generation == 1
        with grpc.insecure_channel(slot.address) as channel:
            found = {c.candidate_id for c in pb_grpc.IndexServiceStub(channel).Search(
                pb.SearchRequest(vector=vector, k=50), timeout=10).candidates}
        assert "signed-new" in found and "forged" not in found
    finally:
        slot.stop()
    unsigned = index_slot(trained_registry, "green", tmp_path / "unsigned.log", "--version", "1", *verify)
    try:
        with pytest.raises(RuntimeError, match="is unsigned"):
            unsigned.start()
    finally:
        unsigned.stop()  # one that started after all (the failure above) must not outlive the test


def test_a_replica_started_into_more_connections_than_it_has_file_descriptors_stays_up(trained_registry,
                                                                                       index_service, redis_server,
                                                                                       tmp_path):
    """120 callers, each on a connection of its own, against a replica limited to 64 file descriptors from its start:
    calls it cannot take fail or wait, Redis is backed off, and the process stays up. TensorFlow aborted it (SIGABRT)
    when a tower thread's first call could not open /dev/urandom to seed that thread's random generator."""
    query = query_replica(trained_registry, [index_service], tmp_path / "query.log", "--redis-url", redis_server.url)
    query.wrapper = ["prlimit", "--nofile=64:64", "--"]
    query.start()
    outcomes: list[str] = []
    storm = threading.Event()

    def caller(i: int) -> None:
        # A subchannel pool of its own: a connection per caller, as 120 client processes would open.
        with grpc.insecure_channel(query.address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            stub = pb_grpc.QueryServiceStub(channel)
            n = 0
            while storm.is_set():
                n += 1
                try:  # a new exclusion each call: a miss, a tower call
                    stub.Recommend(pb.RecommendRequest(customer_id=f"c{i:06d}", k=10,
                                                       exclude_candidate_ids=[f"x{n}"]), timeout=1)
                    outcomes.append("OK")
                except grpc.RpcError as e:
                    outcomes.append(e.code().name)

    callers = [threading.Thread(target=caller, args=(i,)) for i in range(120)]
    storm.set()
    try:
        for thread in callers:
            thread.start()
        time.sleep(6)
    finally:
        storm.clear()
        for thread in callers:
            thread.join()
    try:
        assert query.proc.poll() is None, f"exited with {query.proc.returncode}:\n{query.log_tail()}"
        assert "OK" in outcomes
        with grpc.insecure_channel(query.address) as channel:  # the storm over, every call is answered again
            reply = pb_grpc.QueryServiceStub(channel).Recommend(pb.RecommendRequest(customer_id="c000001", k=5),
                                                                timeout=10)
        assert len(reply.candidates) == 5
    finally:
        query.stop()


def test_a_replica_raises_its_open_file_limit_to_the_hard_limit(trained_registry, tmp_path):
    """A soft limit of 1,024 (systemd's, a shell's) refused the 1,025th connection while the hard limit allowed
    far more: the services take the hard limit, the operator's choice, at start."""
    slot = index_slot(trained_registry, "fd-limit", tmp_path / "slot.log", "--version", "1")
    slot.wrapper = ["prlimit", "--nofile=64:4096", "--"]
    slot.start()
    try:
        limits = Path(f"/proc/{slot.proc.pid}/limits").read_text()
        assert re.search(r"^Max open files\s+4096\s+4096\s", limits, re.M), limits
        assert "open file limit raised from 64 to 4096" in slot.log_tail()
    finally:
        slot.stop()
