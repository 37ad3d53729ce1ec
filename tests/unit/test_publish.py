"""recsys-publish's rollout logic against in-memory admin stubs (no servers)."""

from __future__ import annotations

import pytest

from model_registry import Registry
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1 import versions_pb2
from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet, PublishError, Replica
from recsys_client.publish import publish_version, rollback
from recsys_client.publish import main as publish_main
from tests.unit.test_registry_retention import publish_dummy


class StatusOnly:
    """An admin stub of model "m" that reports fixed versions (version -> VersionState) and refuses every other
    call; an index slot's with ``slot``, else a query replica's."""

    def __init__(self, versions: dict[int, int], slot: str = ""):
        self.versions = versions
        self.slot = slot

    def GetStatus(self, request, metadata=None, timeout=None):
        live = next((v for v, s in self.versions.items() if s == SERVING), 0)
        return pb.ServiceStatus(model_name="m", service="index" if self.slot else "query", live_version=live,
                                slot=self.slot, versions=[
            versions_pb2.VersionStatus(version=v, state=s) for v, s in self.versions.items()])

    def __getattr__(self, method):
        raise AssertionError(f"unexpected admin call {method}")


def test_a_rollout_run_again_after_it_stopped_past_the_promotion_moves_current(tmp_path):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    publish_dummy(registry)
    registry.set_current(1)
    # A first run promoted version 2 on every query replica, then stopped before it moved CURRENT (killed):
    # run again, it must finish the job, or a restarted replica rejoins on version 1 while the others serve 2.
    fleet = Fleet([Replica("index", "blue", StatusOnly({1: SERVING}, "blue")),
                   Replica("index", "green", StatusOnly({2: SERVING}, "green"))],
                  [Replica("query", "q", StatusOnly({1: ROLLBACK_TARGET, 2: SERVING}))])
    publish_version(fleet, registry, 2)
    assert (registry.current_version(), registry.previous_version()) == (2, 1)


class QueryStub(StatusOnly):
    """An in-memory query replica: loads, unloads and switches its routing as serving.lifecycle.versions does."""

    def LoadVersion(self, request, metadata=None, timeout=None):
        self.versions.setdefault(request.version, versions_pb2.VERSION_STATE_READY)
        return self.GetStatus(request)

    def UnloadVersion(self, request, metadata=None, timeout=None):
        del self.versions[request.version]
        return self.GetStatus(request)

    def Promote(self, request, metadata=None, timeout=None):
        assert request.version in self.versions, f"promote of version {request.version}, not loaded"
        live = next(v for v, s in self.versions.items() if s == SERVING)
        if request.version != live:
            self.versions = {v: versions_pb2.VERSION_STATE_READY for v in self.versions} | {
                live: ROLLBACK_TARGET, request.version: SERVING}
        return self.GetStatus(request)

    def Rollback(self, request, metadata=None, timeout=None):
        target = next(v for v, s in self.versions.items() if s == ROLLBACK_TARGET)
        return self.Promote(pb.PromoteRequest(version=target))


def two_live(tmp_path) -> tuple[Registry, QueryStub, Fleet]:
    """Versions 1-3 published, 2 live (CURRENT) with 1 its rollback target; slots blue, green, red hold 1, 2, 3."""
    registry = Registry(tmp_path, "m")
    for _ in range(3):
        publish_dummy(registry)
    registry.set_current(1)
    registry.set_current(2)
    query = QueryStub({1: ROLLBACK_TARGET, 2: SERVING})
    fleet = Fleet([Replica("index", name, StatusOnly({v: SERVING}, name)) for v, name in enumerate("bgr", 1)],
                  [Replica("query", "q", query)])
    return registry, query, fleet


def cut_before_the_pointers(monkeypatch, registry: Registry, move: int = 1) -> None:
    """The registry's ``move``-th pointer move from now fails (the ones before it are made), as if recsys-publish
    were killed just before it."""
    set_current, moves = registry.set_current, [0]

    def killed(version):
        moves[0] += 1
        if moves[0] < move:
            return set_current(version)
        monkeypatch.setattr(registry, "set_current", set_current)
        raise OSError("killed")

    monkeypatch.setattr(registry, "set_current", killed)


def test_a_rollback_run_again_after_it_stopped_past_the_switch_finishes_it(tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    cut_before_the_pointers(monkeypatch, registry)
    with pytest.raises(OSError):
        rollback(fleet, registry)
    # The replicas serve 1, the registry still says 2: the rerun finishes the rollback, it does not undo it.
    assert rollback(fleet, registry) == 1
    assert query.versions == {1: SERVING, 2: ROLLBACK_TARGET}
    assert (registry.current_version(), registry.previous_version()) == (1, 2)


def test_a_rollout_after_a_rollback_stopped_past_the_switch_takes_previous_from_the_replicas(tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    cut_before_the_pointers(monkeypatch, registry)
    with pytest.raises(OSError):
        rollback(fleet, registry)
    publish_version(fleet, registry, 3)
    assert query.versions == {1: ROLLBACK_TARGET, 3: SERVING}
    assert (registry.current_version(), registry.previous_version()) == (3, 1)


def test_a_rollback_after_a_rollout_stopped_past_the_promotion_records_the_rolled_back_version(tmp_path,
                                                                                                monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    cut_before_the_pointers(monkeypatch, registry)
    with pytest.raises(OSError):
        publish_version(fleet, registry, 3)
    assert rollback(fleet, registry) == 2
    assert (query.versions[2], query.versions[3]) == (SERVING, ROLLBACK_TARGET)
    # PREVIOUS is what a restarted query replica takes as its rollback target: the replicas' 3, not a stale 1.
    assert (registry.current_version(), registry.previous_version()) == (2, 3)


def test_a_damaged_rollback_record_reads_as_none(tmp_path):
    registry, query, fleet = two_live(tmp_path)
    (registry.model_dir / ".rolled-back").write_text("2 \u00b2\n")  # "²" is a digit to str.isdigit, not to int
    assert rollback(fleet, registry) == 1
    assert (registry.current_version(), registry.previous_version()) == (1, 2)


def test_a_rollback_record_whose_write_fails_leaves_the_one_before(tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    record = registry.model_dir / ".rolled-back"
    record.write_text("3 2\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(PublishError, match="No space left on device"):
        rollback(fleet, registry)
    monkeypatch.undo()
    assert record.read_text() == "3 2\n" and [p.name for p in registry.model_dir.glob(".current-*")] == []
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and registry.current_version() == 2


def unwritable(monkeypatch) -> None:
    """Every pointer move of every Registry fails, as in a registry directory recsys-publish may not write."""

    def refused(self, version):
        raise PermissionError(13, "Permission denied", str(self.model_dir / "CURRENT"))

    monkeypatch.setattr(Registry, "set_current", refused)


def test_a_current_that_cannot_be_written_after_the_promotion_is_one_line_naming_what_serves(tmp_path, monkeypatch,
                                                                                            capsys):
    registry, query, fleet = two_live(tmp_path)
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: fleet))
    argv = ["--registry", str(tmp_path), "--model", "m", "--version", "3", "--index-admin", "b:1",
            "--query-admin", "q:1", "--drain-s", "0"]
    unwritable(monkeypatch)
    for _ in range(2):  # the promoting run, then a re-run while the registry is still unwritable
        with pytest.raises(SystemExit) as exit:
            publish_main(argv)
        err = capsys.readouterr().err.strip()
        assert exit.value.code == 1 and "\n" not in err, err
        assert err.startswith("recsys-publish: the query replicas serve version 3") and "Permission denied" in err
        assert "re-run the same command once the registry is writable" in err
        assert query.versions[3] == SERVING and registry.current_version() == 2
    monkeypatch.undo()
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: fleet))
    publish_main(argv)
    assert (registry.current_version(), registry.previous_version()) == (3, 2)


def test_a_rollout_run_again_after_it_stopped_before_unloading_unloads_the_stale_towers(tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    cut_before_the_pointers(monkeypatch, registry)
    with pytest.raises(OSError):
        publish_version(fleet, registry, 3)
    assert query.versions == {1: versions_pb2.VERSION_STATE_READY, 2: ROLLBACK_TARGET, 3: SERVING}
    publish_version(fleet, registry, 3)  # version 3 is already live: the run finishes the pointers and the unload
    assert query.versions == {2: ROLLBACK_TARGET, 3: SERVING}
    assert (registry.current_version(), registry.previous_version()) == (3, 2)
    publish_version(fleet, registry, 3)  # and a run with nothing left to do changes nothing
    assert query.versions == {2: ROLLBACK_TARGET, 3: SERVING}


def test_a_rollback_whose_current_cannot_be_written_is_one_line_naming_what_serves(tmp_path, monkeypatch):
    registry, query, fleet = two_live(tmp_path)
    unwritable(monkeypatch)
    with pytest.raises(PublishError, match="the query replicas serve version 1 .*Permission denied.* re-run the same "
                                           "command once the registry is writable"):
        rollback(fleet, registry)
    assert query.versions[1] == SERVING and registry.current_version() == 2


def test_a_rollout_whose_prune_fails_still_says_the_version_is_live_and_exits_0(tmp_path, monkeypatch, capsys):
    """A slot record naming a version deleted by hand made prune raise after the switch: exit 1, and no word that
    the rollout had worked."""
    import shutil

    registry, query, fleet = two_live(tmp_path)
    stray = publish_dummy(registry)
    registry.set_slot_version("old", stray)
    shutil.rmtree(registry.version_dir(stray))
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: fleet))
    publish_main(["--registry", str(tmp_path), "--model", "m", "--version", "3", "--index-admin", "b:1",
                  "--query-admin", "q:1", "--drain-s", "0"])
    captured = capsys.readouterr()
    assert captured.out.strip() == "live version 3", captured
    assert query.versions[3] == SERVING and registry.pointers() == (3, 2)


def test_the_switch_lines_count_query_replicas_in_words(tmp_path, caplog):
    """The demo printed "version 1 is live on 0 query replicas" for a first rollout (which none takes) and "on 1
    query replicas" after a rollout and a rollback."""
    import logging

    registry, _, fleet = two_live(tmp_path)
    with caplog.at_level(logging.INFO, logger="recsys-publish"):
        publish_version(fleet, registry, 3)
        rollback(fleet, registry)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("version 3 is live on 1 query replica; registry CURRENT is 3") for line in lines), lines
    assert "rolled back to version 2 on 1 query replica" in lines, lines
