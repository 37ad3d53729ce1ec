"""Writes that survive a crash of the host: a file synced in a folder whose own entries are not can vanish in one,
so a folder's entries are synced after a rename or link in it (``fsync_dir``), and a new folder's entry in its
parent (``make_dirs``). A small file another reader may open at any time is replaced whole (``replace_file``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Names the temporary file of a ``replace_file`` (the registry's prune removes those a killed write left; the
# registry's pointers were its first users, hence the name).
REPLACING_PREFIX = ".current-"


def fsync_dir(path: Path) -> None:
    """Syncs the entries of folder ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_system_now(directory: Path) -> float:
    """The time by the clock that stamps ``directory``'s entries, which is a shared registry's file server's or its
    writers' rather than this host's: the modification time of a file made there now. An age read against this
    host's clock was off by the two clocks' difference: an hour ahead, a prune removed a publish's folder mid-write."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=REPLACING_PREFIX)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(tmp)


def make_dirs(path: Path) -> None:
    """Makes folder ``path`` and its missing parents, each new one's entry synced in its parent."""
    missing = []
    path = Path(path)
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:  # another writer made it: synced, or being synced, by that writer
            continue
        fsync_dir(directory.parent)


def replace_file(path: Path, text: str) -> None:
    """Replaces file ``path`` by one holding ``text``, synced, in one rename: a reader sees the old file or the new,
    never part of one, and a failed write leaves the old (a killed one, a ``REPLACING_PREFIX`` file beside it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=REPLACING_PREFIX)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
