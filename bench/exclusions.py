"""Recall and time of tree-AH searches whose exclusions are their own top rows, as a customer's history is under
``exclude_seen``: the rows kept then sit below the excluded ones, and only a search that re-scores as deep as its
whole fetch finds them (docs/BENCHMARKS.md, "Exclusions re-scored as deep as the fetch").

Synthetic clustered candidates (``bench.ann``'s mixture), the index built as the trainer builds it
(``trainer.export.index.build_index``: its recall target and the setting it picks), searched one query at a time
through ``CandidateIndex.search``, as the index service does. Each query excludes its own exact top N rows; recall@10
is against the exact top 10 of the rest; time per search is the best of ``--rounds``.

    python -m bench.exclusions [--quick] [--n 200000] [--dim 64] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from bench.ann import synthetic_clustered
from bench.common import git_commit, machine_info, table, write_json
from index_service.attributes import AttributeColumns
from index_service.rows import Rows
from index_service.searcher import CandidateIndex
from model_registry import Manifest
from serving.lifecycle.admin import LoadReport
from trainer.export.index import build_index

EXCLUDED = (0, 100, 300, 1000)
K = 10


def trained_index(n: int, dim: int, clusters: int, num_queries: int) -> tuple[CandidateIndex, np.ndarray, np.ndarray]:
    """A tree-AH index over ``n`` clustered vectors, built by the trainer's ``build_index`` (its recall target
    picks how few leaves a k=10 search opens); the vectors and ``num_queries`` queries."""
    db, probes, queries = synthetic_clustered(n, dim, clusters, 0.8, num_queries, 200, seed=0, decay=0.6)
    searcher, spec = build_index(db, probes)
    ids = np.array([f"c{j:07d}" for j in range(n)])
    manifest = Manifest("bench", 1, dim, n, "id", "synthetic", "now", spec, {})
    # A copy of the vectors: a catalogue delta (a test's deletes) rewrites the rows it holds.
    index = CandidateIndex(manifest, Rows(ids, db.copy()), searcher, LoadReport(0, 0), AttributeColumns(None, n),
                           ([], []))
    return index, db, queries


def own_top_excluded(index: CandidateIndex, db: np.ndarray, query: np.ndarray, excluded: int,
                     k: int = K) -> tuple[frozenset[str], set[str]]:
    """The query's exact top ``excluded`` rows, as exclusions, and the exact top k of the rest."""
    order = np.argsort(-(db @ query), kind="stable")
    ids = index.rows.ids
    return frozenset(ids[order[:excluded]].tolist()), set(ids[order[excluded:excluded + k]].tolist())


def measure(index: CandidateIndex, db: np.ndarray, queries: np.ndarray, excluded: int, rounds: int) -> dict:
    """recall@10 against exact search over the rows not excluded, and the best round's milliseconds a search."""
    exclusions, truths = zip(*(own_top_excluded(index, db, query, excluded) for query in queries))
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        answers = [index.search(query[None], K, [excl])[0] for query, excl in zip(queries, exclusions)]
        best = min(best, (time.perf_counter() - start) / len(queries))
    recall = float(np.mean([len(truth & set(answer.ids)) / K for truth, answer in zip(truths, answers)]))
    return {"recall_at_10": round(recall, 4), "ms_per_search": round(best * 1000, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="synthetic candidates")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 x 16, 20 queries, one round (the smoke test)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.clusters, args.queries, args.rounds = 20_000, 16, 100, 20, 1
    index, db, queries = trained_index(args.n, args.dim, args.clusters, args.queries)
    spec = index.manifest.index
    results = {str(n): measure(index, db, queries, n, args.rounds) for n in EXCLUDED}
    print(table([[n, r["recall_at_10"], r["ms_per_search"]] for n, r in results.items()],
                ["excluded top rows", "recall@10", "ms a search"]), file=sys.stderr)
    print(write_json({"benchmark": "exclusions", "commit": git_commit(), "machine": machine_info(),
                      "n": args.n, "dim": args.dim, "index": {"kind": spec.kind, "num_leaves": spec.num_leaves,
                                                              "num_leaves_to_search": spec.num_leaves_to_search,
                                                              "reorder": spec.reorder},
                      "queries": args.queries, "results": results}, args.out))


if __name__ == "__main__":
    main()
