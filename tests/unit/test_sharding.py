"""Sharded versions in process: the id -> shard rule, the manifest's shards,
each shard's index loaded as an index endpoint would, merged answers equal to
one index over every candidate, catalogue deltas split by shard, and the
verification of one shard's files only."""

from __future__ import annotations

import numpy as np
import pytest

from index_service.searcher import CandidateIndex
from index_service.slot import SlotAdmin
from model_registry import Registry, VersionError, verify_version
from model_registry import manifest as files
from model_registry.attributes import Attributes
from model_registry.deltas import Delta
from query_service.index.merge import merge_hits, union
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.index.searches import IndexHits, IndexQuery, SimilarQuery
from serving import validation
from serving.lifecycle.loader import Background, Loader
from serving.lifecycle.sources import StartupVersions
from serving.lifecycle.versions import State, VersionManager
from serving.rpc.admin_rpc import status_proto
from tests.unit import tiny_versions as tiny

SHARDS = 3


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    registry = Registry(tmp_path_factory.mktemp("sharded"), tiny.MODEL)
    tiny.publish(registry, 1)
    tiny.publish(registry, 1, shards=SHARDS)
    return registry


def load_shard(registry: Registry, shard: int | None, version: int = 2) -> CandidateIndex:
    directory = registry.version_dir(version)
    return CandidateIndex.load(directory, verify_version(directory, files.index_reads(shard)), shard=shard)


def test_shard_of_is_a_stable_function_of_the_id_that_spreads_ids():
    ids = [f"item-{i}" for i in range(3000)]
    shards = files.shard_of(ids, 4)
    assert shards.tolist() == files.shard_of(list(reversed(ids)), 4)[::-1].tolist()
    assert files.shard_of(["item-7"], 4)[0] == shards[7]
    counts = np.bincount(shards, minlength=4)
    assert counts.min() > 600, counts  # 750 each if perfectly even


def test_the_manifest_records_each_shard_and_round_trips(registry):
    manifest = files.read_manifest(registry.version_dir(2))
    assert len(manifest.shards) == SHARDS and manifest.index.kind == "sharded"
    assert sum(s.num_candidates for s in manifest.shards) == manifest.num_candidates == len(tiny.CANDIDATES)
    assert manifest.index.recall_at_10 == 1.0  # brute-force shards merged: exact
    assert files.Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.shard(1).num_candidates == manifest.shards[1].num_candidates
    with pytest.raises(VersionError, match="--shard 0..2"):
        manifest.shard(None)
    with pytest.raises(VersionError, match="has 3 shards; this endpoint serves shard 3"):
        manifest.shard(3)
    with pytest.raises(VersionError, match="has no shards"):
        files.read_manifest(registry.version_dir(1)).shard(0)


def test_each_shard_holds_its_own_candidates_and_merged_answers_are_the_whole_index(registry):
    shards = [load_shard(registry, s) for s in range(SHARDS)]
    whole = load_shard(registry, None, version=1)
    for number, index in enumerate(shards):
        assert index.shard == (number, SHARDS)
        assert set(files.shard_of(index.rows.id_of(np.arange(index.num_candidates)), SHARDS)) == {number}
    queries, _ = tiny.embeddings(1)
    for k in (1, 10, 50):
        expected = whole.search(queries, k)
        parts = [index.search(queries, k) for index in shards]
        for q, want in enumerate(expected):
            merged = merge_hits([IndexHits(p[q].ids, p[q].scores, generation=g) for g, p in enumerate(parts)], k)
            assert merged.ids == want.ids
            np.testing.assert_allclose(merged.scores, want.scores, rtol=1e-5)
            assert merged.generation == 0  # the lowest of the shards'
            # Shards at different generations (mid-way through a catalogue rollout) match none: never cached.
            assert merged.changing == (SHARDS > 1)
    same = merge_hits([IndexHits(["a"], [1.0], generation=3), IndexHits(["b"], [0.5], generation=3)], 2)
    assert (same.generation, same.changing) == (3, False)
    mixed = union(IndexHits(["a"], [1.0], 3, crowding=[()]), IndexHits(["b"], [0.5], 2, crowding=[()]))
    assert (mixed.generation, mixed.changing) == (2, True)


def test_a_delta_upserts_into_the_owning_shard_and_deletes_everywhere(registry):
    shards = [load_shard(registry, s) for s in range(SHARDS)]
    new = [f"new{i}" for i in range(12)]
    vectors = np.random.default_rng(3).normal(size=(len(new), tiny.DIM)).astype(np.float32)
    gone = tiny.CANDIDATES[:5].tolist()
    delta = Delta.make(new, vectors, Attributes(len(new)), deleted=gone)
    for index in shards:
        index.apply_catalogue([delta], 1)
    owner = files.shard_of(new, SHARDS)
    for number, index in enumerate(shards):
        held = set(index.rows.id_of(np.arange(index.num_candidates)))
        assert {i for i, o in zip(new, owner) if o == number} <= held
        assert not {i for i, o in zip(new, owner) if o != number} & held
        assert not set(gone) & held
        assert index.catalogue_generation == 1
    assert sum(index.num_candidates for index in shards) == len(tiny.CANDIDATES) + len(new) - len(gone)


def test_a_shard_endpoint_verifies_its_own_files_not_the_other_shards(registry):
    directory = registry.version_dir(2)
    other = directory / files.SHARDS_DIR / "2" / files.CANDIDATE_IDS_FILE
    original = other.read_bytes()
    try:
        other.write_bytes(original[:-8] + b"tampered")
        verify_version(directory, files.index_reads(0))  # shard 0 reads none of shard 2's files
        with pytest.raises(VersionError, match="shards/2/candidate_ids.npy fails its sha256"):
            verify_version(directory, files.index_reads(2))
    finally:
        other.write_bytes(original)


def test_a_shard_endpoint_names_its_shard_in_its_admin_status(registry):
    def endpoint(shard: int | None, version: int):
        loader = Loader(registry, lambda path, manifest: CandidateIndex.load(path, manifest, 0.9, shard), "index",
                        Background.IDLE, files.index_reads(shard))
        admin = SlotAdmin("blue", registry, VersionManager(tiny.MODEL), loader, lambda: 0.0, 0.0)
        admin.start(StartupVersions(version))
        return status_proto(admin.status())

    sharded, whole = endpoint(1, 2), endpoint(None, 1)
    assert (sharded.slot, sharded.shard, sharded.shards, sharded.live_version) == ("blue", 1, SHARDS, 2)
    assert (whole.shard, whole.shards) == (0, 0)


async def test_similar_on_a_sharded_version_takes_as_many_exclusions_as_an_unsharded_one():
    router = IndexRouter(RoutingConfig(addresses=("owner:1", "other:1")))
    candidate = "item-7"
    owner = int(files.shard_of([candidate], 2)[0])
    for endpoint, shard in zip(router.endpoints, (owner, 1 - owner)):
        endpoint.versions, endpoint.shard, endpoint.shards = {1: State.SERVING}, shard, 2
    sent: list[frozenset[str]] = []

    # The network calls are replaced by the index's own checks: what the router sends is under test.
    async def similar(query, version, timeout_s, with_vector=False):
        validation.check_exclusions(query.exclusions)
        return IndexHits(["near"], [2.0], vector=np.zeros(2, np.float32))

    async def search(queries, version, timeout_s):
        sent.append(queries[0].exclusions)
        validation.check_exclusions(queries[0].exclusions)
        return [IndexHits(["far"], [1.0])]

    router.endpoints[0].similar, router.endpoints[1].search = similar, search
    allowed = frozenset(f"x{i}" for i in range(validation.MAX_EXCLUSIONS))
    hits = await router.similar(SimilarQuery(candidate, 2, allowed), 1)
    assert hits.ids == ["near", "far"] and sent == [allowed]  # the candidate lives in its own shard only
    await router.close()


async def test_the_replicas_of_a_shard_take_turns_whatever_the_other_shards_hold():
    router = IndexRouter(RoutingConfig(addresses=("shard0:1", "shard1-a:1", "shard1-b:1"), hedge_ms=0))
    first: list[str] = []
    for endpoint, shard in zip(router.endpoints, (0, 1, 1)):
        endpoint.versions, endpoint.shard, endpoint.shards = {1: State.SERVING}, shard, 2

        def fake_search(address):
            async def search(queries, version, timeout_s):
                first.append(address)
                return [IndexHits([address], [1.0])]
            return search

        endpoint.search = fake_search(endpoint.address)  # routing is under test, not the network
    for _ in range(10):
        await router.search([IndexQuery(np.zeros(2, np.float32), 1, frozenset())], 1)
    assert first.count("shard1-a:1") == first.count("shard1-b:1") == 5, first
    await router.close()


def test_shards_crowded_alone_are_crowded_again_when_merged():
    """The merge crowds the shards' answers together: two shards' best Dramas together were two Dramas at one per
    genre. The index names each result's tokens (through the proto, as the query service reads them) for it."""
    from index_service.core import Answer
    from index_service.searcher import SearchResult
    from index_service.servicer import _response
    from query_service.index.index_client import _hits
    from query_service.index.merge import shard_depth
    from serving.filters import NO_FILTER, check_filter

    def shard(ids, scores, tokens) -> IndexHits:  # as the query service receives a shard's answer
        return _hits(_response(SearchResult(ids, scores, crowding=tokens), Answer(2, 0), tiny.MODEL), 0)

    a = shard(["heat", "up", "fargo"], [0.9, 0.7, 0.5], [("Crime", "Drama"), ("Animation",), ("Crime",)])
    b = shard(["casablanca", "alien", "brazil"], [0.8, 0.6, 0.4], [("Drama", "Romance"), ("Sci-Fi",), ("Sci-Fi",)])
    assert a.crowding == [("Crime", "Drama"), ("Animation",), ("Crime",)]
    assert merge_hits([a, b], 3).ids == ["heat", "casablanca", "up"]  # no crowding asked: by score alone
    merged = merge_hits([a, b], 3, max_per_value=1)
    assert merged.ids == ["heat", "up", "alien"] and merged.scores == pytest.approx([0.9, 0.7, 0.6])
    assert merge_hits([a, b], 4, max_per_value=2).ids == ["heat", "casablanca", "up", "alien"]
    # Each shard is asked first for more than k when crowding: the crowded top k reaches deeper into its answer.
    crowded = check_filter([], [], "genres", 1)
    assert [shard_depth(10, f, 3) for f in (NO_FILTER, crowded)] == [10, 30]
    assert shard_depth(600, crowded, 4) == validation.DEFAULT_MAX_K and shard_depth(10, crowded, 1) == 10
