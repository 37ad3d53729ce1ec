"""Writes that survive a crash of the host: a file synced in a folder whose own entries are not can vanish in one,
so a folder's entries are synced after a rename or link in it (``fsync_dir``), and a new folder's entry in its
parent (``make_dirs``)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Syncs the entries of folder ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
