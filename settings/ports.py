"""Free loopback ports for the processes a command starts on one machine
(``recsys-train --workers``, ``recsys-query-service --workers``)."""

from __future__ import annotations

import socket


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (held together while chosen, so
    none repeats; another process may still take one before a worker binds it)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
