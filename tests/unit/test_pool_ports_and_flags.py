"""A ``--workers`` supervisor's port and its workers' start flags: a port another process listens on is refused
as a single process refuses it (not shared with it), and a restarted worker starts on the pool's versions only."""

from __future__ import annotations

import socket

import pytest

from serving.rpc.grpc_server import CannotListen
from serving.rpc.workers import pinned_flags, reserve_port


def test_a_port_another_process_listens_on_is_refused_and_a_free_one_reserved():
    # A second pool's workers listen with SO_REUSEPORT, as these do: with it the two pools shared the port.
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(CannotListen, match=rf"cannot listen on 127.0.0.1:{port}: Address already in use"):
            reserve_port("127.0.0.1", port)
    reserved = reserve_port("127.0.0.1", 0)
    try:
        port = reserved.getsockname()[1]
        assert port > 0
        with socket.socket() as worker:  # the pool's own workers still bind it
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
        with pytest.raises(CannotListen):  # and a second pool does not
            reserve_port("127.0.0.1", port)
    finally:
        reserved.close()


def test_a_restarted_worker_takes_the_pools_rollback_target_none_included():
    """The pool's own --rollback-version came back with a worker restarted after that version was unloaded: equal
    to the live version after a rollback, so the worker could not start and was restarted for ever."""
    assert pinned_flags(2, 0) == ["--version", "2", "--rollback-version", "0"]
    assert pinned_flags(2, 1) == ["--version", "2", "--rollback-version", "1"]
    assert pinned_flags(0, 0) == []  # no sibling answered: the registry's CURRENT, as the pool started
