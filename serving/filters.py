"""Candidate filters as both services see them: restricts on token attributes,
numeric ranges and crowding (the proto's ``Filter``), validated once here.

The query service passes a filter through to the index and names it in cache
keys (``Filter.key``); the index evaluates it over the attributes stored with
the version (``index_service.attributes``). Limits are documented in the proto;
``serving.rpc.filter_protos`` converts to and from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from serving.errors import InvalidArgument
from serving.validation import check_id

MAX_RESTRICTS = 16
MAX_RANGES = 16
MAX_FILTER_TOKENS = 1000


@dataclass(frozen=True)
class TokenRestrict:
    """Passes a candidate holding any ``allow`` token (any candidate if empty) and no ``deny`` token."""

    namespace: str
    allow: frozenset[str] = frozenset()
    deny: frozenset[str] = frozenset()


@dataclass(frozen=True)
class NumericRange:
    """Passes a candidate whose value lies in [low, high] (inclusive; None: open)."""

    namespace: str
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Filter:
    """Every restrict and range must pass; at most ``max_per_value`` results
    may share a token of ``crowding_namespace`` (0: no crowding)."""

    restricts: tuple[TokenRestrict, ...] = ()
    ranges: tuple[NumericRange, ...] = ()
    crowding_namespace: str = ""
    max_per_value: int = 0

    def __bool__(self) -> bool:
        return bool(self.restricts or self.ranges or self.max_per_value)

    @property
    def selects(self) -> bool:
        """Whether it removes candidates (restricts or ranges), as opposed to crowding only."""
        return bool(self.restricts or self.ranges)

    def check_namespaces(self, tokens: set[str] | frozenset[str], numeric: set[str] | frozenset[str]) -> None:
        """Refuses a filter naming a namespace the version does not have (a caller's
        typo must not quietly return nothing)."""
        for restrict in self.restricts:
            if restrict.namespace not in tokens:
                raise InvalidArgument(f"filter namespace {restrict.namespace!r} is not a token namespace of this "
                                      f"version (token namespaces: {sorted(tokens)})")
        for numeric_range in self.ranges:
            if numeric_range.namespace not in numeric:
                raise InvalidArgument(f"filter namespace {numeric_range.namespace!r} is not a numeric namespace of "
                                      f"this version (numeric namespaces: {sorted(numeric)})")
        if self.crowding_namespace and self.crowding_namespace not in tokens:
            raise InvalidArgument(f"crowding namespace {self.crowding_namespace!r} is not a token namespace of this "
                                  f"version (token namespaces: {sorted(tokens)})")

    def key(self) -> str:
        """A canonical text of the filter: equal filters, equal keys (cache keys carry it)."""
        if not self:
            return ""
        return json.dumps([[[r.namespace, sorted(r.allow), sorted(r.deny)] for r in self.restricts],
                           [[r.namespace, r.low, r.high] for r in self.ranges],
                           self.crowding_namespace, self.max_per_value], ensure_ascii=False, separators=(",", ":"))


NO_FILTER = Filter()


def check_filter(restricts: list[tuple[str, list[str], list[str]]],
                 ranges: list[tuple[str, float | None, float | None]],
                 crowding_namespace: str, max_per_value: int) -> Filter:
    """A validated ``Filter`` from its fields as received; raises InvalidArgument
    with a message naming the field at fault."""
    if len(restricts) > MAX_RESTRICTS:
        raise InvalidArgument(f"filter.restricts has {len(restricts)} entries; at most {MAX_RESTRICTS}")
    if len(ranges) > MAX_RANGES:
        raise InvalidArgument(f"filter.ranges has {len(ranges)} entries; at most {MAX_RANGES}")
    tokens = sum(len(allow) + len(deny) for _, allow, deny in restricts)
    if tokens > MAX_FILTER_TOKENS:
        raise InvalidArgument(f"filter.restricts name {tokens} tokens in all; at most {MAX_FILTER_TOKENS}")
    checked_restricts = []
    for i, (namespace, allow, deny) in enumerate(restricts):
        check_id(namespace, f"filter.restricts[{i}].namespace")
        for field, values in (("allow", allow), ("deny", deny)):
            for j, token in enumerate(values):
                check_id(token, f"filter.restricts[{i}].{field}[{j}]")
        if not allow and not deny:
            raise InvalidArgument(f"filter.restricts[{i}] (namespace {namespace!r}) has neither allow nor deny "
                                  "tokens: give at least one, or leave the restrict out")
        checked_restricts.append(TokenRestrict(namespace, frozenset(allow), frozenset(deny)))
    checked_ranges = []
    for i, (namespace, low, high) in enumerate(ranges):
        check_id(namespace, f"filter.ranges[{i}].namespace")
        for name, bound in (("min", low), ("max", high)):
            if bound is not None and math.isnan(bound):
                raise InvalidArgument(f"filter.ranges[{i}].{name} is NaN: give a number or leave it unset")
        if low is not None and high is not None and low > high:
            raise InvalidArgument(f"filter.ranges[{i}] (namespace {namespace!r}) has min {low} > max {high}: "
                                  "no candidate can pass")
        checked_ranges.append(NumericRange(namespace, low, high))
    if crowding_namespace and max_per_value <= 0:
        # One message for -1 and 0: each alone would point to the other's refusal.
        raise InvalidArgument(f"filter.max_per_value={max_per_value} with filter.crowding_namespace "
                              f"{crowding_namespace!r}: filter.crowding_namespace and filter.max_per_value go "
                              "together, give 1 or more (at most that many results share a token), or leave both "
                              "unset for no crowding")
    if max_per_value < 0:
        raise InvalidArgument(f"filter.max_per_value={max_per_value} is negative: leave it unset (0) for no "
                              "crowding, or give 1 or more with a crowding_namespace")
    if bool(crowding_namespace) != bool(max_per_value):
        raise InvalidArgument("filter.crowding_namespace and filter.max_per_value go together: set both for "
                              "crowding, or neither")
    if crowding_namespace:
        check_id(crowding_namespace, "filter.crowding_namespace")
    return Filter(tuple(checked_restricts), tuple(checked_ranges), crowding_namespace, max_per_value)
