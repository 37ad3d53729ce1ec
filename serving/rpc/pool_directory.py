"""A ``--workers`` supervisor's private directory (mode 0700, one per supervisor, locked while it lives): where its
workers' private sockets and the pool's secret are, and where the directories of supervisors that were killed are
found and removed when the next one starts (``private_directory``). ``write_pool_secret`` writes the random secret
the pool's workers sign their Redis entries with; a worker reads it with ``pool_secret``."""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import stat
import tempfile

log = logging.getLogger(__name__)

POOL_SECRET_FILE = "pool-secret"  # beside the workers' sockets, in the supervisor's private directory
SUPERVISOR_LOCK_FILE = "supervisor.lock"  # in the private directory, flock-ed by its supervisor while it lives


def write_pool_secret(directory: str) -> None:
    """Writes a new random secret for the workers of the pool whose private
    directory is ``directory`` (mode 0700): readable by this user only, and
    never in argv or the environment, where other users of the machine read it."""
    fd = os.open(os.path.join(directory, POOL_SECRET_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def private_directory(prog: str) -> tuple[str, int]:
    """A new private directory (mode 0700) for a supervisor of ``prog``, and the
    descriptor of the lock on it, which this process holds while it lives (the
    kernel lets go when it dies, even by SIGKILL). First removes the private
    directories, pool secret included, of ``prog``'s supervisors of this user
    that were killed: they are the ones whose lock nobody holds."""
    parent = tempfile.gettempdir()
    for name in os.listdir(parent):
        if name.startswith(f"{prog}-"):
            _remove_if_abandoned(os.path.join(parent, name))
    directory = tempfile.mkdtemp(prefix=f"{prog}-")
    unnamed = os.path.join(directory, f".{SUPERVISOR_LOCK_FILE}")
    fd = os.open(unnamed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    # Named once held: a supervisor starting meanwhile finds it held or not at all, never free in a live directory.
    os.rename(unnamed, os.path.join(directory, SUPERVISOR_LOCK_FILE))
    return directory, fd


def _remove_if_abandoned(directory: str) -> None:
    try:
        # Only this user's directories, not links: /tmp is everyone's, and a name there proves nothing.
        info = os.lstat(directory)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            return
        fd = os.open(os.path.join(directory, SUPERVISOR_LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # gone, or not a supervisor's
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its supervisor lives
        return
    finally:
        os.close(fd)
    shutil.rmtree(directory, ignore_errors=True)
    log.info("removed %s, the private directory of a supervisor that was killed", directory)


def pool_secret(worker_socket: str) -> str:
    """In a worker (``--worker-socket``), the secret its supervisor wrote for the pool."""
    with open(os.path.join(os.path.dirname(worker_socket), POOL_SECRET_FILE)) as f:
        return f.read()
