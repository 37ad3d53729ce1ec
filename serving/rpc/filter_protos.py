"""Candidate filters (``serving.filters.Filter``) to and from the proto's
``recsys.v1.Filter``, for the RPC layers of both services and the clients."""

from __future__ import annotations

from google.protobuf.unknown_fields import UnknownFieldSet

from protos.recsys.v1 import retrieval_pb2 as pb
from serving.errors import InvalidArgument
from serving.filters import NO_FILTER, Filter, check_filter


def _check_known(message) -> None:
    """Refuses a filter holding a field this release has no name for: a clause a later release added, which a
    parse keeps aside and the filter would leave out, answering candidates the caller filtered away."""
    parts = [("filter", message), *((f"filter.restricts[{i}]", r) for i, r in enumerate(message.restricts)),
             *((f"filter.ranges[{i}]", r) for i, r in enumerate(message.ranges))]
    for name, part in parts:
        unknown = UnknownFieldSet(part)
        if len(unknown):
            raise InvalidArgument(f"{name} holds field number {unknown[0].field_number}, which this service does not "
                                  "know (a filter clause of a later release?): it cannot apply it, and without it "
                                  "the answer would hold what the clause filters out. Leave the clause out, or "
                                  "upgrade this service")


def filter_from_proto(message) -> Filter:
    """A validated ``Filter`` from a ``recsys.v1.Filter`` (unset: ``NO_FILTER``)."""
    if message is None or not message.ByteSize():
        return NO_FILTER
    _check_known(message)
    return check_filter(
        [(r.namespace, list(r.allow), list(r.deny)) for r in message.restricts],
        [(r.namespace, r.min if r.HasField("min") else None, r.max if r.HasField("max") else None)
         for r in message.ranges],
        message.crowding_namespace, message.max_per_value)


def filter_to_proto(value: Filter) -> pb.Filter:
    """The ``recsys.v1.Filter`` of ``value``."""
    return pb.Filter(
        restricts=[pb.TokenRestrict(namespace=r.namespace, allow=sorted(r.allow), deny=sorted(r.deny))
                   for r in value.restricts],
        ranges=[pb.NumericRange(namespace=r.namespace, **({"min": r.low} if r.low is not None else {}),
                                **({"max": r.high} if r.high is not None else {}))
                for r in value.ranges],
        crowding_namespace=value.crowding_namespace, max_per_value=value.max_per_value)
