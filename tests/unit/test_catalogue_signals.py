"""recsys-catalogue stopped by SIGTERM or SIGINT says whether its delta was written, which replicas took it, and
how the others catch up, and exits 128 + the signal, as recsys-publish does: it used to end with 143 and nothing
said, its replicas left behind until some later run."""

from __future__ import annotations

import signal
import threading

import pytest

from model_registry import Registry
from model_registry.deltas import Delta, published_generation
from recsys_client import catalogue
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import Fleet, Replica
from tests.unit.test_catalogue import _Replica
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


def _stopped(tmp_path, capsys, monkeypatch, connect) -> tuple[int, str]:
    """The exit status and message of a run deleting b from CURRENT (version 1), its replicas from ``connect``."""
    registry = Registry(tmp_path, "m")
    registry.set_current(publish_dummy(registry))
    monkeypatch.setattr(Fleet, "connect", classmethod(connect))
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--delete", "b", "--index-admin", "i"])
    captured = capsys.readouterr()
    assert captured.out == ""  # no report of a run that did not end
    return exit.value.code, captured.err.strip()


def test_a_signal_after_the_delta_was_written_names_what_took_it_and_the_catch_up(tmp_path, capsys, monkeypatch,
                                                                                  signals_raise):
    index, query = _SignalledWhileApplying(signal.SIGTERM), _Replica()
    fleet = Fleet([Replica("index", "i", index)], [Replica("query", "q", query)])
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


def test_a_signal_while_the_upserts_are_read_is_raised_once_they_are(tmp_path, capsys, monkeypatch):
    """Upserts given as catalogue values are embedded by the version's candidate tower, TensorFlow: a stop raised
    inside it can abort the run before it says anything (one aborted a trainer's worker, stop 59's CI). It is
    raised once the upserts are read; nothing was written yet."""
    registry = Registry(tmp_path, "m")
    registry.set_current(publish_dummy(registry))
    upserts = tmp_path / "upserts.jsonl"
    upserts.write_text('{"id": "z", "values": {}}\n')
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: pytest.fail("replicas called")))
    reached = []

    def read(f, dim, *args, **kwargs):  # the tower's load and calls, with SIGTERM landing in them
        signal.raise_signal(signal.SIGTERM)
        reached.append("the read's end")
        return Delta.make(dim=dim)

    monkeypatch.setattr(catalogue, "read_upserts", read)
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--upserts", str(upserts), "--index-admin", "i"])
    assert (exit.value.code, reached) == (143, ["the read's end"])
    assert capsys.readouterr().err.strip() == ("recsys-catalogue: stopped by SIGTERM; nothing was written: run the "
                                               "same command again")
    assert published_generation(tmp_path / "m", 1) == 0
