"""A live catalogue in process: the delta log (atomic, checksummed, chained),
catalogue deltas applied to real ScaNN searchers (tree-AH and brute force),
filters against exact filtered search, crowding, item-to-item, the filtered
popularity fallback, and replay at load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from index_service import core as index_core
from index_service import searcher as index_searcher
from index_service import slot as slot_admin
from index_service.attributes import AttributeColumns
from index_service.rows import Deletion, Rows
from index_service.searcher import DELTA_CHUNK, RECHECK_PROBES, REPLAY_CHUNK, CandidateIndex, _scann_pybind
from index_service.servicer import IndexServicer
from model_registry import IndexSpec, Manifest, Registry, VersionError
from model_registry import deltas
from model_registry.attributes import Attributes, from_catalogue
from model_registry.deltas import Delta, published_generation, read_deltas, write_delta
from model_registry.manifest import SIGNATURE_FILE
from protos.recsys.v1 import admin_pb2, admin_pb2_grpc, retrieval_pb2, versions_pb2
from recsys_client.candidate_tower import CandidateTower
from recsys_client.catalogue import main as catalogue_main
from recsys_client.delta_rollout import apply_everywhere, catch_up, publish_delta
from recsys_client.fleet import Fleet, Replica, check_fleet
from recsys_client.interrupts import Interrupted
from recsys_client.upserts import CatalogueError, read_upserts
from serving import errors
from serving.filters import NO_FILTER, check_filter
from serving.lifecycle.admin import LoadReport
from serving.lifecycle.versions import VersionManager
from serving.rpc.admin_rpc import version_protos
from tests.unit import tiny_versions as tiny
from tests.unit.test_cores import slot
from tests.unit.test_registry_retention import publish_dummy
from tests.unit.test_sharded_crowding import CallContext

DIM = 16
COLORS = ["red", "green", "blue", "black", "white", "grey", "pink", "teal", "gold", "plum"]


def _index(n: int, seed: int = 0, tree: bool = True, searcher_dir: Path | None = None
           ) -> tuple[CandidateIndex, np.ndarray]:
    """A real ScaNN index over n random vectors; attributes: ``color`` (10 values, candidate j has
    COLORS[j % 10]), ``rare`` (token "yes" on every 100th), numeric ``price`` = j % 100. With
    ``searcher_dir``, its searcher is the one serialized there (two builds of a tree differ in their k-means)."""
    rng = np.random.default_rng(seed)
    db = rng.standard_normal((n, DIM)).astype(np.float32)
    builder = _scann_pybind().builder(db, 10, "dot_product")
    if tree:
        builder = builder.tree(num_leaves=50, num_leaves_to_search=25, training_sample_size=n).score_ah(
            2, anisotropic_quantization_threshold=0.2).reorder(200)
    else:
        builder = builder.score_brute_force()
    ids = np.array([f"i{j:06d}" for j in range(n)])
    attributes = Attributes.from_lists(
        n, {"color": [[COLORS[j % 10]] for j in range(n)], "rare": [["yes"] if j % 100 == 0 else [] for j in range(n)]},
        {"price": (np.arange(n) % 100).astype(np.float32)})
    spec = IndexSpec("tree_ah", 50, 25, 200) if tree else IndexSpec("brute_force")
    manifest = Manifest("m", 1, DIM, n, "id", "test", "now", spec, {})
    searcher = builder.build() if searcher_dir is None else _scann_pybind().load_searcher(str(searcher_dir))
    index = CandidateIndex(manifest, Rows(ids, db), searcher, LoadReport(0, 0),
                           AttributeColumns(attributes, n), (ids[:20].tolist(), np.linspace(1, 0.05, 20).tolist()))
    return index, rng.standard_normal((50, DIM)).astype(np.float32)


def _delta(rng, upsert: list[str], deleted: list[str], color: str = "red") -> Delta:
    return Delta.make(upsert, rng.standard_normal((len(upsert), DIM)).astype(np.float32),
                      Attributes.from_lists(len(upsert), {"color": [[color]] * len(upsert)},
                                            {"price": np.full(len(upsert), 50.0)}), deleted, dim=DIM)


# ------------------------------------------------------------------ the delta log

def test_delta_log_is_ordered_checksummed_and_chained(tmp_path):
    rng = np.random.default_rng(0)
    assert published_generation(tmp_path, 1) == 0 and read_deltas(tmp_path, 1) == []
    first, second = _delta(rng, ["a", "b"], []), _delta(rng, ["c"], ["a"])
    assert write_delta(tmp_path, 1, first) == 1 and write_delta(tmp_path, 1, second) == 2
    got = read_deltas(tmp_path, 1)
    assert [d.ids.tolist() for d in got] == [["a", "b"], ["c"]] and got[1].deleted.tolist() == ["a"]
    np.testing.assert_array_equal(got[0].vectors, first.vectors)
    assert got[0].attributes.row_tokens("color", 1) == ["red"]
    assert [d.ids.tolist() for d in read_deltas(tmp_path, 1, after=1)] == [["c"]]
    with pytest.raises(VersionError, match="2 catalogue deltas published, not 3"):
        read_deltas(tmp_path, 1, up_to=3)
    log = tmp_path / "catalogue" / "1"
    data = next(log.glob("*.npz"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(VersionError, match="fails its sha256 check"):
        read_deltas(tmp_path, 1)


def test_delta_log_refuses_a_broken_chain_or_a_gap(tmp_path):
    rng = np.random.default_rng(0)
    for name in "abc":
        write_delta(tmp_path, 1, _delta(rng, [name], []))
    verified = read_deltas(tmp_path, 1)
    log = tmp_path / "catalogue" / "1"
    record = log / "00000001.json"
    record.write_text(record.read_text().replace('"upserts": 1', '"upserts": 2'))
    with pytest.raises(VersionError, match="hash chain broken"):
        read_deltas(tmp_path, 1)
    # A catch-up from a record verified before reads only what follows it (record 1 is not read again) ...
    tail = read_deltas(tmp_path, 1, after=1, after_sha256=verified[0].record_sha256)
    assert [(d.ids.tolist(), d.record_sha256) for d in tail] == [(d.ids.tolist(), d.record_sha256)
                                                                   for d in verified[1:]]
    # ... and still refuses a next record that does not chain to it.
    with pytest.raises(VersionError, match="delta 2 of version 1 does not follow delta 1"):
        read_deltas(tmp_path, 1, after=1, after_sha256="0" * 64)
    (log / "00000002.json").unlink()
    with pytest.raises(VersionError, match="without a gap"):
        read_deltas(tmp_path, 1)


def test_records_are_ordered_by_generation_past_their_zero_padding(tmp_path):
    directory = deltas.catalogue_dir(tmp_path, 1)
    directory.mkdir(parents=True)
    for generation in (99_999_998, 99_999_999, 100_000_000):
        (directory / deltas._RECORD.format(generation)).write_text("{}")
    assert published_generation(tmp_path, 1) == 100_000_000  # by name, 99,999,999 sorted last


def test_concurrent_writers_take_distinct_generations(tmp_path):
    rng = np.random.default_rng(0)
    deltas = [_delta(rng, [f"x{i}"], []) for i in range(8)]
    generations: list[int] = []
    threads = [threading.Thread(target=lambda d=d: generations.append(write_delta(tmp_path, 1, d))) for d in deltas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(generations) == list(range(1, 9))
    assert sorted(d.ids[0] for d in read_deltas(tmp_path, 1)) == sorted(d.ids[0] for d in deltas)


# ------------------------------------------------------------------ deltas in a searcher

class Counting(ThreadPoolExecutor):
    """A search executor that counts the calls sent to it (the others ran inline)."""
    submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


async def test_filtered_popularity_and_many_small_groups_run_off_the_event_loop(monkeypatch):
    """A filter's mask, exact search and crowding, and a popularity ranking past its list, read every row: a
    call is inline only while all its queries read few rows together, however they split into filter groups."""
    index, queries = _index(2000, tree=False)
    monkeypatch.setattr(index_core, "INLINE_MAX_ROWS", 3000)
    manager = VersionManager("m")
    manager.add(1, index, make_live=True)
    executor = Counting(1)
    core = index_core.IndexCore(manager, executor)
    red, blue = (check_filter([("color", [c], [])], [], "", 0) for c in ("red", "blue"))
    vector = queries[0].tolist()
    await core.search([index_core.Query(vector, 5, filter=red)], 1)
    assert executor.submitted == 0  # 2,000 rows
    await core.search([index_core.Query(vector, 5, filter=red), index_core.Query(vector, 5, filter=blue)], 1)
    assert executor.submitted == 2  # 4,000 rows in all: both groups on the thread
    await core.search([index_core.Query([], 5, by_popularity=True), index_core.Query([], 5, by_popularity=True)], 1)
    assert executor.submitted == 4
    _, results = await core.search([index_core.Query(vector, 5), index_core.Query(vector, 5, filter=red)], 1)
    assert executor.submitted == 6 and all(len(r.ids) == 5 for r in results)
    executor.shutdown()


async def test_a_tree_search_with_many_exclusions_runs_off_the_event_loop(monkeypatch):
    """Its leaves and exact re-scoring grow with its exclusions (10,000 made a 4 ms search of 100k rows), which the
    estimate of the rows a call reads left out: such a call held the event loop."""
    index, queries = _index(2000)
    monkeypatch.setattr(index_core, "INLINE_MAX_ROWS", index.rows_scanned(1))  # a search of k <= 10 alone
    manager = VersionManager("m")
    manager.add(1, index, make_live=True)
    executor = Counting(1)
    core = index_core.IndexCore(manager, executor)
    vector = queries[0].tolist()
    await core.search([index_core.Query(vector, 5)], 1)
    assert executor.submitted == 0
    excluded = tuple(index.rows.ids[:500].tolist())
    _, [result] = await core.search([index_core.Query(vector, 5, exclusions=excluded)], 1)
    assert executor.submitted == 1 and len(result.ids) == 5 and not set(excluded) & set(result.ids)
    _, similar = await core.similar(index.rows.ids[600], 5, excluded, NO_FILTER, 1)
    assert executor.submitted == 2 and len(similar.ids) == 5
    executor.shutdown()


async def test_answers_searched_while_a_delta_applies_say_so_and_after_it_do_not():
    """A delta applies in chunks, searches running between them: an answer then held some of its new candidates
    (and not yet all its deletes) under the generation before it, and the query service cached it as that
    generation's."""
    index, queries = _index(1000, tree=False)
    manager = VersionManager("m")
    manager.add(1, index, make_live=True)
    servicer = IndexServicer(index_core.IndexCore(manager, ThreadPoolExecutor(1)), None)
    rng = np.random.default_rng(5)
    # Candidates that win every search, then the top results deleted: a part-applied delta shows in an answer.
    new = [f"n{j}" for j in range(3 * DELTA_CHUNK)]
    winners = Delta.make(new, np.tile(100 * queries[0], (len(new), 1)), dim=DIM)
    first_chunk_done, go_on = threading.Event(), threading.Event()
    in_turn = index._in_turn

    def pausing(change, *args):
        in_turn(change, *args)
        if not first_chunk_done.is_set():
            first_chunk_done.set()
            go_on.wait(10)

    index._in_turn = pausing
    applying = threading.Thread(target=index.apply_catalogue, args=([winners], 1))
    applying.start()
    try:
        assert first_chunk_done.wait(10)
        request = retrieval_pb2.SearchRequest(vector=queries[0].tolist(), k=5, model_version=1)
        during = await servicer.Search(request, CallContext())
        assert (during.catalogue_generation, during.catalogue_changing) == (0, True)
        assert {c.candidate_id for c in during.candidates} <= set(new)  # part of generation 1, labelled 0
        similar = await servicer.SearchSimilar(retrieval_pb2.SearchSimilarRequest(
            candidate_id="i000001", k=5, model_version=1), CallContext())
        assert similar.catalogue_changing
    finally:
        go_on.set()
        applying.join(10)
    after = await servicer.Search(request, CallContext())
    assert (after.catalogue_generation, after.catalogue_changing) == (1, False)
    index.apply_catalogue([_delta(rng, [], new[:5])], 2)
    assert not (await servicer.Search(request, CallContext())).catalogue_changing


def test_an_index_whose_every_candidate_was_deleted_reports_full_recall():
    """It answers exactly what it holds, nothing: no re-measure should call for a republish."""
    index, queries = _index(300, tree=False)
    index.apply_catalogue([Delta.make(deleted=index.rows.ids.tolist(), dim=DIM)], 1)
    assert index.num_candidates == 0 and index.search(queries[:2], 5)[0].ids == []
    assert index.recall(queries, 10) == 1.0


def test_a_tree_search_past_what_its_leaves_hold_still_fills_k():
    """Half the leaves are searched (25 of 50): a k, or k plus exclusions, past their ~2,500 rows still
    gets k results, each once, as the search promises."""
    index, queries = _index(5000)
    for result in index.search(queries[:3], 4000):
        assert len(result.ids) == len(set(result.ids)) == 4000
    best = index.search(queries[:1], 2000)[0].ids
    rest = index.search(queries[:1], 2000, [frozenset(best)])[0].ids
    assert len(rest) == 2000 and set(rest).isdisjoint(best)


@pytest.mark.parametrize("tree", [True, False])
def test_upserts_and_deletes_keep_the_searcher_and_its_rows_in_step(tree):
    index, queries = _index(5000, tree=tree)
    rng = np.random.default_rng(1)
    new = [f"n{j}" for j in range(300)]
    updated = [f"i{j:06d}" for j in range(0, 600, 2)]
    deleted = [f"i{j:06d}" for j in range(1, 1000, 2)] + ["never-existed"]
    delta = _delta(rng, new + updated, deleted, color="ultraviolet")  # a token the version did not have
    index.apply_catalogue([delta], 1)
    assert index.catalogue_generation == 1 and index.num_candidates == 5000 + 300 - 500
    # Searches near the upserted vectors find what exact search over the new rows finds; a deleted id is
    # never returned.
    assert index.recall(delta.vectors, 10) >= 0.95
    everything = {i for r in index.search(queries, 200) for i in r.ids}
    assert everything.isdisjoint(deleted) and any(i.startswith("n") for i in everything)
    assert index.recall(queries, 10) >= 0.95  # against exact search over the rows as they are now
    with pytest.raises(errors.NotFound, match="not in version 1"):
        index.similar(deleted[0], 5)
    # Upserted attributes are live: the upserted candidates are ultraviolet with price 50.
    f = check_filter([("color", ["ultraviolet"], [])], [("price", 50.0, 50.0)], "", 0)
    assert index.recall(queries, 10, f) >= 0.95
    for r in index.search(queries[:5], 20, f=f):
        assert len(r.ids) == 20 and set(r.ids) <= set(new) | set(updated)
    red = check_filter([("color", ["red"], [])], [], "", 0)
    assert all(set(r.ids).isdisjoint(updated) for r in index.search(queries[:5], 20, f=red))  # no longer red
    # Every id is found at the row that holds it, one at a time and all at once (moved, new, deleted, base).
    held = index.rows.ids.tolist()
    asked = held[::7] + deleted[:20] + ["never-existed"]
    rows = index.rows.rows_of(asked)
    assert rows.tolist() == [index.rows.row_of(i) for i in asked]
    assert [held[r] for r in rows[rows >= 0]] == asked[:len(held[::7])] and (rows[len(held[::7]):] == -1).all()


def test_rows_reserved_at_load_take_new_and_updated_rows_without_a_copy():
    """Growing a row array copies it under the write lock (7.5 ms for 64k delta vectors of 64 dims), so a
    load reserves room: a delta within it is written in place."""
    rows = Rows(np.array([f"i{j:06d}" for j in range(1000)]), np.zeros((1000, DIM), np.float32))
    rows.reserve(1100)
    arrays = rows._ids, rows._source, rows._added
    rows.write(np.arange(950, 1050), np.array([f"i{j:06d}" for j in range(950, 1000)] + [f"n{j}" for j in range(50)]),
               np.ones((100, DIM), np.float32))
    assert all(a is b for a, b in zip(arrays, (rows._ids, rows._source, rows._added)))
    assert rows.row_of("n49") == 1049 and rows.row_of("i000950") == 950
    assert (rows.vectors(np.arange(950, 1050)) == 1).all() and (rows.vectors(np.arange(950)) == 0).all()


def test_a_candidate_updated_again_and_again_keeps_one_delta_vector():
    """A catalogue re-sending its candidates (a daily price refresh) must not grow the delta vectors by one per
    update and sending: that memory was never freed, and growing past the reserve copies under the write lock."""
    rows = Rows(np.array([f"i{j:06d}" for j in range(1000)]), np.zeros((1000, DIM), np.float32))
    rows.reserve(1100)
    added = rows._added
    for update in range(1, 301):
        rows.write(np.array([5, 7]), np.array(["i000005", "i000007"]), np.full((2, DIM), update, np.float32))
    assert rows._added is added and rows._added_count == 2
    assert (rows.vectors(np.array([5, 7])) == 300).all() and (rows.vectors(np.array([4, 6, 8])) == 0).all()


def test_an_apply_looks_ids_up_a_chunk_at_a_time(monkeypatch):
    """A lookup is a binary search over every id of the version in one numpy call, a GIL hold that neither the
    rest between chunks nor short slices interrupt: a whole delta's at once (1-3 ms at 1M) set the p99 of the
    searches beside it. Each chunk's own ids are looked up instead, the same rows in the end."""
    index, _ = _index(5000, tree=False)
    asked: list[int] = []
    rows_of = index.rows.rows_of
    monkeypatch.setattr(index.rows, "rows_of", lambda ids: asked.append(len(ids)) or rows_of(ids))
    upserted = [f"n{j}" for j in range(150)] + [f"i{j:06d}" for j in range(0, 300, 2)]
    deleted = [f"never{j}" for j in range(40)] + [f"i{j:06d}" for j in range(1, 1000, 2)]  # a chunk of unknown ids
    index.apply_catalogue([_delta(np.random.default_rng(3), upserted, deleted)], 1)
    assert len(asked) >= (len(upserted) + len(deleted)) // DELTA_CHUNK and max(asked) <= DELTA_CHUNK
    assert sorted(index.rows.ids.tolist()) == sorted({f"i{j:06d}" for j in range(5000)} - set(deleted)
                                                     | set(upserted))
    assert index.recall(index.rows[::10], 10) == 1.0  # brute force: every row holds the vector ScaNN holds


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_a_deletion_moves_rows_as_deleting_them_one_at_a_time_does(data):
    """Rows and attributes apply a chunk's deletes as one move of rows (``Deletion``); ScaNN deletes them one at
    a time, each time moving its last row into the deleted one's place. Both must end alike."""
    count = data.draw(st.integers(1, 60))
    gone = data.draw(st.lists(st.integers(0, count - 1), unique=True))  # rows numbered as before, in any order
    held, rows = list(range(count)), []  # held[row]: which of the rows as numbered before is there now
    for original in gone:
        row = held.index(original)
        rows.append(row)
        last = held.pop()
        if row < len(held):
            held[row] = last
    deletion = Deletion.plan(gone, count)
    after = np.arange(count)
    after[deletion.to] = after[deletion.source]
    assert deletion.count == len(held) and after[:deletion.count].tolist() == held
    assert deletion.gone.tolist() == gone and deletion.rows == rows
    # Every move lands in a row kept, and no row's contents go to two places.
    assert (deletion.to < deletion.count).all() and len(set(deletion.source.tolist())) == len(deletion.source)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 219), max_size=60), st.integers(0, 2**32 - 1))
def test_deletes_in_any_order_keep_rows_attributes_and_scann_in_step(picks, seed):
    """Deleting ids anywhere (the last rows too, whose occupants each deletion moves), repeated and unknown,
    in one delta: every row still holds the id, vector and attributes ScaNN and the filters see."""
    index, queries = _index(200, tree=False)
    colors = {f"i{j:06d}": COLORS[j % 10] for j in range(200)}
    deleted = [f"i{j:06d}" if j < 200 else "unknown" for j in picks]
    np.random.default_rng(seed).shuffle(deleted)
    index.apply_catalogue([_delta(np.random.default_rng(seed), [], deleted)], 1)
    assert sorted(index.rows.ids.tolist()) == sorted(set(colors) - set(deleted))
    assert index.recall(queries, 10) == 1.0  # brute force: any row out of step with ScaNN's would miss
    held = index.rows.ids.tolist()
    assert index.attributes.numeric["price"][:len(held)].tolist() == [int(i[1:]) % 100 for i in held]
    assert np.isnan(index.attributes.numeric["price"][len(held):200]).all()
    for column in index.attributes.tokens.values():  # the counts the selectivity estimate reads
        tokens = column.matrix[:len(held)]
        assert (column.matrix[len(held):200] == -1).all()
        assert column.counts.tolist() == np.bincount(tokens[tokens >= 0], minlength=len(column.counts)).tolist()
    for color in COLORS[:3]:
        f = check_filter([("color", [color], [])], [], "", 0)
        assert index.recall(queries, 10, f) == 1.0
        assert all(colors[i] == color for r in index.search(queries[:5], 10, f=f) for i in r.ids)


def test_filters_match_exact_filtered_search_at_every_selectivity():
    index, queries = _index(30_000)
    filters = {
        "50%": check_filter([], [("price", 0.0, 49.0)], "", 0),
        "10%": check_filter([("color", ["red"], [])], [], "", 0),
        "1%": check_filter([("rare", ["yes"], [])], [], "", 0),
        "deny 90%": check_filter([("color", [], [c for c in COLORS if c != "teal"])], [], "", 0),
    }
    for name, f in filters.items():
        assert index.recall(queries, 10, f) >= 0.95, name
        for r in index.search(queries[:10], 10, f=f):
            assert len(r.ids) == 10
    red = index.search(queries[:5], 10, f=filters["10%"])
    assert all(int(i[1:]) % 10 == 0 for r in red for i in r.ids)


def test_crowding_caps_results_per_value_and_still_fills_k():
    index, queries = _index(5000)
    f = check_filter([], [], "color", 1)
    for r in index.search(queries[:5], 10, f=f):
        colors = [COLORS[int(i[1:]) % 10] for i in r.ids]
        assert len(r.ids) == 10 and len(set(colors)) == 10


def test_crowding_counts_a_candidate_under_each_of_its_tokens():
    """A film of Crime and Drama is a Drama as much as a Crime: at one result per genre, no two results share any
    genre (crowding counted a candidate under its first token only), and each result names its genres, which a
    merge of a sharded version's shards crowds again with."""
    n, genres = 400, ["Action", "Comedy", "Crime", "Drama", "Horror", "Musical", "Sci-Fi", "War"]
    rng = np.random.default_rng(3)
    db = rng.standard_normal((n, DIM)).astype(np.float32)
    held = [sorted({genres[j % 8], genres[(j // 8) % 8]}) for j in range(n)]
    ids = np.array([f"m{j:03d}" for j in range(n)])
    index = CandidateIndex(Manifest("m", 1, DIM, n, "id", "test", "now", IndexSpec("brute_force"), {}),
                           Rows(ids, db), _scann_pybind().builder(db, 10, "dot_product").score_brute_force().build(),
                           LoadReport(0, 0), AttributeColumns(Attributes.from_lists(n, {"genres": held}, {}), n),
                           ([], []))
    for result in index.search(rng.standard_normal((8, DIM)).astype(np.float32), 3,
                               f=check_filter([], [], "genres", 1)):
        tokens = [tuple(held[int(i[1:])]) for i in result.ids]
        assert len(result.ids) == 3 and result.crowding == tokens
        assert len(sum(tokens, ())) == len(set(sum(tokens, ()))), tokens
    assert index.search(db[:1], 3)[0].crowding is None  # named only when crowding asks


def test_a_filter_estimated_far_too_wide_still_finds_every_passing_candidate(monkeypatch):
    """A wrong estimate costs retries, not results: at 20,405 rows the over-fetch grows 5,120 -> 20,480, capped at
    every row, and there the filter is answered exactly, not with what the last over-fetch found."""
    index, queries = _index(20_400, tree=False)
    far = -100 * np.repeat(queries[:1], 5, axis=0)  # the five ultraviolet candidates rank last
    index.apply_catalogue([Delta.make([f"uv{j}" for j in range(5)], far, Attributes.from_lists(
        5, {"color": [["ultraviolet"]] * 5}), dim=DIM)], 1)
    monkeypatch.setattr(index.attributes, "selectivity", lambda f: 1.0)  # stale, as after deltas moved the values
    f = check_filter([("color", ["ultraviolet"], [])], [], "", 0)
    assert sorted(index.search(queries[:1], 10, f=f)[0].ids) == [f"uv{j}" for j in range(5)]


def test_crowding_alone_at_a_large_k_still_searches():
    """A crowding-only over-fetch deeper than EXACT_MAX_ROWS on the first try (a --max-k raised to 10,000) stops
    after that try, not before any: nothing was searched, and the caller got no result at all."""
    index, queries = _index(20_400, tree=False)
    result = index.search(queries[:1], 10_000, [frozenset({"i000000"})], check_filter([], [], "color", 1))[0]
    assert len(result.ids) == 10 and len({COLORS[int(i[1:]) % 10] for i in result.ids}) == 10


def test_crowding_alone_searches_every_one_of_the_top_rows_before_it_stops(monkeypatch):
    """The over-fetch grew 4x a round and stopped at the first step past EXACT_MAX_ROWS, so a crowded search
    read as few as a quarter of the top rows its docstring promises (k=10 at 1M: 5,120 of 20,000), and a
    candidate of a rare value ranked below that was missing from the answer."""
    monkeypatch.setattr(index_searcher, "EXACT_MAX_ROWS", 2000)
    n = 3000
    rng = np.random.default_rng(0)
    db = rng.standard_normal((n, DIM)).astype(np.float32)
    query = rng.standard_normal(DIM).astype(np.float32)
    order = np.argsort(-(db.astype(np.float64) @ query))
    rare = int(order[1499])  # within the top 2,000 rows, below the 1,024 the old growth stopped at for k=2
    tokens = [["common"]] * n
    tokens[rare] = ["rare"]
    ids = np.array([f"i{j:05d}" for j in range(n)])
    index = CandidateIndex(Manifest("m", 1, DIM, n, "id", "test", "now", IndexSpec("brute_force"), {}),
                           Rows(ids, db), _scann_pybind().builder(db, 10, "dot_product").score_brute_force().build(),
                           LoadReport(0, 0), AttributeColumns(Attributes.from_lists(n, {"g": tokens}), n), ([], []))
    assert index.search(query[None], 2, f=check_filter([], [], "g", 1))[0].ids == [ids[order[0]], ids[rare]]


def test_a_range_over_a_sparse_numeric_namespace_estimates_only_the_rows_with_a_value():
    """A candidate without a value (NaN) passes no range: an open range over a namespace most candidates lack was
    estimated to pass them all, so the search over-fetched far too little and retried deeper, five times."""
    year = np.full(1000, np.nan, np.float32)
    year[::20] = np.arange(50) + 1970
    columns = AttributeColumns(Attributes.from_lists(1000, numeric={"year": year}), 1000)
    assert columns.selectivity(check_filter([], [("year", 1990.0, None)], "", 0)) == pytest.approx(0.03)
    assert columns.selectivity(check_filter([], [("year", None, 1989.0)], "", 0)) == pytest.approx(0.02)


def test_a_search_naming_a_token_a_delta_is_numbering_finds_nothing_yet():
    """A delta numbers its new tokens outside the write lock, before their counts exist: a search meanwhile that
    names one must find that no row holds it yet, not fail on the count it reads for the estimate."""
    index, queries = _index(1000, tree=False)
    column = index.attributes.tokens["color"]
    found: list[list[str]] = []
    ultraviolet = check_filter([("color", ["ultraviolet"], [])], [], "", 0)

    class Numbering(dict):
        def setdefault(self, token, number):
            number = super().setdefault(token, number)
            if token == "ultraviolet" and not found:  # as a search thread may run here
                found.append(index.search(queries[:1], 5, f=ultraviolet)[0].ids)
            return number

    column.index = Numbering(column.index)
    index.apply_catalogue([_delta(np.random.default_rng(4), ["n1"], [], color="ultraviolet")], 1)
    assert found == [[]] and index.search(queries[:1], 5, f=ultraviolet)[0].ids == ["n1"]


def test_filters_name_only_the_versions_namespaces():
    index, queries = _index(1000, tree=False)
    with pytest.raises(errors.InvalidArgument, match="'size' is not a token namespace.*'color', 'rare'"):
        index.search(queries[:1], 5, f=check_filter([("size", ["xl"], [])], [], "", 0))
    with pytest.raises(errors.InvalidArgument, match="'color' is not a numeric namespace"):
        index.search(queries[:1], 5, f=check_filter([], [("color", 1.0, None)], "", 0))
    unknown_token = check_filter([("color", ["ultraviolet"], [])], [], "", 0)
    assert index.search(queries[:1], 5, f=unknown_token)[0].ids == []  # a token no candidate has: nothing passes


def test_similar_and_filtered_popularity():
    index, _ = _index(2000, tree=False)
    result = index.similar("i000007", 5)
    assert len(result.ids) == 5 and "i000007" not in result.ids
    vector = index.rows.vectors(np.array([7]))
    assert result.ids == [i for i in index.search(vector, 6)[0].ids if i != "i000007"][:5]
    popular = index.by_popularity(5)
    assert popular.ids == [f"i{j:06d}" for j in range(5)]
    teal = index.by_popularity(4, f=check_filter([("color", ["teal"], [])], [], "", 0))
    # i7 and i17 are popular and teal; then the other teal candidates, in row order, score 0
    assert teal.ids == ["i000007", "i000017", "i000027", "i000037"] and teal.scores[2:] == [0.0, 0.0]


def test_popularity_crowds_the_popular_and_the_other_candidates_together():
    index, _ = _index(2000, tree=False)
    # 20 popular candidates hold each color twice: one of each, and then no other candidate may add one.
    crowded = index.by_popularity(15, f=check_filter([], [], "color", 1))
    assert crowded.ids == [f"i{j:06d}" for j in range(10)]


def test_a_search_during_deltas_never_sees_half_a_change():
    index, queries = _index(20_000)
    rng = np.random.default_rng(2)
    deltas = [_delta(rng, [f"n{g}-{j}" for j in range(200)], [f"i{j:06d}" for j in range(g * 300, g * 300 + 300)])
              for g in range(10)]
    deleted = {i for d in deltas for i in d.deleted.tolist()}
    done = threading.Event()
    seen: set[str] = set()

    def search_meanwhile():
        while not done.is_set():
            for r in index.search(queries, 30):
                assert len(r.ids) == 30 and len(set(r.ids)) == 30
                seen.update(r.ids)

    reader = threading.Thread(target=search_meanwhile)
    reader.start()
    index.apply_catalogue(deltas, 10)
    done.set()
    reader.join()
    assert index.recall(queries, 10) >= 0.95
    assert {i for r in index.search(queries, 100) for i in r.ids}.isdisjoint(deleted)


# ------------------------------------------------------------------ replay through the admin plane

async def test_a_reloaded_slot_replays_the_deltas_and_answers_identically(tmp_path):
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    core, admin = slot(registry, "blue", 1)
    rng = np.random.default_rng(3)
    write_delta(registry.model_dir, 1, Delta.make(["new1", "new2"], rng.standard_normal((2, tiny.DIM)),
                                                  deleted=["i000", "i001"], dim=tiny.DIM))
    with pytest.raises(errors.FailedPrecondition, match="has 1 catalogue deltas in the registry, not 2"):
        await admin.apply_catalogue(1, 2)
    status = await admin.apply_catalogue(1, 0)
    assert (status.versions[0].catalogue_generation, status.versions[0].num_candidates) == (1, 50)
    assert (await admin.apply_catalogue(1, 1)).versions[0].catalogue_generation == 1  # idempotent
    queries = np.random.default_rng(4).standard_normal((20, tiny.DIM)).astype(np.float32)
    _, before = core.manager.get(1)
    restarted, _ = slot(registry, "green", 1)
    _, after = restarted.manager.get(1)
    assert after.catalogue_generation == 1
    for a, b in zip(before.search(queries, 10), after.search(queries, 10)):
        assert a.ids == b.ids and "i000" not in a.ids
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)


async def test_a_version_s_reported_memory_follows_its_catalogue_and_a_restart_reports_the_same(tmp_path):
    # It stayed the load's figure however many candidates deltas added (recsys_version_memory_bytes, the status).
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    core, admin = slot(registry, "blue", 1)
    loaded = core.manager.get(1)[1].report.memory_bytes
    rng = np.random.default_rng(6)
    added = [f"new{j}" for j in range(100)]
    write_delta(registry.model_dir, 1, Delta.make(added, rng.standard_normal((100, tiny.DIM)), dim=tiny.DIM))
    grown = (await admin.apply_catalogue(1, 1)).versions[0]
    assert grown.num_candidates == 150 and grown.report.memory_bytes >= 3 * loaded + 100 * tiny.DIM * 4
    write_delta(registry.model_dir, 1, Delta.make([], np.zeros((0, tiny.DIM)), deleted=added, dim=tiny.DIM))
    shrunk = (await admin.apply_catalogue(1, 2)).versions[0]
    assert shrunk.num_candidates == 50
    assert shrunk.report.memory_bytes >= grown.report.memory_bytes  # ScaNN keeps what it grew
    restarted, _ = slot(registry, "green", 1)
    assert restarted.manager.get(1)[1].report.memory_bytes == shrunk.report.memory_bytes


def test_a_load_replays_its_deltas_without_the_rests_that_give_searches_a_turn(tmp_path, monkeypatch):
    """Nothing searches an index while it loads, yet its replay rested as long as each chunk held the write lock:
    a load over 5,000 deltas took 4.0-4.3 s, 3.4 s without them. A live apply still rests."""
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    rng = np.random.default_rng(5)
    for generation in (1, 2):
        write_delta(registry.model_dir, 1, Delta.make([f"new{generation}"], rng.standard_normal((1, tiny.DIM)),
                                                      deleted=[f"i{generation:03d}"], dim=tiny.DIM))
    rests = []
    monkeypatch.setattr(index_searcher, "time", SimpleNamespace(perf_counter=time.perf_counter, sleep=rests.append))
    index = CandidateIndex.load(registry.version_dir(1), registry.manifest(1))
    assert index.catalogue_generation == 2 and "new2" in index.rows.ids and rests == []
    index.apply_catalogue([Delta.make(["new3"], rng.standard_normal((1, tiny.DIM)), dim=tiny.DIM)], 3)
    assert len(rests) == 1


@pytest.mark.parametrize("tree", [False, True], ids=["brute force", "tree-AH"])
def test_a_replay_takes_larger_chunks_and_lays_the_rows_out_as_a_live_apply_does(tmp_path, tree):
    """A load's replay, which no search waits on, took the live path's chunks of 32 (20.4-23.2 s at 1M over 200
    deltas of 4,000 changes; 17.5-19.1 s in chunks of 1,024). A restarted replica must still hold its rows where the
    live one does, and answer as it does: exact ties, and the rows ScaNN's deletes move, follow the layout."""
    _index(3000, tree=tree)[0]._searcher.serialize(str(tmp_path))  # one searcher, loaded twice, as two replicas do
    live, queries = _index(3000, tree=tree, searcher_dir=tmp_path)
    replayed, _ = _index(3000, tree=tree, searcher_dir=tmp_path)
    rng = np.random.default_rng(8)
    for generation in (1, 2):
        held = live.rows.ids
        new = [f"g{generation}n{j}" for j in range(REPLAY_CHUNK)]
        updated = rng.choice(held, 200, replace=False).tolist()
        deleted = rng.choice(np.setdiff1d(held, updated), REPLAY_CHUNK + 100, replace=False).tolist()
        delta = _delta(rng, new + updated, deleted, color=COLORS[generation])
        live.apply_catalogue([delta], generation)
        replayed.apply_catalogue([delta], generation, rest=False)
    assert live.rows.count == 3000 - 2 * 100 and np.array_equal(live.rows.ids, replayed.rows.ids)
    assert replayed._changes == 2 * 4 < live._changes  # two upsert and two delete chunks a delta
    red = check_filter([("color", [COLORS[1]], [])], [], "", 0)
    for f in (NO_FILTER, red):
        for a, b in zip(live.search(queries, 20, f=f), replayed.search(queries, 20, f=f)):
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.scores, b.scores)


def test_a_load_holds_a_few_deltas_of_its_log_at_a_time_and_answers_as_one_that_read_them_all(tmp_path,
                                                                                               monkeypatch):
    """A load read the whole log before applying it: a restarted slot's peak memory was 1.3 GB over a replica that
    had applied the same 5,000 deltas (863 MB of log) live."""
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    rng = np.random.default_rng(5)
    for generation in range(1, 6):
        write_delta(registry.model_dir, 1, Delta.make([f"new{generation}"], rng.standard_normal((1, tiny.DIM)),
                                                      deleted=[f"i{generation:03d}"], dim=tiny.DIM))
    whole = CandidateIndex.load(registry.version_dir(1), registry.manifest(1))
    monkeypatch.setattr(deltas, "REPLAY_BATCH", 2)
    held = []
    apply = CandidateIndex.apply_catalogue
    monkeypatch.setattr(CandidateIndex, "apply_catalogue",
                        lambda self, deltas, *a, **k: held.append(len(deltas)) or apply(self, deltas, *a, **k))
    batched = CandidateIndex.load(registry.version_dir(1), registry.manifest(1))
    assert held == [2, 2, 1] and batched.catalogue_generation == whole.catalogue_generation == 5
    queries = rng.standard_normal((5, tiny.DIM)).astype(np.float32)
    assert [r.ids for r in batched.search(queries, 10)] == [r.ids for r in whole.search(queries, 10)]


async def one_new_candidate(registry: Registry, admin, generation: int, rng: np.random.Generator) -> None:
    """Publishes delta ``generation`` of version 1 (one new candidate) and applies it through ``admin``."""
    write_delta(registry.model_dir, 1, Delta.make([f"new{generation}"], rng.standard_normal((1, tiny.DIM)),
                                                  dim=tiny.DIM))
    await admin.apply_catalogue(1, generation)


async def rechecked(admin) -> None:
    """Waits (up to 5 s) until no re-measure of recall is pending."""
    for _ in range(50):
        if not admin._rechecks:
            return
        await asyncio.sleep(0.1)


async def test_recall_is_measured_again_once_a_run_of_deltas_pauses(tmp_path, monkeypatch):
    monkeypatch.setattr(slot_admin, "RECALL_SETTLE_S", 0.3)
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    core, admin = slot(registry, "blue", 1)
    _, index = core.manager.get(1)
    measured_at: list[int] = []
    remeasure = index.remeasure_recall

    def counted() -> float:
        measured_at.append(index.catalogue_generation)
        return remeasure()

    monkeypatch.setattr(index, "remeasure_recall", counted)
    rng = np.random.default_rng(5)
    for generation in (1, 2):  # two deltas in a row: one measurement, after both
        await one_new_candidate(registry, admin, generation, rng)
    assert admin.status().versions[0].report.recall_generation == 0  # the load's, until the deltas pause
    await rechecked(admin)
    report = admin.status().versions[0].report
    assert measured_at == [2] and report.recall_generation == 2
    assert report.self_test_recall == index.recall(index._probes[:RECHECK_PROBES], 10)
    assert version_protos(admin.status().versions)[0].self_test_generation == 2


async def test_a_version_loaded_again_measures_recall_over_the_rows_it_serves(tmp_path, monkeypatch):
    monkeypatch.setattr(slot_admin, "RECALL_SETTLE_S", 0.3)
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    core, admin = slot(registry, "blue", 1)
    rng = np.random.default_rng(6)
    await one_new_candidate(registry, admin, 1, rng)  # a re-measure is now pending for the first copy
    await admin.unload(1)
    await admin.load(1)  # a new copy, which replays the delta
    _, copy = core.manager.get(1)
    assert copy.catalogue_generation == 1 and copy.report.recall_generation == 1  # not the published rows' 0
    await one_new_candidate(registry, admin, 2, rng)  # while the first copy's re-measure is still pending
    await rechecked(admin)
    assert copy.report.recall_generation == 2


async def test_a_re_measure_that_fails_is_logged_and_the_next_delta_measures_again(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(slot_admin, "RECALL_SETTLE_S", 0.3)
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    core, admin = slot(registry, "blue", 1)
    _, index = core.manager.get(1)
    remeasure, failures = index.remeasure_recall, [MemoryError("exact search ran out of memory")]

    def flaky() -> float:
        if failures:
            raise failures.pop()
        return remeasure()

    monkeypatch.setattr(index, "remeasure_recall", flaky)
    rng = np.random.default_rng(7)
    await one_new_candidate(registry, admin, 1, rng)
    task = admin._rechecks[1][1]
    await task  # ends without raising: nothing is left for asyncio to report unretrieved
    assert "recall could not be measured again" in caplog.text and index.report.recall_generation == 0
    await one_new_candidate(registry, admin, 2, rng)
    await rechecked(admin)
    assert index.report.recall_generation == 2


# ------------------------------------------------------------------ inputs

def test_attributes_from_a_catalogue_keep_lists_and_numbers_and_drop_free_text():
    attributes = from_catalogue({"genres": np.array(["Action|Drama", "Drama", ""] * 4),
                                 "title": np.array([f"film {j}" for j in range(12)]),
                                 "year": np.array([1990, np.nan, 2001] * 4, dtype=np.float32)})
    assert set(attributes.tokens) == {"genres"} and set(attributes.numeric) == {"year"}
    assert attributes.row_tokens("genres", 0) == ["Action", "Drama"] and attributes.row_tokens("genres", 2) == []
    assert from_catalogue(None) is None


def test_upsert_input_is_checked_against_the_version():
    good = '{"id": "x", "vector": [1, 2], "tokens": {"genre": ["a"]}, "numeric": {"year": 2000}}\n'
    delta = read_upserts([good, "\n"], 2, {"genre"}, {"year"})
    assert delta.ids.tolist() == ["x"] and delta.attributes.numeric["year"].tolist() == [2000.0]
    for line, message in (('{"id": "x"}', "either 'vector' or 'features'"), ('[1]', "with an 'id'"),
                          ('{"id": "x", "vector": [1, 2], "features": {}}', "either 'vector' or 'features'"),
                          ('{"id": "x", "features": [1]}', "'features' must be an object"),
                          ('{"id": "x", "vector": [1]}', "2 finite numbers"),
                          ('{"id": "x", "vector": [1, NaN]}', "2 finite numbers"),
                          ('{"id": "", "vector": [1, 2]}', "1..256 bytes"),
                          ('{"id": "x", "vector": [1, 2], "tokens": {"size": ["xl"]}}', r"\['size'\] are not")):
        with pytest.raises(CatalogueError, match=message):
            read_upserts([line], 2, {"genre"}, {"year"})
    with pytest.raises(CatalogueError, match="more than one line"):
        read_upserts([good, good], 2, {"genre"}, {"year"})
    with pytest.raises(CatalogueError, match="no candidate tower"):
        read_upserts(['{"id": "x", "features": {"genre": "a"}}'], 2, {"genre"}, {"year"})
    assert NO_FILTER.key() == "" and not NO_FILTER


def test_an_id_with_a_nul_is_refused_before_it_can_change_or_delete_another(tmp_path, capsys):
    """numpy drops an id's trailing NULs: a delta upserting or deleting "x\\x00" would change or delete x."""
    with pytest.raises(CatalogueError, match=r"line 1: id 'x\\x00' contains a NUL character"):
        read_upserts(['{"id": "x\\u0000", "vector": [1, 2]}'], 2, set(), set())
    publish_dummy(Registry(tmp_path, "m"))
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "i001,i002\x00",
                        "--index-admin", "127.0.0.1:1"])
    assert exit.value.code == 1 and "deleted id 1 'i002\\x00' contains a NUL character" in capsys.readouterr().err
    assert not (tmp_path / "m" / "catalogue").exists()  # refused before any delta was written


def test_tokens_and_numeric_of_the_wrong_shape_are_refused_naming_the_line():
    # A string of tokens was taken letter by letter: "Drama" became the tokens D, a, m, r, and no filter matched it.
    for line, message in (('{"id": "x", "vector": [1, 2], "tokens": {"genre": "Drama"}}',
                           "tokens 'genre' must be a list, got 'Drama'"),
                          ('{"id": "x", "vector": [1, 2], "tokens": {"genre": 5}}', "tokens 'genre' must be a list"),
                          ('{"id": "x", "vector": [1, 2], "tokens": ["genre"]}', "'tokens' must be an object"),
                          ('{"id": "x", "vector": [1, 2], "numeric": 5}', "'numeric' must be an object")):
        with pytest.raises(CatalogueError, match=r"line 1 \(id 'x'\): " + message):
            read_upserts([line], 2, {"genre"}, {"year"})


# ------------------------------------------------------------------ recsys-catalogue's rollout (in-memory admin stubs)

class _Replica:
    """An admin stub holding ``versions`` (of shard ``shard`` of ``shards``); its ApplyCatalogue answers ``refusal``
    as a FAILED_PRECONDITION, or takes the generation."""

    def __init__(self, versions=(1,), refusal: str = "", shard: int = 0, shards: int = 0, state: int = 0):
        self.versions, self.refusal, self.shard, self.shards, self.state = versions, refusal, shard, shards, state
        self.applied: list[int] = []
        self.service = "index"  # the role it says it has, as recsys-catalogue checks (``as_query``)

    def GetStatus(self, request, metadata=None, timeout=None):
        return admin_pb2.ServiceStatus(
            versions=[versions_pb2.VersionStatus(version=v, state=self.state) for v in self.versions],
            shard=self.shard, shards=self.shards, service=self.service, model_name="m")

    def ApplyCatalogue(self, request, metadata=None, timeout=None):
        if self.refusal:
            raise _Refused(self.refusal)
        self.applied.append(request.generation)
        return admin_pb2.ServiceStatus()


def as_query(replica: _Replica) -> _Replica:
    """``replica`` saying it is a query replica."""
    replica.service = "query"
    return replica


class _Refused(grpc.RpcError):
    def __init__(self, details: str):
        self._details = details

    def code(self):
        return grpc.StatusCode.FAILED_PRECONDITION

    def details(self):
        return self._details


def test_the_query_tier_stays_put_when_no_index_replica_holding_the_version_took_the_delta():
    blue, green = _Replica(refusal="deltas refused: bad dimension"), _Replica(versions=(2,))
    query = _Replica()
    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)],
                  [Replica("query", "q", as_query(query))])
    rollout = apply_everywhere(fleet, 1, 3)
    # A query replica at generation 3 routes only to index replicas at 3 or later: none here, every miss would fail.
    assert query.applied == [] and rollout.applied == []
    assert set(rollout.failed) == {"index blue", "query q"}
    assert "no index replica holding version 1 took generation 3" in rollout.failed["query q"]
    blue.refusal = ""
    rollout = apply_everywhere(fleet, 1, 3)
    assert query.applied == [3] and rollout.applied == ["index blue", "query q"] and rollout.failed == {}


def test_the_query_tier_stays_put_while_a_shard_of_the_version_has_no_replica_at_the_delta():
    shard0, shard1 = _Replica(shard=0, shards=2), _Replica(shard=1, shards=2, refusal="deltas refused")
    query = _Replica()
    fleet = Fleet([Replica("index", "s0", shard0), Replica("index", "s1", shard1)],
                  [Replica("query", "q", as_query(query))])
    rollout = apply_everywhere(fleet, 1, 1)
    assert query.applied == [] and rollout.applied == ["index s0"] and "shard 1 of 2" in rollout.failed["query q"]
    # A slot still loading the version reports no shard yet; its refusal leaves both shards served.
    shard1.refusal = ""
    loading = _Replica(refusal="not loaded here", state=versions_pb2.VERSION_STATE_LOADING)
    fleet.index.append(Replica("index", "loading", loading))
    rollout = apply_everywhere(fleet, 1, 1)
    assert query.applied == [1] and set(rollout.failed) == {"index loading"}


def test_a_delta_the_registry_refuses_is_one_line_and_exit_status_1(tmp_path, capsys):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    write_delta(registry.model_dir, 1, Delta.make(deleted=["a"], dim=1))
    write_delta(registry.model_dir, 1, Delta.make(deleted=["b"], dim=1))
    (registry.model_dir / "catalogue" / "1" / "00000001.json").unlink()  # a gap: no delta can follow
    server = grpc.server(ThreadPoolExecutor(1))  # an admin plane to connect to; the registry refuses before any call
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(SystemExit) as exit:
            catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "c",
                            "--index-admin", f"127.0.0.1:{port}"])
    finally:
        server.stop(None)
    assert exit.value.code == 1
    assert capsys.readouterr().err.strip().startswith("recsys-catalogue: catalogue deltas of version 1 in")


def test_an_input_file_that_is_not_utf8_text_is_one_line_naming_it(tmp_path, capsys):
    publish_dummy(Registry(tmp_path, "m"))
    for flag in ("--upserts", "--delete-file"):
        bad = tmp_path / f"bad{flag}"
        bad.write_bytes(b'{"id": "\xff", "vector": [1]}\n')
        with pytest.raises(SystemExit) as exit:
            catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", flag, str(bad),
                            "--index-admin", "127.0.0.1:1"])
        assert exit.value.code == 1
        assert capsys.readouterr().err.strip() == f"recsys-catalogue: {bad}: not UTF-8 text (byte 0xff)"


def test_the_index_replicas_are_required_as_the_usage_says(tmp_path, capsys):
    publish_dummy(Registry(tmp_path, "m"))
    # Without them the query replicas alone would move to the new generation, which no index replica serves.
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "c",
                        "--query-admin", "127.0.0.1:1"])
    assert exit.value.code == 2 and "--index-admin is required" in capsys.readouterr().err
    assert not (tmp_path / "m" / "catalogue").exists()


def test_a_delta_the_signed_versions_replicas_would_refuse_is_never_written(tmp_path, capsys):
    publisher, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    registry = Registry(tmp_path, "m", signing_key=publisher)
    publish_dummy(registry)
    pems = {}
    for name, key in (("publisher", publisher), ("other", other)):
        pems[name] = tmp_path / f"{name}.pem"
        pems[name].write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    # Every replica of a signed version verifies: an unsigned delta, or one by another key, would be refused by
    # all of them and then fail every later load of the version, so the tool writes neither.
    server = grpc.server(ThreadPoolExecutor(1))  # an admin plane that answers, so only the key can stop the write
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        featured = tmp_path / "featured.jsonl"  # upserts the version's candidate tower would embed
        featured.write_text('{"id": "n1", "features": {"title": "x"}}\n')
        for extra, message in (([], "version 1 is signed, so its replicas apply only signed deltas"),
                               (["--signing-key-file", str(pems["other"])],
                                "version 1 was not signed by this signing key"),
                               # Refused before the tower is looked for: TensorFlow loads no unvouched SavedModel.
                               (["--signing-key-file", str(pems["other"]), "--upserts", str(featured)],
                                "version 1 was not signed by this signing key")):
            with pytest.raises(SystemExit) as exit:
                catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "c",
                                "--index-admin", f"127.0.0.1:{port}", "--timeout-s", "1", *extra])
            assert exit.value.code == 1
            assert capsys.readouterr().err.strip().startswith(f"recsys-catalogue: {message}")
            assert published_generation(registry.model_dir, 1) == 0
    finally:
        server.stop(None)
    fleet = Fleet([], [])
    rollout = publish_delta(fleet, registry, 1, Delta.make(deleted=["c"], dim=1), publisher)
    assert rollout.generation == 1 and len(read_deltas(registry.model_dir, 1, key=publisher.public_key())) == 1
    unsigned = Registry(tmp_path, "u")  # an unsigned version takes unsigned deltas
    publish_dummy(unsigned)
    assert publish_delta(fleet, unsigned, 1, Delta.make(deleted=["c"], dim=1)).generation == 1


def test_a_signing_key_is_never_used_on_a_version_it_did_not_sign(tmp_path, capsys, monkeypatch):
    """A registry writer removes a version's signature and plants a tower of theirs: the tool run with the key must
    not load (run) that tower, nor sign a delta of a version no one vouches for."""
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "publisher.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    registry = Registry(tmp_path, "m", signing_key=key)
    publish_dummy(registry)
    (registry.version_dir(1) / SIGNATURE_FILE).unlink()
    loaded = []
    monkeypatch.setattr(CandidateTower, "load", classmethod(lambda cls, *args: loaded.append(args)))
    featured = tmp_path / "featured.jsonl"
    featured.write_text('{"id": "n1", "features": {"title": "x"}}\n')
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--upserts", str(featured),
                        "--index-admin", "127.0.0.1:1", "--timeout-s", "1", "--signing-key-file", str(pem)])
    assert exit.value.code == 1 and loaded == []
    assert capsys.readouterr().err.strip().startswith("recsys-catalogue: version 1 is unsigned, and a signing key "
                                                      "signs deltas only of versions it signed")
    with pytest.raises(VersionError, match="version 1 is unsigned"):
        publish_delta(Fleet([], []), registry, 1, Delta.make(deleted=["c"], dim=1), key)
    assert published_generation(registry.model_dir, 1) == 0


def _log_cut_short(tmp_path) -> tuple[Registry, _Replica]:
    """A registry whose version 1 log ends at generation 1 (record 2 removed by hand, or the registry restored
    from an older copy), and a replica that holds generation 2."""
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    for deleted in ("a", "b"):
        write_delta(registry.model_dir, 1, Delta.make(deleted=[deleted], dim=1))
    (registry.model_dir / "catalogue" / "1" / "00000002.json").unlink()
    ahead = _Replica()
    ahead.GetStatus = lambda *args, **kwargs: admin_pb2.ServiceStatus(
        versions=[versions_pb2.VersionStatus(version=1, catalogue_generation=2)])
    return registry, ahead


def test_no_delta_is_written_past_a_log_that_ends_before_a_replicas_generation(tmp_path):
    # A delta written now would be generation 2 again, which the replica past the log holds with other contents.
    registry, ahead = _log_cut_short(tmp_path)
    fleet = Fleet([Replica("index", "blue", _Replica()), Replica("index", "green", ahead)], [])
    with pytest.raises(CatalogueError, match=r"index replica green holds version 1 at catalogue generation 2, but "
                                             r"the registry's log of it ends at generation 1 "):
        publish_delta(fleet, registry, 1, Delta.make(deleted=["c"], dim=1))
    assert published_generation(registry.model_dir, 1) == 1 and ahead.applied == []
    fleet.index.pop()  # without the replica past the log, the delta is written and applied
    assert publish_delta(fleet, registry, 1, Delta.make(deleted=["c"], dim=1)).generation == 2


def test_a_catch_up_names_a_replica_past_the_log_instead_of_reporting_it_caught_up(tmp_path):
    # With no change asked for (--catch-up), the replica past the log answered ApplyCatalogue for generation 1
    # from what it held, and the run listed it as applied.
    registry, ahead = _log_cut_short(tmp_path)
    behind = _Replica()
    fleet = Fleet([Replica("index", "blue", behind)], [Replica("query", "q", as_query(ahead))])
    with pytest.raises(CatalogueError, match=r"query replica q holds version 1 at catalogue generation 2, but "
                                             r"the registry's log of it ends at generation 1 "):
        catch_up(fleet, registry, 1, 1)
    assert behind.applied == ahead.applied == [] and published_generation(registry.model_dir, 1) == 1
    fleet.query.pop()
    assert catch_up(fleet, registry, 1, 1).applied == ["index blue"] and behind.applied == [1]


def test_a_shard_whose_replicas_did_not_answer_keeps_the_query_tier_put():
    # Shard 1's one replica did not say what it holds (its status failed, or it was not reached at all): every
    # shard must have a replica at the generation before a query replica moves to it, and shard 1 has none.
    shard0, query = _Replica(shard=0, shards=2), _Replica()
    mute = _Replica(shard=1, shards=2)
    mute.GetStatus = lambda *args, **kwargs: (_ for _ in ()).throw(_Refused("status failed"))
    fleet = Fleet([Replica("index", "s0", shard0), Replica("index", "s1", mute)],
                  [Replica("query", "q", as_query(query))])
    rollout = apply_everywhere(fleet, 1, 1)
    assert query.applied == [] and rollout.applied == ["index s0"] and "shard 1 of 2" in rollout.failed["query q"]
    fleet = Fleet([Replica("index", "s0", shard0)], [Replica("query", "q", as_query(query))],
                  unreachable={("index", "s1"): "index replica s1: no admin server answers there"})
    rollout = apply_everywhere(fleet, 1, 2)
    assert query.applied == [] and rollout.applied == ["index s0"] and "shard 1 of 2" in rollout.failed["query q"]
    assert rollout.failed["index s1"] == "index replica s1: no admin server answers there"


class _AdminServer(admin_pb2_grpc.AdminServiceServicer):
    """A real admin plane in front of a ``_Replica``."""

    def __init__(self, replica: _Replica):
        self.replica = replica

    def GetStatus(self, request, context):
        return self.replica.GetStatus(request)

    def ApplyCatalogue(self, request, context):
        return self.replica.ApplyCatalogue(request)


@contextlib.contextmanager
def _admin_servers(*replicas: _Replica):
    """The admin addresses of real servers for ``replicas``."""
    servers, addresses = [], []
    for replica in replicas:
        servers.append(grpc.server(ThreadPoolExecutor(2)))
        admin_pb2_grpc.add_AdminServiceServicer_to_server(_AdminServer(replica), servers[-1])
        addresses.append(f"127.0.0.1:{servers[-1].add_insecure_port('127.0.0.1:0')}")
        servers[-1].start()
    try:
        yield addresses
    finally:
        for server in servers:
            server.stop(None)


def _delete_c(tmp_path, flags: Callable[[str, str], list[str]]) -> tuple[int, Registry, _Replica, _Replica, str, str]:
    """recsys-catalogue deleting c from version 1, its replica flags ``flags(index address, query address)`` of an
    index slot and a query replica behind real admin servers: (exit status, registry, index, query, addresses)."""
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    index, query = _Replica(), as_query(_Replica())
    with _admin_servers(index, query) as (index_address, query_address):
        with pytest.raises(SystemExit) as exit:
            catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "c",
                            *flags(index_address, query_address)])
    return exit.value.code, registry, index, query, index_address, query_address


def test_an_index_replica_that_does_not_answer_is_a_failed_replica_in_the_report(tmp_path, capsys):
    """As documented: the delta is written and applied where it can be; the report names the replica and the exit
    status is 1 (the replica replays the delta at its next load)."""
    status, registry, index, query, index_address, query_address = _delete_c(tmp_path, lambda i, q: [
        "--index-admin", f"{i},127.0.0.1:1", "--query-admin", q, "--connect-timeout-s", "0.5"])
    out = capsys.readouterr().out
    assert status == 1, out
    report = json.loads(out)
    assert report["generation"] == 1 and published_generation(registry.model_dir, 1) == 1
    assert index.applied == [1] and query.applied == [1]
    assert report["applied"] == [f"index {index_address}", f"query {query_address}"]
    assert list(report["failed"]) == ["index 127.0.0.1:1"]
    assert "no admin server answers there" in report["failed"]["index 127.0.0.1:1"]


def test_replicas_given_in_each_others_flags_are_refused_before_anything_is_written(tmp_path, capsys):
    """Found trying the tools (stop 60): recsys-publish refused them, recsys-catalogue did not. It applied the delta
    to the query replica before the index slot (the order a delta needs broken) and reported both as applied."""
    status, registry, index, query, index_address, query_address = _delete_c(tmp_path, lambda i, q: [
        "--index-admin", q, "--query-admin", i])
    assert status == 1 and (index.applied, query.applied) == ([], [])
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"recsys-catalogue: --index-admin {query_address} is the query service of model 'm', not the index service "
        f"of 'm': give --index-admin only the admin addresses of 'm''s index slots; nothing changed")
    assert published_generation(registry.model_dir, 1) == 0


def test_a_stop_while_the_roles_are_checked_is_a_stop_not_a_replica_that_did_not_answer(tmp_path):
    """``Interrupted`` is a PublishError: taken for a replica's failed status call, a Ctrl-C was passed over and the
    catch-up ran on (found by a review, stop 60)."""
    class Stopped(_Replica):
        def GetStatus(self, request, metadata=None, timeout=None):
            raise Interrupted(signal.SIGINT)  # as the handler raises it inside the call

    fleet = Fleet([Replica("index", "i:1", Stopped())], [])
    with pytest.raises(Interrupted):
        check_fleet(fleet, "m", unanswered_ok=True)
    # The delta's own check of the replicas took it so too, and wrote and applied the delta.
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    with pytest.raises(Interrupted):
        publish_delta(fleet, registry, 1, Delta.make(deleted=["c"], dim=1))
    assert published_generation(registry.model_dir, 1) == 0


def test_a_catalogue_directory_that_cannot_be_written_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    directory = registry.model_dir / "catalogue" / "1"

    def refused(*args, **kwargs):  # as on a read-only catalogue directory (as root, a chmod would not refuse)
        raise PermissionError(1, "Operation not permitted", str(directory / ".tmp-x.npz"))

    monkeypatch.setattr(deltas.tempfile, "mkstemp", refused)
    index = _Replica()
    with _admin_servers(index) as (address,):
        with pytest.raises(SystemExit) as exit:
            catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "c",
                            "--index-admin", address])
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and "\n" not in err, err
    assert err.startswith(f"recsys-catalogue: the delta was not written: catalogue directory {directory} ")
    assert "Operation not permitted" in err and index.applied == []
