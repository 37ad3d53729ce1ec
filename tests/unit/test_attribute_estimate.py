"""The filter selectivity estimate (``AttributeColumns.selectivity``) on real tree-AH searchers: a filter
estimated to pass far more rows than it does skips the exact search it needed and is answered from the
over-fetch, whose recall at a 1% filter is ~0.92. The estimate must hold after catalogue deltas and for
restricts whose rows hold several of its tokens."""

from __future__ import annotations

import numpy as np

from index_service.attributes import ESTIMATE_SAMPLE, AttributeColumns
from index_service.rows import Rows
from index_service.searcher import CandidateIndex, _scann_pybind
from model_registry import IndexSpec, Manifest
from model_registry.attributes import Attributes
from model_registry.deltas import Delta
from serving.filters import check_filter
from serving.lifecycle.admin import LoadReport

DIM = 16


def _index(n: int, attributes: Attributes) -> tuple[CandidateIndex, np.ndarray]:
    """A tree-AH index over n random vectors (searching half its leaves) with ``attributes``; 50 queries."""
    rng = np.random.default_rng(0)
    db = rng.standard_normal((n, DIM)).astype(np.float32)
    searcher = _scann_pybind().builder(db, 10, "dot_product").tree(
        num_leaves=50, num_leaves_to_search=25, training_sample_size=n).score_ah(
        2, anisotropic_quantization_threshold=0.2).reorder(200).build()
    ids = np.array([f"i{j:06d}" for j in range(n)])
    manifest = Manifest("m", 1, DIM, n, "id", "test", "now", IndexSpec("tree_ah", 50, 25, 200), {})
    index = CandidateIndex(manifest, Rows(ids, db), searcher, LoadReport(0, 0), AttributeColumns(attributes, n),
                           ([], []))
    return index, rng.standard_normal((50, DIM)).astype(np.float32)


def test_a_range_keeps_its_recall_after_a_delta_moves_the_values():
    """A delta re-prices 99% of the catalogue into a range no candidate had at load: the range over the old prices
    then passes 1% of the rows, but the estimate, from values sampled at load, said every row."""
    n = 30_000
    index, queries = _index(n, Attributes.from_lists(n, numeric={"price": (np.arange(n) % 100).astype(np.float32)}))
    rows = np.arange(n)[np.arange(n) % 100 != 0]
    index.apply_catalogue([Delta.make(index.rows.ids[rows].tolist(), index.rows.vectors(rows), Attributes.from_lists(
        len(rows), numeric={"price": (1000 + rows % 100).astype(np.float32)}), [], dim=DIM)], 1)
    old_prices = check_filter([], [("price", None, 99.0)], "", 0)
    assert index.attributes.mask(old_prices).sum() == n // 100
    assert index.recall(queries, 10, old_prices) >= 0.95
    assert index.attributes.selectivity(old_prices) < 0.02
    new_prices = check_filter([], [("price", 1000.0, None)], "", 0)
    assert abs(index.attributes.selectivity(new_prices) - 0.99) < 0.01


def test_a_range_counts_the_candidates_deltas_added_and_deleted():
    """Rows a delta appends join the sample; rows deletion empties leave it. (An estimate too low costs an exact
    search over more rows than EXACT_MAX_ROWS, not recall.)"""
    n = 30_000
    index, _ = _index(n, Attributes.from_lists(n, numeric={"price": np.zeros(n, np.float32)}))
    rng = np.random.default_rng(1)
    added = [f"new{j}" for j in range(n)]
    index.apply_catalogue([Delta.make(added, rng.standard_normal((n, DIM)).astype(np.float32), Attributes.from_lists(
        n, numeric={"price": np.full(n, 5.0, np.float32)}), [], dim=DIM)], 1)
    five = check_filter([], [("price", 5.0, 5.0)], "", 0)
    assert abs(index.attributes.selectivity(five) - 0.5) < 0.02
    index.apply_catalogue([Delta.make(deleted=added[:n // 2], dim=DIM)], 2)
    assert abs(index.attributes.selectivity(five) - 1 / 3) < 0.02


def test_an_allow_list_counts_a_candidate_holding_several_of_its_tokens_once():
    """1% of the candidates are sold in all 80 regions: allowing those regions passes 1%, not 80 x 1%."""
    n = 30_000
    regions = [f"r{i}" for i in range(80)]
    index, queries = _index(n, Attributes.from_lists(
        n, {"region": [regions if j % 100 == 0 else [f"local{j % 7}"] for j in range(n)]}))
    everywhere = check_filter([("region", regions, [])], [], "", 0)
    assert index.recall(queries, 10, everywhere) >= 0.95
    assert index.attributes.selectivity(everywhere) < 0.02


def test_a_deny_list_is_estimated_over_the_rows_its_allow_list_passes():
    """Half the candidates are listed and all of those but 1% of the catalogue are sold out: "listed, not sold out"
    passes 1%, not the 0.5 x (1 - 0.49) of taking allow and deny as independent."""
    n = 100_000
    stock = [(["listed", "sold_out"] if j % 100 != 1 else ["listed"]) if j % 2 else ["draft"] for j in range(n)]
    index, queries = _index(n, Attributes.from_lists(n, {"stock": stock}))
    in_stock = check_filter([("stock", ["listed"], ["sold_out"])], [], "", 0)
    assert index.attributes.mask(in_stock).sum() == n // 100
    assert index.recall(queries, 10, in_stock) >= 0.95
    assert index.attributes.selectivity(in_stock) < 0.02


def test_the_sample_stays_bounded_as_deltas_grow_a_small_catalogue():
    """A version loaded with 100 rows samples every row; grown to 50,100 by deltas, it keeps ~ESTIMATE_SAMPLE."""
    columns = AttributeColumns(Attributes.from_lists(100, numeric={"price": np.zeros(100, np.float32)}), 100)
    for start in range(100, 50_000, 1000):
        added = Attributes.from_lists(1000, numeric={"price": np.full(1000, 5.0, np.float32)})
        columns.write(np.arange(start, start + 1000), columns.encode(added), added, slice(0, 1000))
    assert columns.rows == 50_100 and len(columns._sample) <= 2 * ESTIMATE_SAMPLE
    assert abs(columns.selectivity(check_filter([], [("price", 5.0, None)], "", 0)) - 50_000 / 50_100) < 0.005
