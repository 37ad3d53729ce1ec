"""What the real services export, started once for all of it: /metrics after a
few Recommends (latency by method and code, cache tiers, batch sizes, version
gauges, memory), the Grafana dashboard's and the alerting rules' metric names against it, traces sent
over OTLP to a collector in this test (query -> Redis, tower, index), JSON logs
carrying the request id on both services, and ``recsys-client status``."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from tests.conftest import RedisProcess
from tests.integration.conftest import index_slot, query_replica
from tests.processes import console_script, free_port, start_all, wait_until

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "recsys-dashboard.json"
ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "recsys-alerts.yaml"
QUERY = "recsys.v1.QueryService"
INDEX = "recsys.v1.IndexService"


class Collector(otlp_grpc.TraceServiceServicer):
    """An OTLP trace collector keeping every span it is sent, with its service's name."""

    def __init__(self):
        self.spans: list[tuple[str, object]] = []

    def Export(self, request, context):
        for resource_spans in request.resource_spans:
            service = next(a.value.string_value for a in resource_spans.resource.attributes
                           if a.key == "service.name")
            for scope in resource_spans.scope_spans:
                self.spans.extend((service, span) for span in scope.spans)
        return otlp.ExportTraceServiceResponse()


@pytest.fixture(scope="module")
def collector():
    received = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(2))
    otlp_grpc.add_TraceServiceServicer_to_server(received, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield received, f"http://127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture(scope="module")
def redis_of_its_own():
    """A Redis of this module's own: the session's holds other tests' results under the same keys
    (same model, version and customers), which would count as invalid values, not misses."""
    redis = RedisProcess().start()
    yield redis
    redis.stop()


@pytest.fixture(scope="module")
def stack(trained_registry, redis_of_its_own, collector, tmp_path_factory):
    """Index slot blue and a query replica, each with /metrics, JSON logs and traces to ``collector``."""
    logs = tmp_path_factory.mktemp("observability")
    ports = {"index": free_port(), "query": free_port()}
    # Debug: one access log line per call, which shows the request id on both services.
    traced = ["--log-format", "json", "--log-level", "debug", "--otel-endpoint", collector[1]]
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # export spans within 0.1 s, not 5 s
        index = index_slot(trained_registry, "blue", logs / "index.log", "--metrics-port", str(ports["index"]),
                           *traced)
        query = query_replica(trained_registry, [index], logs / "query.log", "--redis-url", redis_of_its_own.url,
                              "--metrics-port", str(ports["query"]), *traced)
        start_all(index, query)
    try:
        yield {"index": index, "query": query, "ports": ports}
    finally:
        query.stop()
        index.stop()


@pytest.fixture(scope="module")
def traffic(stack):
    """A few Recommends (repeats: cache hits), one refused, one of a customer
    the tower does not know. Returns the id the refused call was given."""
    with grpc.insecure_channel(stack["query"].address) as channel:
        stub = pb_grpc.QueryServiceStub(channel)
        for customer in ["c000001", "c000002", "c000003", "c000001", "c000002"]:
            stub.Recommend(pb.RecommendRequest(customer_id=customer, k=5), timeout=10,
                           metadata=(("x-request-id", f"test-{customer}"),))
        with pytest.raises(grpc.RpcError) as refused:
            stub.Recommend(pb.RecommendRequest(customer_id="c000001", k=0), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stub.Recommend(pb.RecommendRequest(customer_id="stranger-1", k=5), timeout=10)
    return dict(refused.value.trailing_metadata())["x-request-id"]


def scrape(port: int) -> dict[str, list]:
    """Samples of /metrics by sample name; each a (labels, value)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        # A family without samples yet (no Redis error so far) is still exported under its name.
        out.setdefault(family.name + ("_total" if family.type == "counter" else ""), [])
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    return sum(v for have, v in samples.get(name, []) if all(have.get(k) == want for k, want in labels.items()))


def test_metrics_by_method_and_code(stack, traffic):
    query, index = scrape(stack["ports"]["query"]), scrape(stack["ports"]["index"])
    rpc = "recsys_rpc_latency_seconds_count"
    assert value(query, rpc, service=QUERY, method="Recommend", code="OK") == 6
    assert value(query, rpc, service=QUERY, method="Recommend", code="INVALID_ARGUMENT") == 1
    assert value(query, "recsys_rpc_latency_seconds_bucket", service=QUERY, method="Recommend", code="OK",
                 le="+Inf") == 6
    assert value(index, rpc, service=INDEX, code="OK") >= 3  # the misses' searches (Search or BatchSearch)
    # The query side times the same calls: every index call of the stack is this replica's.
    assert value(query, "recsys_index_call_seconds_count", code="OK") == value(index, rpc, service=INDEX, code="OK")
    assert value(query, "recsys_cache_events_total", event="local_hit") == 2
    assert value(query, "recsys_cache_events_total", event="miss") == 4
    assert value(query, "recsys_batch_size_count") >= 4
    assert value(index, "recsys_version_state", service="index", slot="blue", version="1", state="SERVING") == 1
    assert 0.5 < value(index, "recsys_version_self_test_recall", version="1") <= 1
    assert value(index, "recsys_version_memory_bytes", version="1") > 0
    assert value(query, "recsys_version_state", service="query", version="1", state="SERVING") == 1
    assert value(query, "recsys_live_version", service="query") == 1
    assert value(query, "process_resident_memory_bytes") > 0
    # gRPC's core counts every call, those it refuses before any handler too (none here).
    core = {name: value(query, f"recsys_grpc_server_calls_{name}_total") for name in ("started", "succeeded", "failed")}
    assert core["succeeded"] >= 6 and core["started"] >= core["succeeded"] + core["failed"]


def metric_names(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in re.findall(r"\b(?:recsys|process)_[a-z0-9_]+", expr)}


def test_dashboard_uses_only_exported_metrics(stack, traffic):
    dashboard = json.loads(DASHBOARD.read_text())
    exported = set(scrape(stack["ports"]["query"])) | set(scrape(stack["ports"]["index"]))
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = metric_names(exprs)
    assert len(exprs) >= 15 and len(used) >= 10
    assert used <= exported, f"not exported by the services: {sorted(used - exported)}"


def test_alerting_rules_read_only_exported_metrics(stack, traffic):
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    exported = set(scrape(stack["ports"]["query"])) | set(scrape(stack["ports"]["index"]))
    used = metric_names([rule["expr"] for group in groups for rule in group["rules"]])
    assert len(used) >= 5
    assert used <= exported, f"not exported by the services: {sorted(used - exported)}"


def _spans_of(collector: Collector, trace_id: bytes) -> list[tuple[str, object]]:
    return [(service, span) for service, span in collector.spans if span.trace_id == trace_id]


def test_a_miss_is_traced_from_query_to_redis_tower_and_index(collector, traffic):
    received = collector[0]

    def recommend_traces() -> set[bytes]:
        """The traces of the query service's Recommend calls."""
        return {span.trace_id for service, span in received.spans
                if service == "recsys-query-service" and span.name == f"/{QUERY}/Recommend"}

    wait_until(lambda: len(recommend_traces()) >= 7, 10, "the query service's Recommend spans")

    def complete(trace_id: bytes) -> bool:
        names = {(service, span.name) for service, span in _spans_of(received, trace_id)}
        return ("recsys-index-service", f"/{INDEX}/Search") in names or (
            "recsys-index-service", f"/{INDEX}/BatchSearch") in names

    wait_until(lambda: any(complete(t) for t in recommend_traces()), 10, "a Recommend trace reaching the index")
    trace = next(t for t in recommend_traces() if complete(t))
    spans = _spans_of(received, trace)
    server = next(s for service, s in spans if s.name == f"/{QUERY}/Recommend")
    by_id = {s.span_id: (service, s) for service, s in spans}
    assert any(s.name.startswith("redis ") and s.parent_span_id == server.span_id for _, s in spans)
    client = next(s for service, s in spans if service == "recsys-query-service" and s.name.startswith(f"/{INDEX}/"))
    assert client.parent_span_id == server.span_id
    index_server = next(s for service, s in spans if service == "recsys-index-service")
    assert by_id[index_server.parent_span_id][1] is client

    # A customer the tower does not know: its embedding is a tower call, on the tower's thread.
    def tower_traces() -> list[bytes]:
        return [t for t in recommend_traces() if any(s.name == "tower" for _, s in _spans_of(received, t))]

    wait_until(lambda: tower_traces(), 10, "a Recommend trace with a tower span")
    spans = _spans_of(received, tower_traces()[0])
    server = next(s for _, s in spans if s.name == f"/{QUERY}/Recommend")
    assert next(s for _, s in spans if s.name == "tower").parent_span_id == server.span_id


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def test_a_recorded_interaction_is_traced_to_its_redis_write(collector, stack):
    with grpc.insecure_channel(stack["query"].address) as channel:
        pb_grpc.QueryServiceStub(channel).RecordInteractions(
            pb.RecordInteractionsRequest(customer_id="c000004", candidate_ids=["m000001"]), timeout=10)
    received = collector[0]

    def record_spans() -> list[object]:
        return [span for service, span in received.spans
                if service == "recsys-query-service" and span.name == f"/{QUERY}/RecordInteractions"]

    wait_until(lambda: record_spans() and any(s.name == "redis RecordInteractions"
                                              for _, s in _spans_of(received, record_spans()[0].trace_id)),
               10, "the RecordInteractions trace's Redis span")
    server = record_spans()[0]
    write = next(s for _, s in _spans_of(received, server.trace_id) if s.name == "redis RecordInteractions")
    assert write.parent_span_id == server.span_id


def test_json_logs_carry_the_request_id_across_services(stack, traffic):
    for service in ("query", "index"):
        lines = _json_lines(stack[service].log_path)
        assert lines and all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    access = {service: [line for line in _json_lines(stack[service].log_path) if line["logger"] == "serving.access"]
              for service in ("query", "index")}
    first = [line["message"] for line in access["query"] if line.get("request_id") == "test-c000001"]
    assert len(first) == 2 and all(m.startswith(f"{QUERY}/Recommend OK in ") for m in first)  # a miss, then a hit
    # The miss's search carried the caller's id to the index service.
    assert any(line.get("request_id") == "test-c000001" and "Search OK" in line["message"] for line in access["index"])
    generated = traffic
    assert any(line.get("request_id") == generated for line in access["query"])
    assert all(len(line["trace_id"]) == 32 for line in access["query"] if "Recommend" in line["message"])


def test_status_table_of_every_replica(stack):
    gone = f"127.0.0.1:{free_port()}"
    result = subprocess.run([console_script("recsys-client"), "status", "--index-admin", stack["index"].admin_address,
                             "--query-admin", f"{stack['query'].admin_address},{gone}", "--timeout-s", "3"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr  # one replica did not answer
    header, index, query, unreachable = result.stdout.splitlines()
    assert header.split()[:5] == ["ADDRESS", "SERVICE", "SLOT", "VERSION", "STATE"]
    cells = index.split()
    assert cells[:5] == [stack["index"].admin_address, "index", "blue", "1*", "SERVING"]
    assert 0.5 < float(cells[6]) <= 1 and re.fullmatch(r"[0-9.]+(B|KiB|MiB|GiB)", cells[7])  # recall@10, memory
    assert query.split()[:5] == [stack["query"].admin_address, "query", "-", "1*", "SERVING"]
    assert unreachable.startswith(gone) and "UNREACHABLE (UNAVAILABLE" in unreachable
