"""recsys-catalogue stopped by SIGTERM or SIGINT says whether its delta was written, which replicas took it, and
how the others catch up, and exits 128 + the signal, as recsys-publish does: it used to end with 143 and nothing
said, its replicas left behind until some later run."""

from __future__ import annotations

import signal
import sys
import threading

import numpy as np
import pytest

from model_registry import Registry
from model_registry.deltas import Delta, published_generation
from recsys_client import catalogue
from recsys_client.candidate_tower import CandidateTower, FeatureError
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import Fleet, Replica
from tests.unit.test_catalogue import _Replica, as_query
from tests.unit.test_registry_retention import publish_dummy


class _Killed(Exception):
    """What the signal does in these tests where recsys-catalogue does not handle it (else it would end pytest)."""


@pytest.fixture(autouse=True)
def signals_raise():
    def killed(signum, frame):
        raise _Killed(signal.Signals(signum).name)

    before = {sig: signal.signal(sig, killed) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield killed
    for sig, handler in before.items():
        signal.signal(sig, handler)


class _SignalledWhileApplying(_Replica):
    """Takes the generation, and meanwhile the run is sent ``signum``."""

    def __init__(self, signum: int):
        super().__init__()
        self.signum = signum

    def ApplyCatalogue(self, request, metadata=None, timeout=None):
        signal.pthread_kill(threading.main_thread().ident, self.signum)
        return super().ApplyCatalogue(request, metadata, timeout)


def _stopped(tmp_path, capsys, monkeypatch, connect, change: tuple[str, ...] = ("--delete", "b")) -> tuple[int, str]:
    """The exit status and message of a run making ``change`` (deleting b) to CURRENT (version 1), its replicas
    from ``connect``."""
    registry = Registry(tmp_path, "m")
    registry.set_current(publish_dummy(registry))
    monkeypatch.setattr(Fleet, "connect", classmethod(connect))
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", *change, "--index-admin", "i:1"])
    captured = capsys.readouterr()
    assert captured.out == ""  # no report of a run that did not end
    return exit.value.code, captured.err.strip()


def test_a_signal_after_the_delta_was_written_names_what_took_it_and_the_catch_up(tmp_path, capsys, monkeypatch,
                                                                                  signals_raise):
    index, query = _SignalledWhileApplying(signal.SIGTERM), _Replica()
    fleet = Fleet([Replica("index", "i", index)], [Replica("query", "q", as_query(query))])
    status, err = _stopped(tmp_path, capsys, monkeypatch, lambda cls, *args, **kwargs: fleet)
    assert status == 143 and published_generation(tmp_path / "m", 1) == 1
    assert (index.applied, query.applied) == ([1], [])  # the query tier is not moved once stopped
    assert err.startswith("recsys-catalogue: stopped by SIGTERM while the replicas caught up to generation 1 of "
                          "version 1 (at it: index i); catalogue delta 1 of version 1 was written to the registry"), err
    assert "run recsys-catalogue --catch-up --version 1" in err and "\n" not in err
    assert signal.getsignal(signal.SIGTERM) is signals_raise  # the handlers are put back


def test_a_signal_before_the_delta_was_written_says_nothing_was(tmp_path, capsys, monkeypatch):
    index = _Replica()
    index.GetStatus = lambda *args, **kwargs: pytest.fail("a replica was called")

    def connect(cls, *args, **kwargs):  # Ctrl-C while the run waits for the replicas' admin servers
        signal.raise_signal(signal.SIGINT)
        return Fleet([Replica("index", "i", index)], [])

    status, err = _stopped(tmp_path, capsys, monkeypatch, connect)
    assert (status, published_generation(tmp_path / "m", 1)) == (130, 0)
    assert err == "recsys-catalogue: stopped by SIGINT; nothing was written: run the same command again"



class _Tower:
    """The version's candidate tower as ``read_upserts`` uses it, with SIGTERM landing in its call."""

    def vectors(self, ids, features):
        signal.raise_signal(signal.SIGTERM)  # as it would inside TensorFlow's load or call
        return np.ones((len(ids), 1), np.float32)


def _upserts_stopped(tmp_path, capsys, monkeypatch, connect) -> tuple[int, str]:
    """``_stopped`` of a run upserting z, given as catalogue values."""
    upserts = tmp_path / "upserts.jsonl"
    upserts.write_text('{"id": "z", "features": {"genre": "Drama"}}\n')
    monkeypatch.setattr(CandidateTower, "load", classmethod(lambda cls, *args: _Tower()))
    return _stopped(tmp_path, capsys, monkeypatch, connect, ("--upserts", str(upserts)))


def test_a_signal_while_the_candidate_tower_embeds_upserts_is_raised_once_it_has(tmp_path, capsys, monkeypatch):
    """The candidate tower is TensorFlow: a stop raised inside it can abort the run before it says anything (one
    aborted a trainer's worker, stop 58's CI). It is raised once the tower is done; nothing was written yet. Before,
    a stop that early also said "catalogue delta 0 of version 0 was written to the registry"."""
    returned = []
    vectors = _Tower.vectors
    monkeypatch.setattr(_Tower, "vectors", lambda self, *args: (vectors(self, *args), returned.append("vectors"))[0])
    status, err = _upserts_stopped(tmp_path, capsys, monkeypatch, lambda cls, *a, **kw: pytest.fail("replicas called"))
    assert returned == ["vectors"]  # the tower's call ended: the stop was not raised inside it
    assert (status, err) == (143, "recsys-catalogue: stopped by SIGTERM; nothing was written: run the same command "
                                  "again")
    assert published_generation(tmp_path / "m", 1) == 0


def test_a_stop_python_dropped_after_the_tower_ran_still_writes_nothing(tmp_path, capsys, monkeypatch):
    """The tower's TensorFlow objects are freed by the garbage collector whenever it runs; a stop landing in one of
    their ``__del__`` is dropped by Python, and the run went on to write its delta. The stop is kept, so the
    "Exception ignored" traceback Python prints for it (``sys.unraisablehook``) is left out: it only alarmed."""
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    class Collected:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(_Tower, "vectors", lambda self, ids, features: np.ones((len(ids), 1), np.float32))
    scale = catalogue.check_scale
    monkeypatch.setattr(catalogue, "check_scale", lambda *args: (Collected(), scale(*args))[1])
    index = _Replica()
    status, err = _upserts_stopped(tmp_path, capsys, monkeypatch,
                                   lambda cls, *a, **kw: Fleet([Replica("index", "i", index)], []))
    assert (status, index.applied) == (130, [])
    assert err == "recsys-catalogue: stopped by SIGINT; nothing was written: run the same command again"
    assert unraisable == []
    assert published_generation(tmp_path / "m", 1) == 0


def test_an_error_of_the_tower_once_a_stop_came_in_its_call_is_reported_as_the_stop(tmp_path, capsys, monkeypatch):
    def vectors(self, ids, features):
        signal.raise_signal(signal.SIGTERM)
        raise FeatureError("genre: 'Drama' was not seen in training")  # the call failed on its own after the stop

    monkeypatch.setattr(_Tower, "vectors", vectors)
    status, err = _upserts_stopped(tmp_path, capsys, monkeypatch, lambda cls, *a, **kw: pytest.fail("replicas called"))
    assert (status, err) == (143, "recsys-catalogue: stopped by SIGTERM; nothing was written: run the same command "
                                  "again")
