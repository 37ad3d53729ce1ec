"""Blue-green swap under load, with real processes: two versions trained into
one registry, a private Redis, two index slots (blue holding version 1, green
empty), a query replica routing over both, and
``recsys_client.loadtest.run_load`` driving open-loop traffic while version 2
is rolled out (into green) and then rolled back. No request may fail, both
versions must answer, and every sampled answer must be what its own version's
artifacts give."""

from __future__ import annotations

import pytest

from model_registry import Registry
from recsys_client.loadtest import LoadConfig, SwapConfig, format_table, run_load
from tests.conftest import RedisProcess
from tests.integration.conftest import (MODEL, VersionOracle, index_slot, live_versions, make_live, overlap,
                                        query_replica, train)
from tests.processes import start_all

pytestmark = pytest.mark.integration

K = 10
SAMPLES = 40


@pytest.fixture(scope="module")
def two_version_registry(tmp_path_factory):
    """Versions 1 and 2 of MODEL; 1 is live in slot blue, 2 only published."""
    registry = tmp_path_factory.mktemp("swap-registry")
    train(registry)
    make_live(registry, 1)
    train(registry, "--seed", "7")  # other seed: other init, data split and synthetic set
    reg = Registry(registry, MODEL)
    assert reg.versions() == [1, 2] and reg.current_version() == 1  # training did not move live traffic
    return registry


@pytest.fixture(scope="module")
def swap_services(two_version_registry, tmp_path_factory):
    """(blue, green, query) started on version 1. Redis is private to this module:
    the session one may hold results cached under the same (model, version) keys
    from another test's registry, which would be a different model."""
    logs = tmp_path_factory.mktemp("swap-logs")
    redis = RedisProcess()
    blue = index_slot(two_version_registry, "blue", logs / "blue.log")
    green = index_slot(two_version_registry, "green", logs / "green.log")
    query = query_replica(two_version_registry, [blue, green], logs / "query.log", "--redis-url", redis.url)
    try:
        redis.start()
        start_all(blue, green, query)
        yield blue, green, query
    finally:
        for process in (query, green, blue, redis):
            process.stop()


def share(phase: dict, version: int) -> float:
    return phase["model_versions"].get(str(version), 0) / max(phase["ok"], 1)


@pytest.mark.alone  # the swap must be done within the 3 s before the rollback: it took 4.4 s beside other tests once
async def test_swap_and_rollback_under_load_lose_nothing_and_serve_each_versions_own_results(
        two_version_registry, swap_services):
    blue, green, query = swap_services
    config = LoadConfig(
        address=query.address, qps=150, duration_s=9, concurrency=1000, timeout_s=5, channels=2,
        num_customers=300, distribution="uniform", seed=11, sample_responses=SAMPLES,
        swap=SwapConfig(registry=two_version_registry, model=MODEL,
                        index_admin=[blue.admin_address, green.admin_address],
                        query_admin=[query.admin_address], version=2, at_s=3, rollback_at_s=6))
    report = await run_load(config)
    print("\n" + format_table(report))

    # Nothing lost: every scheduled request was sent and answered.
    assert report["requests"]["ok"] == report["requests"]["scheduled"] == config.total_requests, report["requests"]
    assert report["errors_by_code"] == {} and report["requests"]["dropped"] == 0
    assert report["swap"]["ok"], report["swap"]["error"]
    assert report["rollback"]["ok"] and report["rollback"]["result"]["version"] == 1, report["rollback"]["error"]
    # Both versions answered, version 2 between the publish and the rollback.
    # Phases go by *scheduled* send time: a request scheduled just before an
    # event may be sent after its promotion when the client lags, so only the
    # window after the rollback is exact; the others must be nearly pure.
    assert set(report["model_versions"]) == {"1", "2"}
    assert share(report["swap"]["phases"]["before"], 1) >= 0.98
    assert share(report["swap"]["phases"]["after"], 2) >= 0.98
    assert report["rollback"]["phases"]["after"]["model_versions"].keys() == {"1"}
    # The rollback left the registry and the query replica on version 1, served
    # by blue; green still holds version 2, the rollback target.
    registry = Registry(two_version_registry, MODEL)
    assert (registry.current_version(), registry.previous_version()) == (1, 2)
    assert live_versions(blue.admin_address, green.admin_address, query.admin_address) == [1, 2, 1]

    # Every sampled answer is its own version's exact top-k (the test index is brute force).
    samples = report["samples"]
    assert len(samples) == SAMPLES and {s["model_version"] for s in samples} == {1, 2}
    registry = Registry(two_version_registry, MODEL)
    oracles = {v: VersionOracle(registry.version_dir(v)) for v in (1, 2)}
    other_version_mismatches = 0
    for sample in samples:
        version, cid, got = sample["model_version"], sample["customer_id"], sample["candidate_ids"]
        if sample["source"] == "RESULT_SOURCE_POPULARITY_FALLBACK":
            assert got == oracles[version].popular(), sample
            continue
        assert sample["source"] == "RESULT_SOURCE_MODEL", sample
        assert overlap(got, oracles[version].top_k(cid)) >= 0.9, sample
        other_version_mismatches += overlap(got, oracles[3 - version].top_k(cid)) < 0.9
    # The check can fail: the two versions disagree for many sampled customers,
    # so an answer labelled with the wrong version would have been caught.
    assert other_version_mismatches >= SAMPLES // 4, other_version_mismatches
