"""recsys-catalogue: upsert and delete candidates of a published version
without retraining, on every replica that holds it.

    recsys-catalogue --registry DIR --model NAME [--version V] \\
        [--upserts FILE.jsonl] [--delete ID,ID,...] [--delete-file FILE] [--catch-up] \\
        --index-admin HOST:PORT[,...] [--query-admin HOST:PORT[,...]]

Each line of ``--upserts`` is one candidate::

    {"id": "item-9", "vector": [0.1, ...], "tokens": {"genres": ["Drama"]}, "numeric": {"release_year": 1997}}

``vector`` has the version's embedding dimension (with a popularity prior,
its last component is the prior's: ``log(1 + count)``, 0 for a new
candidate); ``tokens`` and ``numeric`` may only name the version's attribute
namespaces (a namespace left out is empty for that candidate). A line has no
other keys than ``id``, ``vector`` or ``features`` (below), ``tokens`` and
``numeric``, and an id no whitespace at its start or end (the trainer trims
ids, as ``--delete`` and ``--delete-file`` trim theirs): either is refused
naming the line. An id both upserted and deleted by one run ends up deleted
(a delta applies its deletes after its upserts), with a warning naming it.

Where the version's towers take catalogue features (``--tower features`` or
``--candidate-features``), a line may give the candidate's catalogue values
instead of a vector; the version's candidate tower embeds them
(``recsys_client.candidate_tower``), and an attribute namespace the line does
not give takes the same-named value, as the trainer made them::

    {"id": "item-9", "features": {"title": "Heat", "genres": ["Crime", "Drama"], "release_year": 1995}}

With ``--signing-key-file`` (the publisher's key, as ``recsys-train`` takes
it) the delta is signed; replicas started with ``--manifest-public-key`` apply
only signed deltas. A delta to a signed version must be signed by the key that
signed it: any other is refused before it is written, since every replica
would refuse it and the version could not be loaded past it. The version's
log is read as its replicas read it (a signed version's verified with the
key's public half): a log altered by hand is refused naming the delta, with
nothing written, since every replica refuses it from there on.

Steps: the input is checked against the version (dimension, values finite
as the float32 a delta stores, numeric attributes numbers or null, ids,
namespaces, the tower's columns); features are embedded; a vector whose
norm is over ``MAX_UPSERT_SCALE`` times the largest of the version's trained
candidates' is refused, writing nothing (``check_scale``); an id to delete
that the version does not hold (its candidates after its deltas so far) is
left out and listed in the report's ``not_present``, and a delta left with
nothing to change is not written (the generation, and every cache key, stays),
but every replica still catches up to the published generation G, as below: a
delta written before may have reached none of them (``--catch-up`` runs with
no upserts or deletes to do just that); else the delta is appended to the
version's log in the registry (``model_registry.deltas``: atomic, checksummed,
the next generation G); then every index replica holding the version, and
every query replica, catches up to G (``ApplyCatalogue``). A replica that
fails (its admin server not answering included) keeps the delta in the
registry, takes it by itself once it is ``WRITER_GRACE_S`` (10 s) old (an index slot; a query
replica follows its index slots: ``--catalogue-catch-up-period-s``) or replays
it at its next load or restart; the report names it and
the exit status is 1. The query replicas are not moved (each is named as
failed) while a shard of the version has no index replica at G, nor when no
replica listed in ``--index-admin`` holds the version at all. Prints a JSON
report.

SIGINT or SIGTERM stops a run once the step under way ends (the admin calls, or
the candidate tower's embedding of upserts given as catalogue values), with one
line saying whether its delta was written, which replicas are at its
generation, and to run ``--catch-up`` for the others; the exit status is 130
or 143, as the shell gives a process the signal ended.

Writing and applying a delta holds the model's rollout lock, as
``recsys-publish`` does (``recsys_client.rollout_lock.exclusive``): a run waits up
to ``--lock-wait-s`` for a rollout to end, then is refused naming it, writing
nothing. A delta for CURRENT is refused, writing nothing, if a rollout moved
CURRENT while the run prepared it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_registry import Registry, VersionError, signing
from model_registry import manifest as files
from model_registry.attributes import Attributes
from model_registry.deltas import (WRITER_GRACE_S, AlteredLog, Delta, catalogue_dir, published_generation,
                                   read_deltas)
from recsys_client.candidate_tower import CandidateTower
from recsys_client.delta_rollout import Rollout, catch_up, publish_delta
from recsys_client.fleet import Fleet, FleetConfig, PublishError, check_fleet
from recsys_client import interrupts
from recsys_client.interrupts import Interrupted, stop_on_signals
from recsys_client.rollout_lock import exclusive
from recsys_client.upserts import CatalogueError, check_id, check_scale, read_upserts
from serving.telemetry.observability import text_handler
from settings.flags import ConfigError, add_flags, option, parse, require

log = logging.getLogger("recsys-catalogue")


def read_log(registry: Registry, version: int, key: Ed25519PrivateKey | None) -> list[Delta]:
    """``version``'s catalogue deltas as its replicas read them: a signed version's verified against the public half
    of ``key``, which ``signing.check_delta_signer`` has found to be its publisher's. Raises CatalogueError for a
    log altered by hand: every replica refuses it from the altered delta on, a delta appended to it included."""
    try:
        return read_deltas(registry.model_dir, version, key=key.public_key() if key is not None else None)
    except AlteredLog as e:
        raise CatalogueError(
            f"the log was altered at delta {e.generation}: {e}. Every replica refuses the log from there on, a delta "
            f"written after it included, so nothing was written: restore delta {e.generation} (its record and npz "
            f"in {catalogue_dir(registry.model_dir, version)}) as it was written, or publish a new version") from None


def _held_deletes(registry: Registry, version: int, manifest: files.Manifest, log_deltas: list[Delta],
                  deleted: np.ndarray, upserted: np.ndarray) -> np.ndarray:
    """Which ``deleted`` ids (bool each) a delta upserting ``upserted`` would delete: those ``version`` holds at
    its latest generation (its published candidates, ``log_deltas`` replayed in order) or the delta upserts itself.
    Deleting any other id changes nothing, yet a delta would still move the generation and every cache key."""
    held = np.zeros(len(deleted), dtype=bool)
    if not len(deleted):
        return held
    for directory in files.shard_dirs(registry.version_dir(version), manifest):
        held |= np.isin(deleted, np.load(directory / files.CANDIDATE_IDS_FILE, allow_pickle=False))
    for delta in log_deltas:  # within a delta, deletes apply after upserts
        held[np.isin(deleted, delta.ids)] = True
        held[np.isin(deleted, delta.deleted)] = False
    return held | np.isin(deleted, upserted)


@dataclass(frozen=True)
class CatalogueConfig(FleetConfig):
    version: int = option(0, "version to change (0: CURRENT)", env=False)
    upserts: str = option("", "JSON lines of candidates to upsert (see above)", env=False)
    delete: tuple[str, ...] = option((), "candidate ids to delete, comma-separated", env=False)
    delete_file: str = option("", "file of candidate ids to delete, one per line", env=False)
    catch_up: bool = option(False, "with no upserts or deletes: write nothing, have every replica catch up to the "
                                   "version's published generation (every run does so)", env=False)
    index_admin: tuple[str, ...] = option(FleetConfig.index_admin,
                                          "every index replica's admin HOST:PORT, comma-separated")
    signing_key: str = option("", "PEM Ed25519 private key that signs the delta (services given its public key "
                                  "apply only signed deltas; the key recsys-train signs versions with)", secret=True)
    lock_wait_s: float = option(FleetConfig.lock_wait_s, "how long to wait for a rollout (recsys-publish) of the "
                                                         "model to end before writing a delta")

    def __post_init__(self) -> None:
        super().__post_init__()
        # The message follows the field's flag: "--upserts or --delete / --delete-file is required: ...".
        require(bool(self.upserts or self.delete or self.delete_file or self.catch_up), "upserts",
                "or --delete / --delete-file is required: there is nothing to upsert or delete (--catch-up alone "
                "brings the replicas to the deltas published)")
        require(self.version >= 0, "version", "must be >= 0")
        # Else a delta would reach the query replicas alone, and they route only to index replicas at its generation.
        require(bool(self.index_admin), "index_admin", "is required (every index replica)")
        if self.signing_key:
            try:
                signing.private_key(self.signing_key)
            except ValueError as e:
                raise ConfigError("signing_key", f"is not a usable key: {e}") from None


@contextlib.contextmanager
def _utf8(path: str):
    """Reading ``path``: its bytes that are not UTF-8 are a CatalogueError naming it, not a traceback."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise CatalogueError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x})") from None


def _check_still_current(registry: Registry, given: int, version: int) -> None:
    """Refuses (CatalogueError) a delta for CURRENT (``given`` 0) once CURRENT no longer names ``version``, the one
    it was read and checked against: a rollout ended while this run prepared it."""
    now = registry.current_version()
    if not given and now != version:
        raise CatalogueError(f"CURRENT moved from version {version} to {now} while this run prepared its delta (a "
                             f"rollout or rollback ended): nothing was written; run again to change version {now}, "
                             f"or pass --version {version} to change that one")


@dataclass
class _Progress:
    """How far a run got, for the message of a signal that stops it."""

    version: int = 0
    published: int = -1  # the version's generation before the run's delta; -1: not read yet, so nothing written
    writes: bool = True  # whether the run has a delta to write (else it only has the replicas catch up)

    def after_signal(self, registry: Registry) -> str:
        """Whether the run wrote its delta and, if a generation is published, how the replicas behind get to it."""
        if self.published < 0:  # stopped before the generation was read (it said "delta 0 of version 0 was written")
            return "nothing was written: run the same command again"
        now = published_generation(registry.model_dir, self.version, self.published)
        catch_up = (f"the replicas not at it take it by themselves once it is {WRITER_GRACE_S:g} s old "
                    "(--catalogue-catch-up-period-s), or replay it at their next load or restart; run "
                    f"recsys-catalogue --catch-up --version {self.version}, with this run's --registry, --model and "
                    "replica flags, to bring them to it now")
        if now > self.published:
            return f"catalogue delta {now} of version {self.version} was written to the registry: {catch_up}"
        if not self.writes and now:
            return f"this run writes no delta (version {self.version} is at generation {now}): {catch_up}"
        return "nothing was written: run the same command again"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-catalogue", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, CatalogueConfig)
    config = parse(parser, CatalogueConfig, argv)
    logging.basicConfig(level=logging.INFO, handlers=[text_handler("%(asctime)s %(message)s")])
    registry = Registry(config.registry, config.model)
    progress = _Progress()
    # Else SIGTERM after the delta was written ends the run with nothing said, and its replicas stay behind.
    with stop_on_signals(log, "already stopping: waiting for the step under way (the candidate tower's call, or the "
                              "admin calls) to end"):
        try:
            _run(config, registry, progress)
            interrupts.check()  # a stop Python dropped after the last check (in a ``__del__`` of the tower's)
        except Interrupted as e:
            print(f"recsys-catalogue: {e}; {progress.after_signal(registry)}", file=sys.stderr)
            sys.exit(e.exit_code)


def _run(config: CatalogueConfig, registry: Registry, progress: _Progress) -> None:
    """The run of ``main``, which ``progress`` follows."""
    try:
        version = config.version or registry.current_version()
        if version is None:
            raise CatalogueError(f"{config.model} has no CURRENT version: pass --version")
        key = signing.private_key(config.signing_key) if config.signing_key else None
        # Before any replica is called, and before the candidate tower is loaded: TensorFlow reads a SavedModel
        # only of a version whose manifest this key's signature vouches for, and the manifest read is that one.
        registry.check_published(version)
        signed = signing.check_delta_signer(registry.version_dir(version), key)
        manifest = files.read_manifest(registry.version_dir(version), signed)
        dim = manifest.embedding_dim
        token_ns, numeric_ns = Attributes.namespaces(files.attributes_file(registry.version_dir(version), manifest))
        delta = Delta.make(dim=dim)
        if config.upserts:
            with open(config.upserts, encoding="utf-8") as f, _utf8(config.upserts):
                delta = read_upserts(f, dim, token_ns, numeric_ns,
                                     lambda: CandidateTower.load(registry.version_dir(version), manifest))
        deleted = list(config.delete)
        if config.delete_file:
            with _utf8(config.delete_file):
                deleted += [line.strip() for line in Path(config.delete_file).read_text(encoding="utf-8").splitlines()
                            if line.strip()]
        for i, candidate in enumerate(deleted):
            check_id(candidate, f"deleted id {i}")
        deleted = list(dict.fromkeys(deleted))  # an id given twice was stored twice and counted twice as deleted
        both = sorted(set(deleted) & set(delta.ids.tolist()))
        if both:  # else the upsert is written and lost without a word
            log.warning("%d ids are both upserted (--upserts) and deleted (--delete / --delete-file): %s; a delta "
                        "applies its deletes after its upserts, so they end up deleted", len(both),
                        ", ".join(both[:5]) + (", ..." if len(both) > 5 else ""))
        log_deltas = read_log(registry, version, key)
        requested = np.asarray(deleted, dtype=str) if deleted else delta.deleted
        held = _held_deletes(registry, version, manifest, log_deltas, requested, delta.ids)
        not_present = requested[~held].tolist()
        if not_present:
            log.warning("version %d does not hold %d of the ids to delete (%s): left out of the delta", version,
                        len(not_present), ", ".join(not_present[:5]) + (", ..." if len(not_present) > 5 else ""))
        delta = Delta(delta.ids, delta.vectors, delta.attributes, requested[held])
        check_scale(registry, version, delta)
        writes, published = bool(len(delta.ids) or len(delta.deleted)), len(log_deltas)
        progress.version, progress.published, progress.writes = version, published, writes
        fleet = None
        # With nothing to write, the replicas still catch up: a delta written before may have reached none of them.
        if writes or published:
            # A replica that does not answer fails like one that refuses: the delta is for the others and its replay.
            fleet = Fleet.connect(list(config.index_admin), list(config.query_admin), config.admin_token,
                                  config.timeout_s, config.connect_timeout_s, config.tls, strict=False)
            # A query replica given as an index slot took the delta before any index did: the order a delta
            # needs (a query replica's misses search its generation) broken, and reported as applied.
            try:
                check_fleet(fleet, config.model, unanswered_ok=True)  # one that does not answer fails in the run
            except PublishError:
                fleet.close()
                raise
    except Interrupted:
        raise  # main says what was written
    except (CatalogueError, VersionError, OSError, PublishError) as e:
        print(f"recsys-catalogue: {e}", file=sys.stderr)
        sys.exit(1)
    if fleet is None:  # no delta ever: every replica holding the version is at generation 0
        rollout = Rollout(0, [], {})
        log.info("version %d: nothing to change, no catalogue delta written (generation 0)", version)
    elif not writes:  # no delta, so the generation and every replica's cache keys stay
        log.info("version %d: nothing to change, no catalogue delta written; replicas catch up to generation %d",
                 version, published)
        try:
            with contextlib.closing(fleet):
                rollout = catch_up(fleet, registry, version, published)
        except CatalogueError as e:
            print(f"recsys-catalogue: {e}", file=sys.stderr)
            sys.exit(1)
    else:
        try:
            # A delta written while a rollout moves CURRENT would land on the version it replaces, or in one its
            # prune deletes: the write and apply wait for the rollout's lock (a catch-up alone writes nothing).
            with exclusive(registry, "recsys-catalogue", config.lock_wait_s):
                _check_still_current(registry, config.version, version)
                interrupts.check()  # a stop Python dropped (in a __del__ of the candidate tower's): write nothing
                rollout = publish_delta(fleet, registry, version, delta, key, served=not config.version)
        except Interrupted:
            raise  # main says what was written
        except (CatalogueError, VersionError, OSError, PublishError) as e:  # nothing was applied
            print(f"recsys-catalogue: {e}{'; nothing was written' if isinstance(e, PublishError) else ''}",
                  file=sys.stderr)
            sys.exit(1)
        finally:
            fleet.close()
    print(json.dumps({"version": version, "generation": rollout.generation, "upserts": len(delta.ids),
                      "deletes": len(delta.deleted), "not_present": not_present, "applied": rollout.applied,
                      "failed": rollout.failed}, indent=2))
    if rollout.failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
