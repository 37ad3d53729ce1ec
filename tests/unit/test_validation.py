import math

import numpy as np
import pytest

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


def test_exclusions():
    assert validation.check_exclusions(["a", "b", "a"]) == frozenset({"a", "b"})
    with pytest.raises(InvalidArgument, match="at most 10000"):
        validation.check_exclusions(["x"] * 10_001)
    with pytest.raises(InvalidArgument, match=r"exclude_candidate_ids\[1\] is empty"):
        validation.check_exclusions(["a", ""])


def test_vector():
    np.testing.assert_array_equal(validation.check_vector([1.0, 2.0], 2, 1), [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="has 3 dimensions; model version 4 embeds into 2"):
        validation.check_vector([1.0, 2.0, 3.0], 2, 4)
    for bad in (math.nan, math.inf):
        with pytest.raises(InvalidArgument, match="non-finite value .* at position 1"):
            validation.check_vector([0.0, bad], 2, 1)
