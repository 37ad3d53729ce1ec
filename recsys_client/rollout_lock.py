"""The model's rollout lock: ``exclusive`` holds ``flock`` on ``LOCK_FILE`` in the model's registry directory. A
recsys-publish run (rollout or rollback) and a recsys-catalogue run (a delta's write and apply) each hold it while
they work, so that no two of them change the model's registry or replicas at once."""

from __future__ import annotations

import datetime
import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Iterator

from model_registry import Registry
from recsys_client.fleet import PublishError

log = logging.getLogger("recsys-publish")  # the waiting line's logger, whichever tool waits
LOCK_FILE = ".publish.lock"  # in the model's registry directory
LOCK_POLL_S = 0.1  # how often a run waiting for the lock tries it again


@contextmanager
def exclusive(registry: Registry, tool: str = "recsys-publish", wait_s: float = 0.0,
              refuse_at_once: frozenset[str] = frozenset()) -> Iterator[None]:
    """Holds the model's rollout lock (``flock`` on ``LOCK_FILE`` in its registry directory) for the block, waiting
    up to ``wait_s`` for another run (recsys-publish's, or ``tool``'s) to release it, then raises PublishError naming
    that run; a run of a tool in ``refuse_at_once`` is not waited for. The kernel releases the lock when the holder's
    process ends, so a killed run leaves nothing to clean up."""
    path = registry.model_dir / LOCK_FILE
    if not registry.model_dir.is_dir():
        raise PublishError(f"nothing of model {registry.model!r} is published under {registry.root}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise PublishError(f"cannot take the rollout lock of {registry.model!r} ({e}): {tool} writes the "
                           "registry, run it where the registry is writable") from e
    try:
        deadline = time.monotonic() + wait_s
        waiting_for = ""
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            # An empty file: the holder took the lock and has not yet written its name; which tool it is shows soon.
            now_or_never = bool(holder) and _holder_tool(holder) in refuse_at_once
            if time.monotonic() < deadline and not now_or_never:
                if holder and holder != waiting_for:
                    log.info("waiting up to %g s for the %s run of %r to end (%s)", wait_s, _holder_tool(holder),
                             registry.model, holder)
                    waiting_for = holder
                # flock has no timeout: polled, as a blocking call could be cut off only by a signal.
                time.sleep(LOCK_POLL_S)
                continue
            run = f"{_holder_tool(holder)} run" if holder else "run (recsys-publish or recsys-catalogue)"
            holder = holder or "it has not yet written its name"
            waited = f"waited {wait_s:g} s; " if wait_s and not now_or_never else ""
            raise PublishError(f"another {run} of {registry.model!r} is under way ({holder}; "
                               f"lock {path}): {waited}wait for it to end and check its outcome, then run again; the "
                               "lock goes when that process exits")
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        # Not the command line: it may carry --admin-token, and the file is readable by all.
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started} by {tool}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder_tool(holder: str) -> str:
    """The tool a lock holder's line names (``exclusive``); recsys-publish for a line written before it did."""
    named = holder.rpartition(" by ")[2]
    return named if named.startswith("recsys-") else "recsys-publish"
