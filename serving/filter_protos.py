"""Candidate filters (``serving.filters.Filter``) to and from the proto's
``recsys.v1.Filter``, for the RPC layers of both services and the clients."""

from __future__ import annotations

from protos.recsys.v1 import retrieval_pb2 as pb
from serving.filters import NO_FILTER, Filter, check_filter


def filter_from_proto(message) -> Filter:
    """A validated ``Filter`` from a ``recsys.v1.Filter`` (unset: ``NO_FILTER``)."""
    if message is None or not message.ByteSize():
        return NO_FILTER
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
