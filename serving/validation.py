"""Request checks shared by both services. Limits are documented in the proto."""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import numpy as np

from model_registry.ids import MAX_ID_BYTES  # also the trainer's: ids it trains on are ones a request may hold
from serving.errors import InvalidArgument

DEFAULT_MAX_K = 1000
MAX_EXCLUSIONS = 10_000
MAX_RECENT = 1000
# A batch search's work and answer grow with queries x k: 10,000 queries at
# k = 1000 took 30 s and 2.5 GB of an index process before these bounds.
DEFAULT_MAX_BATCH_QUERIES = 1024
DEFAULT_MAX_BATCH_RESULTS = 100_000
DEFAULT_MAX_BATCH_REQUESTS = 256
MAX_RECORDED = 100  # interactions per RecordInteractions call
# The data plane's default message limit (--max-message-bytes), and what its clients accept: gRPC's own
# default of 4 MiB on a client would refuse a BatchRecommend answer the server may send.
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
# A query replica's deadline for each index RPC (--index-timeout-s), and how long an index slot that answered a
# search refuses a load (--busy-window-s): past it no search sent before a routing switch is still in flight.
DEFAULT_INDEX_DEADLINE_S = 3.0


def check_id(value: str, what: str) -> str:
    if not value:
        raise InvalidArgument(f"{what} is empty: pass a non-empty id")
    size = len(value.encode("utf-8"))
    if size > MAX_ID_BYTES:
        raise InvalidArgument(f"{what} is {size} bytes; ids are at most {MAX_ID_BYTES} bytes")
    if "\x00" in value:
        # numpy's fixed-width strings drop trailing NULs: "c1\x00" would be looked up, excluded and upserted as "c1".
        raise InvalidArgument(f"{what} {value[:64]!r} contains a NUL character (\\x00): ids are text without NUL")
    if value != value.strip():
        # Else it matches nothing: a customer answered by popularity, an exclusion that excludes nothing.
        raise InvalidArgument(f"{what} {value[:64]!r} has whitespace at its start or end, which no id has (the "
                              "trainer trims ids): send it without")
    return value


def check_k(k: int, max_k: int) -> int:
    if k < 1 or k > max_k:
        raise InvalidArgument(f"k={k} is out of range: ask for 1 to {max_k} candidates")
    return k


def check_id_list(ids: Iterable[str], field: str, limit: int) -> tuple[str, ...]:
    ids = tuple(ids)
    if len(ids) > limit:
        raise InvalidArgument(f"{field} has {len(ids)} ids; at most {limit} are allowed per request")
    # The usual list checked at C speed (none empty, none long enough to pass MAX_ID_BYTES in UTF-8, no NUL, none
    # trimmed by strip, which returns the same string when it trims nothing); else id by id, so the refusal names the
    # first bad one. By id alone, 10,000 exclusions took ~7 ms to check.
    if not (all(ids) and max(map(len, ids), default=0) <= MAX_ID_BYTES // 4 and "\x00" not in "".join(ids)
            and ids == tuple(map(str.strip, ids))):
        for i, value in enumerate(ids):
            check_id(value, f"{field}[{i}]")
    return ids


def check_exclusions(ids: Iterable[str]) -> frozenset[str]:
    return frozenset(check_id_list(ids, "exclude_candidate_ids", MAX_EXCLUSIONS))


def check_interactions(ids: Iterable[str]) -> tuple[str, ...]:
    """The candidate ids of one RecordInteractions call: 1..MAX_RECORDED valid ids."""
    ids = check_id_list(ids, "candidate_ids", MAX_RECORDED)
    if not ids:
        raise InvalidArgument(f"candidate_ids is empty: send 1 to {MAX_RECORDED} interactions per call")
    return ids


def check_batch_requests(count: int, max_requests: int) -> None:
    """Bounds a BatchRecommend: 1..max_requests requests."""
    if count < 1:
        raise InvalidArgument("requests is empty: send at least one")
    if count > max_requests:
        raise InvalidArgument(f"{count} requests in one batch; at most {max_requests} are allowed: split the batch")


@contextmanager
def item(field: str, index: int) -> Iterator[None]:
    """Names the item of a repeated field in the InvalidArgument its checks raise
    (``k=0 ...`` becomes ``requests[3].k=0 ...``), so a caller of a batch knows
    which item to fix."""
    try:
        yield
    except InvalidArgument as e:
        raise InvalidArgument(f"{field}[{index}].{e}") from None


# What check_batch's refusals say of the bound they name, read back by a caller that batches (the query service
# splits its searches at the bounds of an index started with lower ones than the defaults).
_REFUSED_BOUNDS = (("queries", re.compile(r"queries in one batch; at most (\d+) are allowed")),
                   ("results", re.compile(r"results; at most (\d+) per call")))


def refused_batch_bound(message: str) -> tuple[str, int] | None:
    """The bound a ``check_batch`` refusal's ``message`` names: ("queries", most queries) or ("results", most
    results); None for any other message."""
    for name, pattern in _REFUSED_BOUNDS:
        found = pattern.search(message)
        if found:
            return name, int(found.group(1))
    return None


def check_answer_size(size: int, max_message_bytes: int, remedy: str) -> None:
    """Refuses an answer of ``size`` bytes that the server may not send (its --max-message-bytes): gRPC would fail
    the call after all its work with a bare RESOURCE_EXHAUSTED, which reads as a load to shed and retry."""
    if size > max_message_bytes:
        raise InvalidArgument(f"the answer is {size:,} bytes, over the {max_message_bytes:,} bytes a message may "
                              f"take (--max-message-bytes): {remedy}")


def check_sendable(answer, bound: float, max_message_bytes: int, remedy: str) -> None:
    """``check_answer_size`` for a protobuf ``answer`` of at most ``bound`` bytes: sized exactly only when the
    bound could pass the limit, since the size costs a serialization (15 ms at 12 MB)."""
    if bound > max_message_bytes:
        check_answer_size(answer.ByteSize(), max_message_bytes, remedy)


# What check_answer_size's refusal says of the answer and the limit, read back by a caller that batches (the query
# service splits its searches so an index's answers fit the index's --max-message-bytes).
_REFUSED_ANSWER = re.compile(r"the answer is ([\d,]+) bytes, over the ([\d,]+) bytes a message may take")


def refused_answer_size(message: str) -> tuple[int, int] | None:
    """(the answer's bytes, the most a message may take) that a ``check_answer_size`` refusal's ``message`` names;
    None for any other message."""
    found = _REFUSED_ANSWER.search(message)
    return (int(found.group(1).replace(",", "")), int(found.group(2).replace(",", ""))) if found else None


def check_batch(ks: Sequence[int], max_queries: int, max_results: int) -> None:
    """Bounds a batch search before any work: its size, and queries x the largest k
    (what the search computes and the answer holds)."""
    if not ks:
        raise InvalidArgument("no queries: send at least one")
    if len(ks) > max_queries:
        raise InvalidArgument(f"{len(ks)} queries in one batch; at most {max_queries} are allowed: split the batch")
    work = len(ks) * max(ks)
    if work > max_results:
        raise InvalidArgument(f"{len(ks)} queries x k={max(ks)} = {work} results; at most {max_results} per call: "
                              f"split the batch or lower k")


def check_vectors(vectors: Sequence[Sequence[float]], dim: int, version: int) -> np.ndarray:
    """The query vectors (sequences, such as requests' repeated fields) as one float32 matrix, each of ``dim`` finite
    values. One conversion and one check for the whole batch: a list, an array and a check per vector cost 13 us a
    query, this 5."""
    for values in vectors:
        if len(values) != dim:
            raise InvalidArgument(
                f"query vector has {len(values)} dimensions; model version {version} embeds into {dim}"
            )
    matrix = np.array(vectors, dtype=np.float32)
    finite = np.isfinite(matrix)
    if not finite.all():
        row, bad = (int(i) for i in np.argwhere(~finite)[0])
        raise InvalidArgument(f"query vector has a non-finite value ({vectors[row][bad]}) at position {bad}")
    return matrix
