"""recsys-loadtest's RPC mix: parsing, the seeded draws of each request's RPC
and inputs, and the per-RPC part of the report."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from recsys_client.loadtest import LoadConfig, build_parser, format_table, run_load
from recsys_client.loadtest.cli import config_from_args
from recsys_client.loadtest.config import RPCS, parse_rpc_mix
from recsys_client.loadtest.report import ERROR, OK, RequestLog, build_report
from recsys_client.loadtest.traffic import CustomerSampler, RpcDraws
from serving.rpc.grpc_server import run_event_loop


def test_a_mix_is_normalised_into_shares_in_rpc_order():
    assert parse_rpc_mix("record=1,recommend=8,similar=1") == {"recommend": 0.8, "similar": 0.1, "record": 0.1}
    assert parse_rpc_mix("batch=2, similar=0") == {"batch": 1.0}


@pytest.mark.parametrize("text, message", [("recomend=1", "unknown RPC 'recomend'"),
                                           ("recommend", "is not NAME=WEIGHT"),
                                           ("recommend=-1", "must be >= 0"),
                                           ("recommend=inf", "must be >= 0 and finite"),
                                           ("recommend=0", "at least one RPC a positive weight")])
def test_a_bad_mix_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_rpc_mix(text)


def test_the_flags_reach_the_config():
    config = config_from_args(build_parser().parse_args([
        "--address", "h:1", "--qps", "10", "--duration-s", "1", "--rpc-mix", "recommend=3,batch=1",
        "--batch-size", "4", "--num-candidates", "50", "--candidate-format", "item-{}"]))
    assert (config.rpc_mix, config.batch_size, config.num_candidates, config.candidate_format) == (
        {"recommend": 0.75, "batch": 0.25}, 4, 50, "item-{}")
    assert config_from_args(build_parser().parse_args(["--address", "h:1", "--qps", "1", "--duration-s", "1"])
                            ).rpc_mix == {"recommend": 1.0}


def test_draws_follow_the_mix_and_leave_a_recommend_only_run_as_it_was():
    def draws(mix):
        config = LoadConfig(address="h:1", qps=1000, duration_s=4, rpc_mix=mix, batch_size=3, num_candidates=7)
        sampler = CustomerSampler(config.num_customers, seed=config.seed)
        customers = sampler.draw(config.total_requests)
        return customers, RpcDraws(config, config.total_requests, sampler)

    plain_customers, plain = draws({"recommend": 1.0})
    assert plain_customers == CustomerSampler(300).draw(4000) and not plain.rpcs.any() and plain.candidates == []
    customers, mixed = draws({"recommend": 0.5, "similar": 0.25, "batch": 0.25})
    assert customers == plain_customers
    shares = np.bincount(mixed.rpcs, minlength=len(RPCS)) / len(mixed.rpcs)
    np.testing.assert_allclose(shares, [0.5, 0.25, 0.25, 0.0], atol=0.03)
    assert set(mixed.candidates) <= {f"i{r:06d}" for r in range(7)} and len(mixed.candidates) == 4000
    first_batch = int(np.flatnonzero(mixed.rpcs == RPCS.index("batch"))[0])
    batch = mixed.batch(first_batch, customers[first_batch])
    assert len(batch) == 3 and batch[0] == customers[first_batch]


def test_the_report_has_each_rpc_s_counts_and_latency():
    log = RequestLog()
    for i in range(10):
        log.add(i * 0.1, OK, 1_000, 1, RPCS.index("recommend"))
    for i in range(4):
        log.add(i * 0.1, OK, 5_000, 0, RPCS.index("record"))  # RecordInteractions names no version
    log.add(0.5, ERROR, rpc=RPCS.index("record"))
    config = LoadConfig(address="x:1", qps=15, duration_s=1, rpc_mix={"recommend": 0.7, "record": 0.3})
    report = build_report(config, log, elapsed_s=1.0, errors_by_code=Counter({"UNAVAILABLE": 1}), cache_hits=3,
                          sources=Counter(), cache_hits_by_rpc=Counter({"recommend": 3}))
    json.dumps(report)
    assert report["model_versions"] == {"1": 10}
    # 3 hits of the 10 Recommend answers: the 4 RecordInteractions answers could not have been hits.
    assert report["requests"]["ok"] == 14 and report["cache_hit_ratio"] == pytest.approx(3 / 10, abs=1e-4)
    record = report["rpcs"]["record"]
    assert (record["requests"], record["ok"], record["errors"], record["cache_hits"]) == (5, 4, 1, 0)
    assert record["latency_ms"]["p50_ms"] == pytest.approx(5.0, rel=1e-3)
    assert report["rpcs"]["recommend"]["latency_ms"]["p99_ms"] == pytest.approx(1.0, rel=1e-3)
    assert "record    requests      5" in format_table(report)


class MixedFakeQuery(pb_grpc.QueryServiceServicer):
    """Every Recommend is a cache hit, every RecommendSimilar a miss; a BatchRecommend's items are hits too, but
    cache_hits counts Recommend and RecommendSimilar only, so its answers must not weigh on the ratio either."""

    def Recommend(self, request, context):
        return pb.RecommendResponse(model_version=7, cache_hit=True)

    def RecommendSimilar(self, request, context):
        return pb.RecommendResponse(model_version=7)

    def BatchRecommend(self, request, context):
        return pb.BatchRecommendResponse(model_version=7, responses=[
            pb.RecommendResponse(model_version=7, cache_hit=True) for _ in request.requests])

    def RecordInteractions(self, request, context):
        return pb.RecordInteractionsResponse(history_length=1)


def _load_against(servicer: pb_grpc.QueryServiceServicer, **config: object) -> dict:
    """The report of a load run (``LoadConfig`` fields ``config``, one channel) against ``servicer`` on a real
    gRPC server."""
    server = grpc.server(ThreadPoolExecutor(4))
    pb_grpc.add_QueryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        return run_event_loop(run_load(LoadConfig(address=f"127.0.0.1:{port}", channels=1, **config)))
    finally:
        server.stop(None)


def test_the_cache_hit_ratio_of_a_mixed_run_is_of_the_answers_that_could_hit():
    report = _load_against(MixedFakeQuery(), qps=200, duration_s=0.6,
                           rpc_mix={"recommend": 0.4, "similar": 0.2, "batch": 0.2, "record": 0.2})
    rpcs = report["rpcs"]
    assert report["requests"]["ok"] == 120 and all(rpcs[name]["ok"] > 0 for name in RPCS)
    assert report["cache_hits"] == rpcs["recommend"]["ok"]
    assert report["cache_hit_ratio"] == pytest.approx(
        rpcs["recommend"]["ok"] / (rpcs["recommend"]["ok"] + rpcs["similar"]["ok"]), abs=1e-4)


class LaterQuery(pb_grpc.QueryServiceServicer):
    """A query service of a later release: its answers name a result source this release has no name for."""

    def Recommend(self, request, context):
        return pb.RecommendResponse(model_version=7, source=42)


def test_a_result_source_of_a_later_release_is_counted_not_fatal():
    """Naming it raised in each answer's task: the run lost those answers, then raised, and wrote no report."""
    report = _load_against(LaterQuery(), qps=100, duration_s=0.3, sample_responses=5)
    assert report["requests"]["ok"] == 30 and report["sources"] == {"UNKNOWN_42": 30}
    assert [sample["source"] for sample in report["samples"]] == ["UNKNOWN_42"] * 5
