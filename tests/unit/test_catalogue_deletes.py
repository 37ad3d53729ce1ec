"""recsys-catalogue's deletes of ids the version does not hold: reported as not present and left out of the delta,
and a delta left with nothing to change is not written, so the version's generation (and with it every replica's
cache keys) stays where it was."""

from __future__ import annotations

import json

import pytest

from model_registry import Registry
from model_registry.deltas import Delta, published_generation, read_deltas, write_delta
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import SERVING, Fleet, Replica
from tests.unit.test_catalogue import _Replica, as_query
from tests.unit.test_registry_retention import publish_dummy


def run(capsys, *flags: str) -> tuple[int, dict]:
    """recsys-catalogue's exit status and JSON report."""
    try:
        catalogue_main(list(flags))
        status = 0
    except SystemExit as exit:
        status = exit.code
    return status, json.loads(capsys.readouterr().out)


def test_deleting_only_ids_the_version_does_not_hold_writes_nothing_and_says_so(tmp_path, capsys):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)  # candidates a, b, c
    # No admin server answers at the address: a run with nothing to write has no replica to call.
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete",
                         "zz,a-typo", "--index-admin", "127.0.0.1:1", "--connect-timeout-s", "0.2")
    assert published_generation(registry.model_dir, 1) == 0
    assert (status, report["generation"], report["deletes"], report["not_present"]) == (0, 0, 0, ["zz", "a-typo"])
    assert (report["applied"], report["failed"]) == ([], {})


def test_only_the_deletes_the_version_holds_are_written(tmp_path, capsys, monkeypatch):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    write_delta(registry.model_dir, 1, Delta.make(deleted=["a"], dim=1))
    write_delta(registry.model_dir, 1, Delta.make(["n"], [[0.5]], dim=1))
    upserts = tmp_path / "up.jsonl"
    upserts.write_text('{"id": "x", "vector": [0.25]}\n')
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: Fleet([], [])))
    # a: deleted by delta 1; n: upserted by delta 2; x: upserted by this delta, which then deletes it.
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--upserts",
                         str(upserts), "--delete", "a,b,n,x,zz", "--index-admin", "127.0.0.1:1")
    assert (status, report["generation"], report["deletes"], report["not_present"]) == (0, 3, 3, ["a", "zz"])
    written = read_deltas(registry.model_dir, 1)[-1]
    assert written.ids.tolist() == ["x"] and written.deleted.tolist() == ["b", "n", "x"]


@pytest.mark.parametrize("deleted", ["b", "b,zz", "b,b"])  # b,b: stored twice and counted 2 deletes (stop 60)
def test_a_delete_the_version_holds_is_written_as_before(tmp_path, capsys, monkeypatch, deleted):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: Fleet([], [])))
    status, report = run(capsys, "--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", deleted,
                         "--index-admin", "127.0.0.1:1")
    assert (status, report["generation"], report["deletes"]) == (0, 1, 1)
    assert read_deltas(registry.model_dir, 1)[0].deleted.tolist() == ["b"]


def test_a_delete_for_current_is_refused_while_the_query_replicas_serve_another_version(tmp_path, capsys,
                                                                                          monkeypatch):
    """A rollout cut off after switching the replicas to version 1 left CURRENT at 2: a delete "for the live
    version" would land on 2, which serves nothing, and the recalled candidate would stay in 1's answers."""
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    publish_dummy(registry)
    registry.set_current(2)
    index, query = _Replica(versions=(1, 2)), _Replica(versions=(1,), state=SERVING)
    monkeypatch.setattr(Fleet, "connect", classmethod(
        lambda cls, *args, **kwargs: Fleet([Replica("index", "i:1", index)],
                                           [Replica("query", "q:1", as_query(query))])))
    flags = ["--registry", str(tmp_path), "--model", "m", "--delete", "b", "--index-admin", "i:1", "--query-admin",
             "q:1"]
    with pytest.raises(SystemExit) as exit:
        catalogue_main(flags)
    err = capsys.readouterr().err
    assert exit.value.code == 1 and "CURRENT names version 2 but query replicas serve another: {'q:1': 1}" in err, err
    assert published_generation(registry.model_dir, 2) == 0 and index.applied == query.applied == []
    # Named on purpose, a version takes the delta whatever the replicas serve.
    status, report = run(capsys, *flags, "--version", "1")
    assert (status, report["version"], report["generation"]) == (0, 1, 1) and query.applied == [1]
