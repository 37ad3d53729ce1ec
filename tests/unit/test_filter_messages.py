"""A crowding filter's refusals point to a filter that passes: a fix a message asks for is not refused in turn."""

import pytest

from serving.errors import InvalidArgument
from serving.filters import check_filter


@pytest.mark.parametrize("max_per_value", [-1, 0])
def test_a_crowding_namespace_without_a_positive_max_per_value_asks_for_one_or_more(max_per_value):
    with pytest.raises(InvalidArgument) as refused:
        check_filter([], [], "genre", max_per_value)
    message = str(refused.value)
    assert f"filter.max_per_value={max_per_value}" in message and "give 1 or more" in message
    # The words the message had before, which callers may match.
    assert "'genre'" in message and "filter.crowding_namespace and filter.max_per_value go together" in message
    assert "give 0" not in message  # 0 with a namespace is refused as well
    assert check_filter([], [], "genre", 1).max_per_value == 1  # what the message asks for passes


def test_a_negative_max_per_value_alone_names_both_ways_out():
    with pytest.raises(InvalidArgument, match=r"max_per_value=-2 is negative: leave it unset \(0\) for no crowding, "
                                              r"or give 1 or more with a crowding_namespace"):
        check_filter([], [], "", -2)
    assert not check_filter([], [], "", 0)
