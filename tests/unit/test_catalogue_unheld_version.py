"""recsys-catalogue when no index replica it was given holds the version: the query replicas that do hold it must
stay put, since a query replica at the new generation routes only to index replicas at it (every cache miss of the
version would fail UNAVAILABLE), and the message names the flag to fix."""

from __future__ import annotations

from protos.recsys.v1 import versions_pb2
from recsys_client.delta_rollout import apply_everywhere
from recsys_client.fleet import Fleet, Replica
from tests.unit.test_catalogue import _Replica, as_query
from tests.unit.test_catalogue_catch_up import _fleet, registry  # noqa: F401 (a fixture)
from tests.unit.test_catalogue_deletes import run


def test_the_query_tier_stays_put_when_no_listed_index_replica_holds_the_version():
    green, query = _Replica(versions=(2,)), _Replica()  # green holds the next version, not the live one
    rollout = apply_everywhere(Fleet([Replica("index", "green", green)], [Replica("query", "q", as_query(query))]),
                               1, 19)
    assert (green.applied, query.applied, rollout.applied) == ([], [], [])
    assert list(rollout.failed) == ["query q"]
    assert "no index replica listed in --index-admin holds version 1" in rollout.failed["query q"]
    # A slot still loading the version holds it: it takes the generation, and replays the log once loaded.
    loading = _Replica(state=versions_pb2.VERSION_STATE_LOADING)
    fleet = Fleet([Replica("index", "green", green), Replica("index", "loading", loading)],
                  [Replica("query", "q", as_query(query))])
    rollout = apply_everywhere(fleet, 1, 19)
    assert (loading.applied, query.applied, rollout.failed) == ([19], [19], {})


def test_a_run_given_only_index_replicas_without_the_version_exits_1_naming_the_flag(registry, tmp_path, capsys,
                                                                                     monkeypatch):
    green, query = _Replica(versions=(2,)), _Replica()
    _fleet(monkeypatch, green, query)
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--catch-up",
                         "--index-admin", "green:1")
    assert (status, report["generation"], report["applied"], query.applied) == (1, 1, [], [])
    assert "--index-admin" in report["failed"]["query q"]
