"""recsys-publish's guards against in-memory admin stubs (no servers): one run per model at a time, replicas of
another model or role refused, undo that never reverses another hand's change, and a run stopped by a signal or a
deadline undoing what it changed."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from model_registry import Registry
from protos.recsys.v1 import admin_pb2 as pb
from recsys_client.fleet import LOADING, ROLLBACK_TARGET, SERVING, Fleet, PublishError, Replica
from recsys_client.publish import publish_version, rollback
from recsys_client.publish import main as publish_main
from tests.unit.test_publish import QueryStub, StatusOnly
from tests.unit.test_registry_retention import publish_dummy


class RpcFailure(grpc.RpcError):
    """What a grpc stub raises for a failed call."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


class IndexStub(StatusOnly):
    """An in-memory index slot of model "m": holds one version (SERVING in its status) or none."""

    def LoadVersion(self, request, metadata=None, timeout=None):
        self.versions = {request.version: SERVING}
        return self.GetStatus(request)

    def UnloadVersion(self, request, metadata=None, timeout=None):
        self.versions = {}
        return self.GetStatus(request)


def setup(tmp_path, published: int = 3, model: str = "m") -> tuple[Registry, QueryStub, IndexStub, IndexStub]:
    """Versions 1..``published`` of ``model``; 2 live (CURRENT) with 1 its rollback target; slot blue holds 2 (the
    live version), green 1. The stubs are of model "m"."""
    registry = Registry(tmp_path, model)
    for _ in range(published):
        publish_dummy(registry)
    registry.set_current(1)
    registry.set_current(2)
    return registry, QueryStub({1: ROLLBACK_TARGET, 2: SERVING}), IndexStub({2: SERVING}, "blue"), \
        IndexStub({1: SERVING}, "green")


def fleet_of(query, *slots) -> Fleet:
    return Fleet([Replica("index", s.slot, s) for s in slots], [Replica("query", "q", query)])


def cli(tmp_path, monkeypatch, fleet: Fleet, *args: str, model: str = "m") -> None:
    """Runs recsys-publish's main on ``fleet``."""
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *a, **k: fleet))
    publish_main(["--registry", str(tmp_path), "--model", model, "--index-admin", "b:1", "--query-admin", "q:1",
                  "--drain-s", "0", *args])


def test_a_second_run_is_refused_at_once_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path, monkeypatch,
                                                                                            capsys):
    registry, query, blue, green = setup(tmp_path)
    lock = registry.model_dir / ".publish.lock"
    # Another run's process holding the model's lock, as the kernel sees it.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, f'pid {os.getpid()} on a-host, started 2026-12-05T21:00:00+00:00'.encode())\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SystemExit) as exit:
            cli(tmp_path, monkeypatch, fleet_of(query, blue, green), "--version", "3")
        err = capsys.readouterr().err.strip()
        assert exit.value.code == 1 and "\n" not in err, err
        assert err.startswith("recsys-publish: another recsys-publish run of 'm' is under way "
                              f"(pid {holder.pid} on a-host, started 2026-12-05T21:00:00+00:00"), err
        assert "wait for it to end" in err
        with pytest.raises(PublishError, match="another recsys-publish run"):
            rollback(fleet_of(query, blue, green), registry)
        assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and green.versions == {1: SERVING}
        assert registry.pointers() == (2, 1)
    finally:
        holder.kill()
        holder.wait()
    cli(tmp_path, monkeypatch, fleet_of(query, blue, green), "--version", "3")  # the kernel dropped the dead one's
    assert query.versions == {2: ROLLBACK_TARGET, 3: SERVING} and green.versions == {3: SERVING}
    assert lock.read_text().startswith(f"pid {os.getpid()} on ")  # the last holder, for the next refusal


def test_undo_leaves_a_slot_that_another_hand_changed_since(tmp_path):
    registry, _, blue, green = setup(tmp_path, published=4)

    class Racing(QueryStub):
        def LoadVersion(self, request, metadata=None, timeout=None):
            green.versions = {4: SERVING}  # another hand loads version 4 into the slot this run just loaded
            return super().LoadVersion(request)

        def Promote(self, request, metadata=None, timeout=None):
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, "refused")

    query = Racing({1: ROLLBACK_TARGET, 2: SERVING})
    with pytest.raises(PublishError, match="Promote failed"):
        publish_version(fleet_of(query, blue, green), registry, 3)
    assert green.versions == {4: SERVING}  # not version 1 reloaded over what the other hand put there
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING}


def test_a_live_version_that_no_slot_holds_is_loaded_not_reported_live(tmp_path):
    registry, query, blue, green = setup(tmp_path)
    blue.versions = {3: SERVING}  # the live version's slot was reloaded with another version
    publish_version(fleet_of(query, blue, green), registry, 2)
    # Loaded into the slot not holding the rollback target (1), which stays ready for a rollback.
    assert blue.versions == {2: SERVING} and green.versions == {1: SERVING}
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and registry.pointers() == (2, 1)


def test_a_replica_of_another_model_is_refused_before_any_change(tmp_path, monkeypatch, capsys):
    registry, query, blue, green = setup(tmp_path, model="m2")  # the stubs are model m's replicas
    with pytest.raises(SystemExit) as exit:
        cli(tmp_path, monkeypatch, fleet_of(query, blue, green), "--rollback", model="m2")
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and err == (
        "recsys-publish: --index-admin blue is the index service of model 'm', not the index service of 'm2': give "
        "--index-admin only the admin addresses of 'm2''s index slots; nothing changed")
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and registry.pointers() == (2, 1)


@pytest.mark.parametrize("role", ["index", "query"])
def test_a_replica_given_in_the_other_roles_flag_is_refused_before_any_change(tmp_path, role):
    registry, query, blue, green = setup(tmp_path)
    if role == "index":  # the query replica's admin address among the index slots
        fleet = Fleet([Replica("index", "green", green), Replica("index", "q", query)], [Replica("query", "q", query)])
    else:
        fleet = Fleet([Replica("index", "blue", blue), Replica("index", "green", green)],
                      [Replica("query", "q", query), Replica("query", "green", green)])
    wrong = "query" if role == "index" else "index"
    with pytest.raises(PublishError, match=f"^--{role}-admin {'q' if role == 'index' else 'green'} is the {wrong} "
                                           f"service of model 'm', not the {role} service of 'm'"):
        publish_version(fleet, registry, 3)
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING} and green.versions == {1: SERVING}
    assert registry.pointers() == (2, 1)


def test_a_data_port_given_as_an_admin_port_is_named_as_such(tmp_path):
    registry, query, blue, green = setup(tmp_path)

    class DataPort:
        def GetStatus(self, request, metadata=None, timeout=None):
            raise RpcFailure(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")

    fleet = Fleet([Replica("index", "blue", blue), Replica("index", "127.0.0.1:50051", DataPort())],
                  [Replica("query", "q", query)])
    with pytest.raises(PublishError, match="127.0.0.1:50051 is not an admin port: give the replica's --admin-port "
                                           "address in --index-admin"):
        publish_version(fleet, registry, 3)


def test_a_load_past_its_deadline_is_undone(tmp_path, caplog):
    registry, query, blue, green = setup(tmp_path)

    class Slow(IndexStub):
        def LoadVersion(self, request, metadata=None, timeout=None):
            super().LoadVersion(request)
            if request.version == 3:  # the server finishes the load after the client gave up
                raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            return self.GetStatus(request)

    green = Slow({1: SERVING}, "green")
    with caplog.at_level(logging.INFO, "recsys-publish"), pytest.raises(PublishError, match="DEADLINE_EXCEEDED"):
        publish_version(fleet_of(query, blue, green), registry, 3)
    assert green.versions == {1: SERVING}
    assert "index slot green holds version 1 again (green)" in caplog.messages


def test_a_load_still_running_after_its_call_timed_out_is_undone_once_it_finishes(tmp_path, caplog, monkeypatch):
    # Read while the load ran, the slot still named its old version: the undo left it "as it is", the load then
    # finished, and the rollback target was gone from every slot (a rollout run with --timeout-s 0.01).
    monkeypatch.setattr("recsys_client.undo.UNDO_IDLE_POLL_S", 0.01)
    registry, query, blue, green = setup(tmp_path)

    class StillLoading(IndexStub):
        statuses = 0
        undo_deadlines: list[float] = []

        def LoadVersion(self, request, metadata=None, timeout=None):
            if request.version == 3:  # the client gives up; the server goes on loading
                self.versions = {1: SERVING, 3: LOADING}
                raise RpcFailure(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self.undo_deadlines.append(timeout)
            return super().LoadVersion(request)

        def GetStatus(self, request, metadata=None, timeout=None):
            if LOADING in self.versions.values():
                self.undo_deadlines.append(timeout)
                self.statuses += 1
                if self.statuses == 3:  # the load finishes
                    self.versions = {3: SERVING}
            return super().GetStatus(request)

    green = StillLoading({1: SERVING}, "green")
    fleet = fleet_of(query, blue, green)
    fleet.timeout_s = 0.01  # --timeout-s 0.01: the undo's own calls must not time out as the load did
    with caplog.at_level(logging.INFO, "recsys-publish"), pytest.raises(PublishError, match="DEADLINE_EXCEEDED"):
        publish_version(fleet, registry, 3)
    assert green.versions == {1: SERVING}
    assert green.undo_deadlines and min(green.undo_deadlines) >= 120
    assert "index slot green holds version 1 again (green)" in caplog.messages


def test_a_version_not_published_is_named_with_the_published_ones(tmp_path):
    registry, query, blue, green = setup(tmp_path)
    with pytest.raises(PublishError, match=r"version 7 cannot be rolled out: .*\(published: \[1, 2, 3\]\)"):
        publish_version(fleet_of(query, blue, green), registry, 7)


def interrupted_run(root: str, signum: int, method: str, dropped: bool = False) -> None:
    """A recsys-publish run (main) of version 3 that gets ``signum`` in the query replica's ``method`` call
    (LoadVersion: before the switch; UnloadVersion: after it), ``dropped`` in a ``__del__``, where Python drops the
    stop's exception; prints what the stubs hold after it. Run in a child process: without a handler the signal ends
    the test process."""
    registry, query, blue, green = setup(root)

    class Collected:
        def __del__(self):  # as a gRPC channel's, or any object's the garbage collector frees then
            os.kill(os.getpid(), signum)

    class Interrupted(QueryStub):
        def LoadVersion(self, request, metadata=None, timeout=None):
            return self.then_signal("LoadVersion", super().LoadVersion(request))

        def UnloadVersion(self, request, metadata=None, timeout=None):
            return self.then_signal("UnloadVersion", super().UnloadVersion(request))

        def then_signal(self, called: str, status):
            if called == method:
                if dropped:
                    Collected()  # freed at once: its ``__del__`` runs
                else:
                    os.kill(os.getpid(), signum)
            return status

    query = Interrupted(query.versions)
    Fleet.connect = classmethod(lambda cls, *a, **k: fleet_of(query, blue, green))
    try:
        publish_main(["--registry", root, "--model", "m", "--index-admin", "b:1", "--query-admin", "q:1",
                      "--version", "3"])
    finally:
        print(dict(query.versions), dict(green.versions), registry.pointers(), flush=True)


def interrupt(tmp_path, signum: int, method: str, dropped: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-c", "import sys; from tests.unit.test_publish_guards import "
                           f"interrupted_run; interrupted_run(sys.argv[1], {int(signum)}, {method!r}, {dropped})",
                           str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    assert done.returncode == 128 + signum, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("dropped", [False, True], ids=["raised", "dropped"])
def test_a_signal_undoes_what_the_run_changed_with_one_line(tmp_path, signum, dropped):
    """``dropped``: the stop landed in a ``__del__``, where Python drops its exception; the run went on to roll the
    version out, with an "Exception ignored" traceback."""
    done = interrupt(tmp_path, signum, "LoadVersion", dropped)
    assert done.stderr.strip().splitlines()[-1] == f"recsys-publish: stopped by {signum.name}", done.stderr[-2000:]
    assert "index slot green holds version 1 again (green)" in done.stderr
    assert done.stdout.strip() == "{1: 4, 2: 3} {1: 3} Pointers(current=2, previous=1)", done.stdout


def test_a_signal_after_the_switch_says_that_a_rerun_finishes_it(tmp_path):
    done = interrupt(tmp_path, signal.SIGINT, "UnloadVersion")  # unloading the stale tower, after the pointers
    assert done.stderr.strip().splitlines()[-1] == (
        "recsys-publish: stopped by SIGINT after the query replicas switched to version 3: nothing was undone; run "
        "the same command again to finish"), done.stderr[-2000:]
    assert done.stdout.strip() == "{2: 4, 3: 3} {3: 3} Pointers(current=3, previous=2)", done.stdout


def test_current_behind_the_replicas_is_not_blamed_on_a_cut_off_run_alone(tmp_path, caplog):
    registry, query, blue, green = setup(tmp_path)
    query.versions = {2: ROLLBACK_TARGET, 3: SERVING}  # a replica switched (or started on 3) by hand
    green.versions = {3: SERVING}
    with caplog.at_level(logging.WARNING, "recsys-publish"):
        publish_version(fleet_of(query, blue, green), registry, 3)
    assert registry.pointers() == (3, 2)
    assert any("or they were switched without recsys-publish" in m for m in caplog.messages), caplog.messages
