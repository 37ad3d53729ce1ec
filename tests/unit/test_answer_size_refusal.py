"""An index's refusal of an answer over its --max-message-bytes, read back by the query service, which splits its
search calls so each answer fits (``query_service.index.index_client._over_bound``; the real slot's refusal and the
split: tests/integration/test_index_answer_split.py)."""

from __future__ import annotations

import pytest

from query_service.index import index_client
from serving import validation
from serving.errors import InvalidArgument

LIMIT = 4 << 20


def test_an_answer_size_refusal_names_the_answer_and_the_limit_to_a_caller_that_splits():
    with pytest.raises(InvalidArgument) as refused:
        validation.check_answer_size(4_539_259, LIMIT, "split the batch or lower k")
    assert validation.refused_answer_size(str(refused.value)) == (4_539_259, LIMIT)
    assert validation.refused_answer_size("17 queries x k=1000 = 17000 results; at most 1000 per call") is None


# Bytes a result takes in a refused answer: ids of the most bytes, short ids, ids with crowding tokens.
@pytest.mark.parametrize("per_result", [index_client.RESULT_BYTES, 40, 600])
def test_parts_asking_for_the_results_a_refused_answer_allows_fit_the_limit(per_result):
    queries, k = 47, 1000
    size = queries * (k * per_result + 90)
    fit = index_client._fitting_results(queries * k, size, LIMIT)
    assert fit < queries * k
    # A part of fit results at k = 1000 holds fit // k queries (one at least), each with up to 90 bytes besides.
    assert fit * per_result + max(fit // k, 1) * 90 <= LIMIT, fit
