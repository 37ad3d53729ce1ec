"""Versioned model storage on a filesystem: ``<root>/<model>/<version>/``.

Layout (TensorFlow Serving's convention of integer version folders)::

    <root>/<model>/
        1/ 2/ 3/ ...        published versions, each with manifest.json
        CURRENT             the live version (text, one integer): query replicas load it at start
        PREVIOUS            the version live before it, the rollback target (text, one integer)
        MOVING              only while the two move: the CURRENT and PREVIOUS in force until the
                            move is complete (text, one integer a line)
        slots/<slot>        the version each index slot holds (text, one integer): a restarted
                            slot process reloads it
        slots/.<slot>.loading  only while a slot loads: the version it loads and the one it held
                            before (text, one integer a line, the second absent for none), the one
                            a restart comes back on until the load is done (``slot_record``)
        catalogue/<version>/  the version's catalogue deltas (model_registry.deltas)
        .staging-*/         in-progress publishes; never read

Publishing writes into a staging directory and renames it to the next integer,
so a version either exists whole or not at all; readers ignore every entry that
is not an integer directory holding a manifest. Pointers are replaced
atomically (``os.replace``), and CURRENT and PREVIOUS move as one: a move cut
off between its writes reads as not made (``set_current``), and a reader gets
the two as they stood together at one moment (``pointers``). Publishing never
moves CURRENT: the rollout tool (``recsys-publish``) is its one writer, once
every replica holds the version.
A missing or broken pointer is reported, never guessed (no "newest version").
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_registry import signing
from model_registry.deltas import catalogue_dir, remove_leftovers
from model_registry.durable import REPLACING_PREFIX, file_system_now, fsync_dir, make_dirs, replace_file
from model_registry.manifest import MANIFEST_FILE, Manifest, VersionError, checksum_tree, is_version, read_manifest

CURRENT_FILE = "CURRENT"
PREVIOUS_FILE = "PREVIOUS"
MOVING_FILE = "MOVING"
STAGING_PREFIX = ".staging-"  # an in-progress publish's folder
SLOTS_DIR = "slots"
LOADING_SUFFIX = ".loading"  # slots/.<slot>.loading: a slot's load not yet done
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_model_name(name: str, what: str = "model name") -> str:
    """Returns ``name`` if it is usable as a folder or file name, else raises ValueError."""
    if not _NAME.match(name):
        raise ValueError(
            f"{what} {name!r} must be 1-64 characters of letters, digits, '_', '.', '-' "
            "and start with a letter or digit"
        )
    return name


def _fsync_tree(path: Path) -> None:
    # Every folder too, deepest first: a file synced in a folder whose own entries are not can vanish in a crash.
    for directory, _, names in os.walk(path, topdown=False):
        for name in names:
            p = Path(directory, name)
            if p.is_file():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(Path(directory))


class Pointers(NamedTuple):
    """CURRENT and PREVIOUS as they stood together at one moment (None: no such pointer)."""

    current: int | None
    previous: int | None


def _read_text(path: Path) -> str:
    """A pointer's text; a damaged one's bytes that are not UTF-8 read as U+FFFD, which names no version."""
    return path.read_text(encoding="utf-8", errors="replace")


def _open_or_none(path: Path, stack: contextlib.ExitStack) -> IO[str] | None:
    try:
        return stack.enter_context(open(path, encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None


def _still_there(path: Path, f: IO[str] | None) -> bool:
    """Whether ``path`` is still the file ``f`` has open (or, ``f`` None, still missing)."""
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return f is None
    return f is not None and os.path.samestat(now, os.fstat(f.fileno()))


class SlotRecord(NamedTuple):
    """An index slot's record: the version it holds (None: none), the one a restart comes back on, and the one it
    loads while a load is not done (None: none pending; a slot killed mid-load restarts on ``holds``)."""

    holds: int | None
    loading: int | None = None


class Registry:
    """One model's versions under a root directory. Safe for concurrent readers;
    concurrent publishers each get a distinct version number."""

    def __init__(self, root: str | os.PathLike, model: str, signing_key: Ed25519PrivateKey | None = None):
        self.root = Path(root)
        self.model = check_model_name(model)
        self.model_dir = self.root / model
        self._signing_key = signing_key  # signs each published manifest (``signing``)

    def version_dir(self, version: int) -> Path:
        return self.model_dir / str(int(version))

    def versions(self) -> list[int]:
        """Published versions, ascending."""
        if not self.model_dir.is_dir():
            return []
        found = []
        for entry in self.model_dir.iterdir():
            if is_version(entry.name) and (entry / MANIFEST_FILE).is_file():
                found.append(int(entry.name))
        return sorted(found)

    def _read_pointer(self, path: Path) -> int | None:
        """The published version a pointer file names; None if there is no file.
        Raises VersionError if it names anything else."""
        try:
            text = _read_text(path)
        except FileNotFoundError:
            return None
        return self._named(path, text)

    def _named(self, path: Path, text: str | None) -> int | None:
        """The published version ``text``, read from ``path``, names; None for no text. Raises VersionError if it
        names anything else."""
        if text is None:
            return None
        if not (is_version(text.strip()) and (self.version_dir(int(text)) / MANIFEST_FILE).is_file()):
            raise VersionError(f"{path} names {text.strip()!r}, which is not a published version of {self.model} "
                               f"(published: {self.versions()})")
        return int(text)

    def _write_pointer(self, path: Path, *versions: int | None) -> None:
        """Atomically replaces a pointer file by one naming ``versions`` (one a line, None left out), or removes it
        when none is left."""
        make_dirs(path.parent)
        named = [v for v in versions if v is not None]
        if not named:
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
            return
        for version in named:
            self.check_published(version)
        replace_file(path, "".join(f"{version}\n" for version in named))

    def check_published(self, version: int) -> None:
        """Raises ``unpublished(version)`` unless ``version`` is published (its manifest is in place)."""
        if not (self.version_dir(version) / MANIFEST_FILE).is_file():
            raise self.unpublished(version)

    def unpublished(self, version: int) -> VersionError:
        """The error saying that ``version`` is not published here, naming the versions that are."""
        return VersionError(f"version {version} of {self.model} is not published under {self.model_dir} "
                            f"(published: {self.versions()})")

    def _pointer_texts(self) -> list[tuple[Path, str | None]]:
        """Where CURRENT and PREVIOUS in force are read from and what they say (None: no such pointer), both as at
        one moment: MOVING's lines while a move is not complete (``set_current``), else the two files. A whole move
        can fit between the reads of the two files, so each is held open (its inode number cannot be reused) until
        both are seen still in place with no move begun; a read that a move overlapped is made again. Nothing is
        locked: a writer killed mid-move leaves MOVING, which readers take as it is."""
        moving = self.model_dir / MOVING_FILE
        paths = [self.model_dir / CURRENT_FILE, self.model_dir / PREVIOUS_FILE]
        while True:
            try:
                text = _read_text(moving)
            except FileNotFoundError:
                pass
            else:
                lines = text.splitlines()
                if not 1 <= len(lines) <= 2:
                    raise VersionError(f"{moving} names {text!r}, not a CURRENT and PREVIOUS of {self.model}")
                return [(moving, line) for line in lines + [None]][:2]
            with contextlib.ExitStack() as stack:
                files = [_open_or_none(path, stack) for path in paths]
                texts = [f.read() if f is not None else None for f in files]
                if not moving.exists() and all(_still_there(path, f) for path, f in zip(paths, files)):
                    return list(zip(paths, texts))

    def pointers(self, broken_previous_ok: bool = False) -> Pointers:
        """CURRENT and PREVIOUS as they stood together at one moment, even while a move runs: two calls (current
        then previous version) can straddle a move and give a pair that never was. Raises VersionError if CURRENT
        names anything but a published version, or PREVIOUS does and ``broken_previous_ok`` is false (else it
        reads as None: the live version is what matters, a rollback target is a convenience)."""
        current, previous = self._pointer_texts()
        live = self._named(*current)
        try:
            return Pointers(live, self._named(*previous))
        except VersionError:
            if not broken_previous_ok:
                raise
            return Pointers(live, None)

    def current_version(self) -> int | None:
        """The live version (CURRENT); None before the first rollout. Raises
        VersionError if CURRENT names anything but a published version."""
        return self._named(*self._pointer_texts()[0])

    def previous_version(self) -> int | None:
        """The rollback target (PREVIOUS), None if there is none. Raises VersionError
        if PREVIOUS names anything but a published version."""
        return self._named(*self._pointer_texts()[1])

    def set_current(self, version: int) -> None:
        """Points CURRENT at a published version; the version it named before
        becomes PREVIOUS. The two files move as one: MOVING, written first, holds
        the pair in force until both are written and it is removed, so a move cut
        off anywhere (a writer killed, a file it could not write) reads as not
        made, never as PREVIOUS equal to CURRENT, and making it again completes it."""
        self.check_published(version)  # before any write: a refused move leaves nothing half made
        # A rollback target that names no published version: the move replaces it.
        current, previous = self.pointers(broken_previous_ok=True)
        if current is None:  # a first rollout: one file to write
            self._write_pointer(self.model_dir / CURRENT_FILE, version)
            return
        moving = self.model_dir / MOVING_FILE
        self._write_pointer(moving, current, previous)
        self._write_pointer(self.model_dir / PREVIOUS_FILE, current if current != version else previous)
        self._write_pointer(self.model_dir / CURRENT_FILE, version)
        moving.unlink()
        fsync_dir(self.model_dir)

    def slot_version(self, slot: str) -> int | None:
        """The version index slot ``slot`` holds by its record, the one a restart comes back on; None if it holds
        none."""
        return self.slot_record(slot).holds

    def slot_named(self, slot: str) -> int | None:
        """The version slot ``slot``'s record file names, its pending load aside (``slot_record`` says what a
        restart comes back on). Raises VersionError if it names anything but a published version."""
        return self._read_pointer(self.slot_file(slot))

    def slot_record(self, slot: str) -> SlotRecord:
        """Index slot ``slot``'s record: what it holds and, while a load is pending, what it loads. Raises
        VersionError if the record names anything but a published version."""
        named = self.slot_named(slot)
        path = self.slot_loading_file(slot)
        try:
            text = _read_text(path)
        except FileNotFoundError:
            return SlotRecord(named)
        lines = text.split()
        if not (1 <= len(lines) <= 2 and all(map(is_version, lines))):
            raise VersionError(f"{path} names {text!r}, not the version slot {slot!r} loads and the one it held")
        loading, held = int(lines[0]), self._named(path, lines[1]) if len(lines) == 2 else None
        if named not in (loading, held):
            return SlotRecord(named)  # a record written since by a slot process that writes no intent (an older one)
        return SlotRecord(held, loading)

    def set_slot_version(self, slot: str, version: int | None) -> None:
        """Records (atomically) the version slot ``slot`` holds; None: it holds none."""
        self._write_pointer(self.slot_file(slot), version)

    def set_slot_loading(self, slot: str, version: int | None, held: int | None = None) -> None:
        """Records (atomically) that slot ``slot`` loads ``version`` and holds ``held`` until that load is done;
        ``version`` None: no load is pending (the intent is removed)."""
        self._write_pointer(self.slot_loading_file(slot), *((version, held) if version is not None else ()))

    def slot_file(self, slot: str) -> Path:
        """The record of the version index slot ``slot`` holds."""
        return self.model_dir / SLOTS_DIR / check_model_name(slot, "slot name")

    def slot_loading_file(self, slot: str) -> Path:
        """The intent of a load of index slot ``slot`` not yet done (a dot-file: readers of records skip those)."""
        return self.model_dir / SLOTS_DIR / f".{check_model_name(slot, 'slot name')}{LOADING_SUFFIX}"

    def prune(self, keep: int) -> list[int]:
        """Deletes the versions older than the newest ``keep`` up to CURRENT, never CURRENT, PREVIOUS, a version
        an index slot holds nor one newer than CURRENT (published, maybe waiting for its rollout: a trainer may
        publish faster than versions go live; without CURRENT every version is such), and hour-old leftovers of
        crashed publishes; returns the versions deleted. Each victim is first renamed out of the version
        namespace, so a reader never sees a half-deleted version."""
        if keep < 2:
            raise ValueError(f"keep={keep}: keep at least 2 versions (the live one and its rollback target)")
        versions = self.versions()
        slots = self.model_dir / SLOTS_DIR
        # Both versions of a slot whose load is pending: the one it loads, and the one a restart comes back on (an
        # empty slot killed before its record named what it loads has only the intent).
        names = {p.name[1:-len(LOADING_SUFFIX)] if p.name.startswith(".") else p.name for p in slots.iterdir()
                 if not p.name.startswith(".") or p.name.endswith(LOADING_SUFFIX)} if slots.is_dir() else set()
        held = {version for name in names for version in self.slot_record(name)}
        pointers = self.pointers()
        waiting = {version for version in versions if pointers.current is None or version > pointers.current}
        rolled_out = [version for version in versions if version not in waiting]
        protected = set(rolled_out[-keep:]) | set(pointers) | held | waiting
        deleted = []
        for version in versions:
            if version in protected:
                continue
            doomed = self.model_dir / f".deleting-{version}-{os.getpid()}"
            os.rename(self.version_dir(version), doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            shutil.rmtree(catalogue_dir(self.model_dir, version), ignore_errors=True)
            deleted.append(version)
        self._remove_leftovers()
        return deleted

    def _remove_leftovers(self, min_age_s: float = 3600.0) -> None:
        """Removes what crashed publishes, prunes, pointer writes and catalogue writes left behind, once old
        enough that no writer can still be at it."""
        cutoff = file_system_now(self.model_dir) - min_age_s
        slots = self.model_dir / SLOTS_DIR
        for entry in [*self.model_dir.iterdir(), *(slots.iterdir() if slots.is_dir() else ())]:
            if not entry.name.startswith((STAGING_PREFIX, REPLACING_PREFIX, ".deleting-")):
                continue
            try:
                if entry.stat().st_mtime >= cutoff:
                    continue
            except FileNotFoundError:
                continue  # a pointer write's temporary file, renamed into place since the listing
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        remove_leftovers(self.model_dir, set(self.versions()), cutoff)

    def manifest(self, version: int) -> Manifest:
        return read_manifest(self.version_dir(version))

    def publish(self, write: Callable[[Path], Callable[[int, dict[str, str]], Manifest]]) -> Manifest:
        """Publishes a new version and returns its manifest.

        ``write(staging_dir)`` writes every artifact into ``staging_dir`` and
        returns a function that, given the assigned version number and the
        files' checksums, builds the manifest. The manifest is written last
        (then its signature, with a signing key), the directory is fsynced and
        renamed to the next free integer. CURRENT does not move.
        """
        make_dirs(self.model_dir)
        staging = Path(tempfile.mkdtemp(dir=self.model_dir, prefix=STAGING_PREFIX))
        try:
            build_manifest = write(staging)
            files = checksum_tree(staging)
            version = 0
            while True:
                existing = self.versions()
                # Past the number last tried: a folder without a manifest holds it, and versions() never lists it.
                version = max(version, existing[-1] if existing else 0) + 1
                manifest = build_manifest(version, files)
                (staging / MANIFEST_FILE).write_text(manifest.to_json())
                if self._signing_key is not None:
                    signing.sign(staging, self._signing_key)
                _fsync_tree(staging)
                try:
                    os.rename(staging, self.version_dir(version))
                    break
                except OSError:
                    if not self.version_dir(version).exists():
                        raise
                    # Another publisher took this number first: take the next.
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.model_dir)
        return manifest
