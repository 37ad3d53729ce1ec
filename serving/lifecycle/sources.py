"""Which versions a service should hold when it starts (TensorFlow Serving's
*source* role), read from the registry, never guessed.

* A query replica rejoins on CURRENT (live) and PREVIOUS (its rollback target),
  the pointers the rollout tool writes once every replica has switched.
* An index slot rejoins on its own slot record, which it writes itself after
  each load.

An explicitly given version (``--version``) wins over both. A missing or
broken pointer stops the service with one line saying what to do.
"""

from __future__ import annotations

import dataclasses

from model_registry import Registry, VersionError


@dataclasses.dataclass(frozen=True)
class StartupVersions:
    """What to load at start: ``live`` and, best effort, ``rollback_target``."""

    live: int | None
    rollback_target: int | None = None


def _check_root(registry: Registry) -> None:
    """A registry root that is no directory is a mistyped ``--registry``, not a registry waiting for its first
    version: said so, rather than that nothing has been rolled out (query replica) or nothing (index slot)."""
    if not registry.root.is_dir():
        raise VersionError(f"registry {registry.root} is not a directory: check --registry (the directory "
                           "recsys-train --registry publishes to)")
    if registry.model_dir.exists() and not registry.model_dir.is_dir():  # else a NotADirectoryError's traceback
        raise VersionError(f"{registry.model_dir} is a file, not model {registry.model}'s directory: check --model "
                           "and --registry")


def query_startup(registry: Registry, explicit: int = 0, explicit_rollback: int = 0) -> StartupVersions:
    """CURRENT and PREVIOUS, or ``explicit`` (and ``explicit_rollback`` as its
    rollback target) when given (> 0). Raises VersionError when there is nothing to serve."""
    _check_root(registry)
    if explicit:
        for version in (explicit, explicit_rollback):
            if version:  # here, before TensorFlow's import (~5 s), rather than by the load after it
                registry.check_published(version)
        return StartupVersions(explicit, explicit_rollback or None)
    # One pair read at one moment: two reads can straddle a pointer move and lose the rollback target. A broken
    # PREVIOUS reads as None (a rollback target is a convenience; the live version is what must load).
    current, previous = registry.pointers(broken_previous_ok=True)  # raises on a broken CURRENT
    if current is None:
        raise VersionError(
            f"{registry.model_dir / 'CURRENT'} does not exist: no version of {registry.model} has been rolled "
            f"out (published: {registry.versions()}). Roll the first one out with recsys-publish --initial "
            "(it needs only the index slots' admin planes, no query replica), or start with --version N")
    return StartupVersions(current, previous if previous != current else None)


def slot_startup(registry: Registry, slot: str, explicit: int = 0) -> StartupVersions:
    """The slot record's version (None: an empty slot, waiting for a rollout),
    or ``explicit`` when given. Raises VersionError if the record is broken, or if
    ``explicit`` would move a slot whose record holds the live version."""
    _check_root(registry)
    if explicit:
        _refuse_moving_the_live_slot(registry, slot, explicit)
        return StartupVersions(explicit)
    try:
        return StartupVersions(registry.slot_version(slot))
    except VersionError as e:
        raise VersionError(f"slot {slot!r}: {e}; fix or remove the record, or start with --version N") from None


def _refuse_moving_the_live_slot(registry: Registry, slot: str, explicit: int) -> None:
    """Refuses ``--version`` other than the live version (CURRENT) for a slot whose record holds it: the replica
    writes the slot's record, and every other replica of the slot restarted later came back on ``explicit``, so
    the live version's searches found no index ("no index endpoint holds version N")."""
    try:
        held, current = registry.slot_version(slot), registry.current_version()
    except VersionError:  # a broken record or CURRENT: --version is how it is mended
        return
    if held is not None and held == current != explicit:
        raise VersionError(f"slot {slot!r} holds version {held}, the live version (CURRENT): a replica of it started "
                           f"with --version {explicit} would move the slot's record, and its other replicas at their "
                           f"next restart, off the live version. Start it without --version (it loads the slot's "
                           f"version), give another --slot, or roll version {explicit} out with recsys-publish")
