"""The query service's searches of an index slot started with a --max-message-bytes below the 12 MiB its answers
are cut to: the slot refuses an answer over its limit naming it (``serving.validation.check_answer_size``), and
the query service's endpoint splits the call so every answer fits, as it does at a slot's lower batch bounds; a
single query whose answer cannot fit fails with the slot's message. Real processes: recsys-train, two index
slots (conftest.long_ids_version: candidates with ids of 256 bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from query_service.index.index_client import RESULT_BYTES, IndexEndpoint
from query_service.index.searches import IndexQuery
from serving import errors, validation
from tests.integration.conftest import index_slot
from tests.processes import start_all

pytestmark = pytest.mark.integration

LIMIT = 4 << 20  # blue's --max-message-bytes: 64 answers at k = 1000 of ids of 256 bytes take 17 MB
SMALL_LIMIT = 128 << 10  # green's: one answer at k = 1000 of such ids takes 266 KB, at k = 100 27 KB


@pytest.fixture(scope="module")
def slots(long_ids_version, tmp_path_factory):
    """Slots blue and green (at the message limits above) holding version 1 with 1,000 candidates of the longest
    ids, nearest to the query vector returned."""
    root, vector = long_ids_version
    logs = tmp_path_factory.mktemp("logs")
    blue = index_slot(root, "blue", logs / "blue.log", "--max-message-bytes", str(LIMIT))
    green = index_slot(root, "green", logs / "green.log", "--version", "1", "--max-message-bytes", str(SMALL_LIMIT))
    start_all(blue, green)
    try:
        yield blue, green, vector
    finally:
        green.stop()
        blue.stop()


def _queries(vector: np.ndarray, k: int, count: int) -> list[IndexQuery]:
    return [IndexQuery(vector, k, frozenset(), min_generation=1)] * count


async def test_misses_are_split_so_each_answer_fits_a_slots_lower_message_limit(slots):
    blue, _, vector = slots
    endpoint = IndexEndpoint(blue.address)
    try:
        # 64 misses at k = 1000: cut at 12 MiB of answer, parts of 47 and 17 queries, each over 4 MiB.
        hits = await endpoint.search(_queries(vector, 1000, 64), 1, 60)
        assert [len(h.ids) for h in hits] == [1000] * 64
        assert all(len(i) == validation.MAX_ID_BYTES for h in hits for i in h.ids)
        assert endpoint.bounds.results * RESULT_BYTES < LIMIT  # later calls are cut to fit at once
        again = await endpoint.search(_queries(vector, 1000, 64), 1, 60)
        assert [h.ids for h in again] == [h.ids for h in hits]
    finally:
        await endpoint.close()
    assert "ExecuteBatchError" not in blue.log_path.read_text()


async def test_a_single_query_whose_answer_cannot_fit_fails_with_the_slots_message(slots):
    _, green, vector = slots
    endpoint = IndexEndpoint(green.address)
    try:
        hits = await endpoint.search(_queries(vector, 100, 8), 1, 60)  # 213 KB in one answer: split
        assert [len(h.ids) for h in hits] == [100] * 8
        for count in (1, 2):  # two are split into one each, which cannot be split further
            with pytest.raises(errors.FailedPrecondition) as refused:
                await endpoint.search(_queries(vector, 1000, count), 1, 60)
            assert f"over the {SMALL_LIMIT:,} bytes a message may take (--max-message-bytes): lower k" \
                in str(refused.value), str(refused.value)
    finally:
        await endpoint.close()
