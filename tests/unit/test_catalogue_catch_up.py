"""recsys-catalogue with nothing new to write still has every replica catch up to the version's published
generation: a delta written earlier but taken by no replica (one not reached, say) would else stay unserved, with
the run saying all is well, and a replica restarted meanwhile would wait for it. ``--catch-up`` runs with no input."""

from __future__ import annotations

import pytest

from model_registry import Registry
from model_registry.deltas import Delta, published_generation, write_delta
from recsys_client.fleet import Fleet, Replica
from tests.unit.test_catalogue import _Replica, as_query
from tests.unit.test_catalogue_deletes import run
from tests.unit.test_registry_retention import publish_dummy


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)  # candidates a, b, c
    # A run deleted b, wrote generation 1, and reached no replica.
    write_delta(registry.model_dir, 1, Delta.make(deleted=["b"], dim=1))
    return registry


def _fleet(monkeypatch, index: _Replica, query: _Replica) -> None:
    fleet = Fleet([Replica("index", "i", index)], [Replica("query", "q", as_query(query))])
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: fleet))


def test_a_rerun_of_a_delete_already_written_brings_the_replicas_to_its_generation(registry, tmp_path, capsys,
                                                                                    monkeypatch):
    index, query = _Replica(), _Replica()
    _fleet(monkeypatch, index, query)
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "b",
                         "--index-admin", "i:1")
    assert published_generation(registry.model_dir, 1) == 1  # nothing new written
    assert (status, report["generation"], report["deletes"], report["not_present"]) == (0, 1, 0, ["b"])
    assert (index.applied, query.applied) == ([1], [1])
    assert (report["applied"], report["failed"]) == (["index i", "query q"], {})


def test_a_replica_that_stays_behind_on_a_rerun_is_named_and_the_exit_status_is_1(registry, tmp_path, capsys):
    # No admin server answers there, as the first run found it (its TLS flags wrong, say).
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "b",
                         "--index-admin", "127.0.0.1:1", "--connect-timeout-s", "0.2")
    assert (status, report["generation"], report["applied"]) == (1, 1, [])
    assert list(report["failed"]) == ["index 127.0.0.1:1"]


def test_catch_up_alone_writes_nothing_and_moves_every_replica_to_the_published_generation(registry, tmp_path,
                                                                                           capsys, monkeypatch):
    index, query = _Replica(), _Replica(refusal="deltas refused: the log was altered")
    _fleet(monkeypatch, index, query)
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--catch-up",
                         "--index-admin", "i:1")
    assert published_generation(registry.model_dir, 1) == 1
    assert (status, report["generation"], report["upserts"], report["deletes"]) == (1, 1, 0, 0)
    assert index.applied == [1] and report["applied"] == ["index i"]
    assert list(report["failed"]) == ["query q"] and "deltas refused" in report["failed"]["query q"]
