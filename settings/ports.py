"""Free loopback ports for the processes a command starts on one machine
(``recsys-train --workers``, ``recsys-query-service --workers``)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

# The kernel also takes the source ports of outgoing connections from its ephemeral range, so a port
# chosen there (bind to 0) can be taken by some client's connection before its server binds it (seen
# in the suite: "Address already in use" for a query replica started after seven index processes).
# Ports are chosen below that range instead, at random.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
# Its own generator: a process that seeded the global one (tf.keras.utils.set_random_seed) would
# otherwise draw the same ports as every other process seeded alike.
_RANDOM = random.Random()


def ephemeral_port_start() -> int:
    """The first port of the kernel's ephemeral range (where outgoing connections take theirs)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux
        return 32_768  # Linux's default


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now, below the ephemeral range (held
    together while chosen, so none repeats; another process may still take one
    before a worker binds it). Where that range starts at or below 11,000 there
    is too little room below it, and the kernel chooses (bind to 0), in it."""
    high = ephemeral_port_start()
    sockets: list[socket.socket] = []
    try:
        while len(sockets) < n:
            s = socket.socket()
            try:
                s.bind((host, _RANDOM.randrange(_LOWEST, high) if high > _LOWEST + 1_000 else 0))
            except OSError:  # taken: draw again
                s.close()
                continue
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
