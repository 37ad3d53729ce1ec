"""Crowded answers of one index against an exact reference: greedy crowding of every candidate by score, each result
naming its tokens of the crowding namespace in the order its attributes list them. A random catalogue of rows with
zero to four genres (unsorted, some rows with none) and a kind (nine in ten rows a film, so crowding binds at a cap
close to k), then changed by a catalogue delta (new tokens, rows rewritten and deleted), searched through every path
that crowds: the over-fetch, exact search under a restrict, a popularity answer and the servicer's SearchResponse."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest

from index_service.attributes import AttributeColumns
from index_service.core import Answer
from index_service.rows import Rows
from index_service.searcher import CandidateIndex, _scann_pybind
from index_service.servicer import _response
from model_registry import IndexSpec, Manifest
from model_registry.attributes import Attributes
from model_registry.deltas import Delta
from serving.filters import NO_FILTER, Filter, check_filter
from serving.lifecycle.admin import LoadReport

DIM, N = 8, 1500
GENRES = [f"g{j:02d}" for j in range(12)]
TOKENS_ONLY = 2**31 - 1  # what a sharded version's shards are asked (query_service/index/merge.py): never reached


def _tokens(rng, rows: int, names: list[str], most: int = 4) -> list[list[str]]:
    """Zero to ``most`` distinct tokens a row, in random order (an index keeps its attributes' order), common ones
    most often."""
    share = 1.0 / np.arange(1, len(names) + 1) ** 1.2
    return [rng.choice(names, size=rng.integers(0, most + 1), replace=False, p=share / share.sum()).tolist()
            for _ in range(rows)]


def _kinds(rng, rows: int) -> list[list[str]]:
    return [["film"] if rng.random() < 0.9 else ["series", "film"] if rng.random() < 0.5 else ["series"]
            for _ in range(rows)]


def _attributes(tokens: dict[str, list[list[str]]]) -> Attributes:
    """Attributes holding each row's tokens in the order given (``from_lists`` sorts them)."""
    packed = {ns: (np.concatenate([[0], np.cumsum([len(t) for t in held])]).astype(np.int64),
                   np.array(sum(held, []), dtype=str)) for ns, held in tokens.items()}
    return Attributes(len(next(iter(tokens.values()))), packed, {})


class Reference:
    """The catalogue as a dict, changed as the index is, with the answers one exact index over it gives."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, tokens: dict[str, list[list[str]]]):
        self.rows: dict[str, tuple[np.ndarray, dict[str, tuple[str, ...]]]] = {}
        self.apply(Delta.make(ids, vectors, dim=DIM), tokens)

    def apply(self, delta: Delta, tokens: dict[str, list[list[str]]]) -> None:
        for j, (i, vector) in enumerate(zip(delta.ids.tolist(), delta.vectors)):
            self.rows[i] = (vector, {ns: tuple(held[j]) for ns, held in tokens.items()})
        for i in delta.deleted.tolist():
            self.rows.pop(i, None)

    def crowded(self, scores: dict[str, float], k: int, f: Filter, excluded: frozenset[str] = frozenset()):
        """(ids, tokens) of the first k of ``scores`` (best first, ties by id) passing ``f``'s allow-lists,
        at most ``f.max_per_value`` of them sharing a token (no limit without crowding)."""
        taken: collections.Counter[str] = collections.Counter()
        ids, named = [], []
        for i in sorted(scores, key=lambda i: (-scores[i], i)):
            tokens = self.rows[i][1]
            if i in excluded or any(r.allow and not r.allow & set(tokens[r.namespace]) for r in f.restricts):
                continue
            held = tokens[f.crowding_namespace] if f.max_per_value else ()
            if any(taken[t] >= f.max_per_value for t in held):
                continue
            taken.update(held)
            ids.append(i)
            named.append(held)
            if len(ids) == k:
                break
        return ids, named

    def search(self, query: np.ndarray, k: int, f: Filter, excluded: frozenset[str] = frozenset()):
        return self.crowded({i: float(np.dot(v.astype(np.float64), query)) for i, (v, _) in self.rows.items()},
                            k, f, excluded)


def _catalogue() -> tuple[CandidateIndex, Reference]:
    """An index of N random candidates and its reference, both changed by one delta."""
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = np.array([f"m{j:05d}" for j in range(N)])
    tokens = {"genres": _tokens(rng, N, GENRES), "kind": _kinds(rng, N)}
    index = CandidateIndex(Manifest("m", 1, DIM, N, "id", "test", "now", IndexSpec("brute_force"), {}),
                           Rows(ids, vectors), _scann_pybind().builder(vectors, 10, "dot_product")
                           .score_brute_force().build(), LoadReport(0, 0),
                           AttributeColumns(_attributes(tokens), N), (ids[::7].tolist(), np.linspace(1, 0, 215)))
    reference = Reference(ids, vectors, tokens)
    _change(index, reference, rng, GENRES[:4] + ["new1", "new2", "new3"], 1)
    return index, reference


def _change(index: CandidateIndex, reference: Reference, rng, genres: list[str], generation: int,
            most: int = 4) -> None:
    """A delta to both: 60 new candidates and 40 rewritten ones, with up to ``most`` of ``genres`` each (those the
    version never had grow its vocabulary), and 31 deletions (the last rows move into the deleted ones' places)."""
    held = list(reference.rows)
    upserts = [f"n{generation}-{j:03d}" for j in range(60)] + [held[j] for j in rng.choice(len(held), 40, False)]
    changed = {"genres": _tokens(rng, len(upserts), genres, most), "kind": _kinds(rng, len(upserts))}
    delta = Delta.make(upserts, rng.standard_normal((len(upserts), DIM)).astype(np.float32), _attributes(changed),
                       deleted=[held[j] for j in rng.choice(len(held), 30, False)] + [upserts[5]], dim=DIM)
    index.apply_catalogue([delta], generation)
    reference.apply(delta, changed)


@pytest.fixture(scope="module")
def catalogue() -> tuple[CandidateIndex, Reference]:
    return _catalogue()


def _crowding(namespace: str, max_per_value: int, restricts=()) -> Filter:
    f = check_filter(list(restricts), [], namespace, 1)
    return dataclasses.replace(f, max_per_value=max_per_value)


CROWDING = [("genres", 1), ("genres", 2), ("genres", TOKENS_ONLY), ("kind", 7), ("kind", 60)]


@pytest.mark.parametrize("namespace, max_per_value", CROWDING)
@pytest.mark.parametrize("k", [10, 100])
def test_a_crowded_search_is_greedy_crowding_of_every_candidate_naming_its_tokens(catalogue, namespace,
                                                                                   max_per_value, k):
    index, reference = catalogue
    queries = np.random.default_rng(k + max_per_value % 97).standard_normal((6, DIM)).astype(np.float32)
    f = _crowding(namespace, max_per_value)
    excluded = [frozenset() for _ in queries]
    excluded[1] = frozenset(reference.search(queries[1], 3, f)[0] + ["m00000"])
    for query, out, skip in zip(queries, index.search(queries, k, excluded, f), excluded):
        ids, tokens = reference.search(query, k, f, skip)
        assert out.ids == ids and out.crowding == tokens
        response = _response(out, Answer(1, 1), "m")
        assert [c.candidate_id for c in response.candidates] == ids
        assert [tuple(c.tokens) for c in response.crowding] == tokens


@pytest.mark.parametrize("k", [10, 100])
def test_an_uncrowded_search_passes_over_its_exclusions_only(catalogue, k):
    index, reference = catalogue
    queries = np.random.default_rng(k + 2).standard_normal((4, DIM)).astype(np.float32)
    excluded = [frozenset(reference.search(query, 2 * k, NO_FILTER)[0][::2] + ["m00001", "absent"])
                for query in queries]
    for query, out, skip in zip(queries, index.search(queries, k, excluded), excluded):
        assert (out.ids, out.crowding) == (reference.search(query, k, NO_FILTER, skip)[0], None)


@pytest.mark.parametrize("namespace, max_per_value", CROWDING)
@pytest.mark.parametrize("k", [10, 100])
def test_crowding_after_a_restrict_and_of_the_popular_is_exact_too(catalogue, namespace, max_per_value, k):
    index, reference = catalogue
    queries = np.random.default_rng(k + 1).standard_normal((3, DIM)).astype(np.float32)
    f = _crowding(namespace, max_per_value, [("genres", ["g01", "new2"], [])])  # exact search over the rows passing
    for query, out in zip(queries, index.search(queries, k, f=f)):
        assert (out.ids, out.crowding) == reference.search(query, k, f)
    f = _crowding(namespace, max_per_value)
    popular = dict(zip(index.popular_ids, index.popular_scores))
    scores = {i: popular.get(i, 0.0) for i in reference.rows}
    # Past the popular list, the other candidates come in row order: a popularity answer is compared only as far.
    held = [i for i in index.popular_ids if i in reference.rows]
    out = index.by_popularity(k, f=f)
    ids, tokens = reference.crowded({i: scores[i] for i in held}, k, f)
    assert (out.ids[:len(ids)], out.crowding[:len(ids)]) == (ids, tokens)


def test_answers_name_the_tokens_rows_hold_now_as_deltas_rewrite_and_widen_them():
    """A delta rewrites rows that answers named already, some with more tokens than any row held (the columns
    widen): answers name what each result holds now."""
    index, reference = _catalogue()
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((4, DIM)).astype(np.float32)

    def check():
        for namespace, max_per_value in CROWDING:
            f = _crowding(namespace, max_per_value)
            for query, out in zip(queries, index.search(queries, 100, f=f)):
                assert (out.ids, out.crowding) == reference.search(query, 100, f)

    check()
    for generation in (2, 3):
        _change(index, reference, rng, GENRES + ["new4"], generation, most=6)
        check()
    assert index.attributes.tokens["genres"].matrix.shape[1] > 4  # widened
