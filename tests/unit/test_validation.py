import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model_registry.deltas import Delta
from model_registry.ids import first_unusable, index_of
from protos.recsys.v1 import retrieval_pb2 as pb
from serving import validation
from serving.errors import InvalidArgument


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_k_out_of_range(k):
    with pytest.raises(InvalidArgument, match="ask for 1 to 1000"):
        validation.check_k(k, 1000)


def test_ids():
    assert validation.check_id("c1", "customer_id") == "c1"
    with pytest.raises(InvalidArgument, match="customer_id is empty"):
        validation.check_id("", "customer_id")
    with pytest.raises(InvalidArgument, match="at most 256 bytes"):
        validation.check_id("é" * 200, "customer_id")


def test_an_id_with_a_nul_character_is_refused():
    """numpy's fixed-width strings drop trailing NULs, so "c1\x00" would read as "c1" wherever ids meet an array:
    the customer store, the catalogue's rows, a delta's ids."""
    assert index_of(np.array(["c1", "c2"]), ["c1\x00"]).tolist() == [0]  # why: it would be answered as c1
    for value in ("c1\x00", "\x00", "c\x001"):
        with pytest.raises(InvalidArgument, match=r"customer_id .* contains a NUL character"):
            validation.check_id(value, "customer_id")
    with pytest.raises(InvalidArgument, match=r"exclude_candidate_ids\[1\] .* NUL"):
        validation.check_exclusions(["a", "b\x00"])


def test_an_id_with_whitespace_at_either_end_is_refused():
    """The trainer trims ids, so " c1" names no customer: answered by popularity, or excluding nothing, unless refused.
    A delta refuses such ids too, so no result holds one a request could not send back."""
    for value in (" c1", "c1 ", "\tc1", "c1\n", "c1\u3000"):
        with pytest.raises(InvalidArgument, match=r"customer_id .* whitespace at its start or end"):
            validation.check_id(value, "customer_id")
    assert validation.check_id("c 1", "customer_id") == "c 1"
    with pytest.raises(InvalidArgument, match=r"exclude_candidate_ids\[1\] 'b ' has whitespace"):
        validation.check_exclusions(["a", "b "])
    assert first_unusable(np.array(["a", "b c", " d"])) == 2
    with pytest.raises(ValueError, match="upserted id ' d' is no id a request could name"):
        Delta.make(ids=["a", " d"], vectors=np.ones((2, 2), np.float32), dim=2)


def test_exclusions():
    assert validation.check_exclusions(["a", "b", "a"]) == frozenset({"a", "b"})
    with pytest.raises(InvalidArgument, match="at most 10000"):
        validation.check_exclusions(["x"] * 10_001)
    with pytest.raises(InvalidArgument, match=r"exclude_candidate_ids\[1\] is empty"):
        validation.check_exclusions(["a", ""])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(st.characters(codec="utf-8"), max_size=80),
                          st.sampled_from(["", "a\x00", "\x00", "é" * 128, "é" * 129, "𝄞" * 64,
                                           "𝄞" * 65, "x" * 256, "x" * 257, " a", "a\t", "a b"])), max_size=12))
def test_a_list_of_ids_is_refused_exactly_where_its_first_bad_id_is(ids):
    """The list's check at C speed must agree with checking each id in turn: what it takes, and which id and why
    a refusal names (the text is drawn to hit empty, NUL-bearing and over-long ids)."""
    expected = None
    for i, value in enumerate(ids):
        try:
            validation.check_id(value, f"candidate_ids[{i}]")
        except InvalidArgument as e:
            expected = str(e)
            break
    if expected is None:
        assert validation.check_id_list(ids, "candidate_ids", 100) == tuple(ids)
    else:
        with pytest.raises(InvalidArgument) as refused:
            validation.check_id_list(ids, "candidate_ids", 100)
        assert str(refused.value) == expected


def test_vectors():
    np.testing.assert_array_equal(validation.check_vectors([[1.0, 2.0]], 2, 1), [[1.0, 2.0]])
    with pytest.raises(InvalidArgument, match="has 3 dimensions; model version 4 embeds into 2"):
        validation.check_vectors([[1.0, 2.0, 3.0]], 2, 4)
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidArgument, match="non-finite value .* at position 1"):
            validation.check_vectors([[0.0, bad]], 2, 1)


def test_vectors_of_a_batch_are_checked_as_one_matrix_and_name_the_bad_value():
    """A batch's vectors, as a request's repeated fields, become one float32 matrix; any vector of the wrong length
    or with a non-finite value fails the batch, naming the value and its position."""
    request = pb.BatchSearchRequest(queries=[pb.SearchRequest(vector=[0.5, -1.0, 2.0]) for _ in range(3)])
    matrix = validation.check_vectors([q.vector for q in request.queries], 3, 1)
    assert matrix.dtype == np.float32 and matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix, [[0.5, -1.0, 2.0]] * 3)
    with pytest.raises(InvalidArgument, match="has 2 dimensions; model version 7 embeds into 3"):
        validation.check_vectors([[0.0, 0.0, 0.0], [0.0, 0.0]], 3, 7)
    with pytest.raises(InvalidArgument, match=r"non-finite value \(-inf\) at position 2"):
        validation.check_vectors([[0.0, 0.0, 0.0], [0.0, 1.0, -math.inf], [math.nan, 0.0, 0.0]], 3, 1)
