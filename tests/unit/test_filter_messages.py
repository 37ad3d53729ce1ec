"""A crowding filter's refusals point to a filter that passes: a fix a message asks for is not refused in turn. A
filter clause this release does not know is refused, not left out."""

import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from serving.errors import InvalidArgument
from serving.filters import check_filter
from serving.rpc.filter_protos import filter_from_proto


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


# Field 9, varint 1: a field no message of the filter has (a clause a later release might add).
LATER_FIELD = b"\x48\x01"


@pytest.mark.parametrize("where", ["filter", "filter.restricts[0]", "filter.ranges[0]"])
def test_a_filter_field_this_release_does_not_know_is_refused_not_left_out(where):
    message = pb.Filter(restricts=[pb.TokenRestrict(namespace="genre", allow=["drama"])],
                        ranges=[pb.NumericRange(namespace="price", max=10.0)])
    assert filter_from_proto(message).restricts  # as sent, it passes
    parts = {"filter": message, "filter.restricts[0]": message.restricts[0], "filter.ranges[0]": message.ranges[0]}
    part = parts[where]
    part.MergeFromString(LATER_FIELD)
    # As received by a service: parsed from the wire (a parse keeps unknown fields aside).
    received = pb.Filter.FromString(message.SerializeToString())
    with pytest.raises(InvalidArgument, match=rf"^{where.replace('[', '.').replace(']', '.')} holds field number 9, "
                                              "which this service does not know"):
        filter_from_proto(received)
    # A filter of nothing but the unknown clause: it filtered nothing before, answering everything.
    with pytest.raises(InvalidArgument, match="field number 9"):
        filter_from_proto(pb.Filter.FromString(LATER_FIELD))
