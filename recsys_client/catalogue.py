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
registry, takes it by itself once it is 10 s old (an index slot; a query
replica follows its index slots: ``--catalogue-catch-up-period-s``) or replays
it at its next load or restart; the report names it and
the exit status is 1. The query replicas are not moved (each is named as
failed) while a shard of the version has no index replica at G, nor when no
replica listed in ``--index-admin`` holds the version at all. Prints a JSON
report.

SIGINT or SIGTERM stops a run once the admin calls under way end, with one
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from model_registry import Registry, VersionError, signing
from model_registry import manifest as files
from model_registry.attributes import LIST_SEPARATOR, Attributes, token_lists
from model_registry.deltas import (MAX_UPSERT_SCALE, AlteredLog, Delta, catalogue_dir, published_generation,
                                   read_deltas, trained_max_norm, write_delta)
from protos.recsys.v1 import admin_pb2 as pb
from protos.recsys.v1.versions_pb2 import VERSION_STATE_LOADING as LOADING
from recsys_client.candidate_tower import CandidateTower, FeatureError
from recsys_client.fleet import SERVING, Fleet, FleetConfig, PublishError, Replica, version_in
from recsys_client.interrupts import Interrupted, stop_on_signals
from recsys_client.rollout_lock import exclusive
from serving import validation
from serving.errors import InvalidArgument
from serving.validation import MAX_ID_BYTES
from settings.flags import ConfigError, add_flags, option, parse, require

log = logging.getLogger("recsys-catalogue")
# The keys an upsert line may have (module docstring): any other, "token" for "tokens" say, would else be dropped
# unread, and the candidate written without the attributes its filters need.
UPSERT_KEYS = ("id", "vector", "features", "tokens", "numeric")


class CatalogueError(Exception):
    """Input that does not fit the version (the message names the line and field), or a delta the registry's
    directory would not take."""


def read_upserts(lines, dim: int, token_namespaces: frozenset[str], numeric_namespaces: frozenset[str],
                 tower: Callable[[], CandidateTower] | None = None) -> Delta:
    """A delta upserting the candidates of JSON ``lines`` (see the module docstring).

    ``tower`` loads the version's candidate tower; it is called only if a line
    gives ``features`` instead of a ``vector``."""
    ids, vectors, wheres = [], [], []
    described: dict[int, dict[str, Any]] = {}  # row -> features, for rows given as features
    tokens: dict[str, list[list[str]]] = {ns: [] for ns in token_namespaces}
    numeric: dict[str, list[float]] = {ns: [] for ns in numeric_namespaces}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            candidate = record["id"]
        except (ValueError, KeyError, TypeError) as e:
            raise CatalogueError(f"line {number}: not a JSON object with an 'id' ({e})") from None
        if not isinstance(candidate, str) or not 0 < len(candidate.encode()) <= MAX_ID_BYTES:
            raise CatalogueError(f"line {number}: id must be a string of 1..{MAX_ID_BYTES} bytes")
        _check_id(candidate, f"line {number}: id")
        where = f"line {number} (id {candidate!r})"
        unknown_keys = sorted(set(record) - set(UPSERT_KEYS))
        if unknown_keys:
            raise CatalogueError(f"{where}: unknown keys {unknown_keys}: a line takes only {', '.join(UPSERT_KEYS)} "
                                 "(see recsys-catalogue --help)")
        vector, features = record.get("vector"), record.get("features")
        if (vector is None) == (features is None):
            raise CatalogueError(f"{where}: give either 'vector' or 'features' (the catalogue values the version's "
                                 "candidate tower embeds)")
        if features is not None:
            if not isinstance(features, dict):
                raise CatalogueError(f"{where}: 'features' must be an object of catalogue column -> value")
            described[len(ids)] = features
            vector = np.zeros(dim, np.float32)
        else:
            vector = _finite_float32s(vector) if isinstance(vector, list) and len(vector) == dim else None
            if vector is None:
                raise CatalogueError(f"{where}: vector must be {dim} finite numbers within float32's range, the "
                                     "version's embedding dimension")
        for part in ("tokens", "numeric"):
            if not isinstance(record.get(part, {}), dict):
                raise CatalogueError(f"{where}: {part!r} must be an object of attribute namespace -> values")
        unknown = (set(record.get("tokens", {})) - token_namespaces) | \
            (set(record.get("numeric", {})) - numeric_namespaces)
        if unknown:
            raise CatalogueError(f"{where}: namespaces {sorted(unknown)} are not attribute "
                                 f"namespaces of this version (tokens: {sorted(token_namespaces)}, numeric: "
                                 f"{sorted(numeric_namespaces)})")
        ids.append(candidate)
        vectors.append(vector)
        wheres.append(where)
        # A namespace the line leaves out takes the same-named feature, as the trainer made the
        # version's attributes from the catalogue's columns (model_registry.attributes.from_catalogue).
        features = features or {}
        for ns in token_namespaces:
            given = record.get("tokens", {}).get(ns)
            if given is not None and not isinstance(given, list):  # a string would be taken letter by letter
                raise CatalogueError(f"{where}: tokens {ns!r} must be a list, got {given!r}")
            tokens[ns].append([str(t) for t in given] if given is not None else
                              token_lists([_cell(features.get(ns))])[0])
        for ns in numeric_namespaces:
            value = record.get("numeric", {}).get(ns, features.get(ns))
            # An infinity passes a range filter's bounds (-inf passes max: 0), and a string or boolean is no number.
            if value is not None and _finite_float32s([value]) is None:
                raise CatalogueError(f"{where}: numeric {ns!r} must be a finite number within float32's range "
                                     f"(null: missing), got {value!r}")
            numeric[ns].append(float("nan") if value is None else float(value))
    if len(set(ids)) != len(ids):
        raise CatalogueError("an id appears on more than one line: upsert each candidate once per delta")
    matrix = np.array(vectors, dtype=np.float32).reshape(len(ids), dim)
    if described:
        if tower is None:
            raise CatalogueError("lines give 'features' but no candidate tower was given to embed them")
        rows = np.fromiter(described, dtype=np.int64)
        loaded = tower()
        try:
            computed = loaded.vectors([ids[r] for r in rows], list(described.values()))
        except FeatureError as e:
            raise CatalogueError(f"the candidates given as features, {e}") from None
        if computed.shape[1] != dim:
            raise CatalogueError(f"the candidate tower gives {computed.shape[1]}-dimensional vectors but the "
                                 f"version's are {dim}: republish the version")
        matrix[rows] = computed
        unembedded = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if len(unembedded):
            raise CatalogueError(f"{wheres[unembedded[0]]}: its features embed to a vector that is not finite in "
                                 "float32: give values within the range the version was trained on")
    return Delta.make(ids, matrix, Attributes.from_lists(len(ids), tokens, numeric), dim=dim)


def _finite_float32s(values: list) -> np.ndarray | None:
    """``values`` as the float32 a delta stores them in, or None unless each is a JSON number (not a boolean, nor a
    string) finite once cast: 1e300 is a finite float64 but an infinite float32."""
    if not all(type(v) in (int, float) for v in values):
        return None
    try:
        with np.errstate(over="ignore"):
            cast = np.array(values, dtype=np.float32)
    except OverflowError:  # an int beyond float64's range
        return None
    return cast if np.isfinite(cast).all() else None


def check_scale(registry: Registry, version: int, delta: Delta) -> None:
    """Refuses (CatalogueError) a delta upserting a vector whose norm is over ``MAX_UPSERT_SCALE`` times the largest
    norm of ``version``'s trained candidates, be it given or embedded from features by the candidate tower."""
    if not len(delta.ids):
        return
    norms = np.linalg.norm(delta.vectors.astype(np.float64), axis=1)
    scale = trained_max_norm(registry.version_dir(version))
    over = np.flatnonzero(norms > MAX_UPSERT_SCALE * scale)
    if len(over):
        more = f" ({len(over) - 1} more upserts are over it)" if len(over) > 1 else ""
        raise CatalogueError(
            f"upsert {str(delta.ids[over[0]])!r} has a vector of norm {norms[over[0]]:.3g}, over "
            f"{MAX_UPSERT_SCALE * scale:.3g} ({MAX_UPSERT_SCALE:g} times the largest norm of version {version}'s "
            f"trained candidates, {scale:.3g}){more}: "
            "it would outscore the version's candidates for nearly every query and top every result. Give vectors on "
            "the version's scale (as its candidate tower makes them) or, for features, values within the range the "
            "version was trained on; nothing was written")


def _cell(value: Any) -> str:
    """A feature value as a catalogue cell: a list of categories joined with ``|``."""
    if value is None:
        return ""
    return LIST_SEPARATOR.join(map(str, value)) if isinstance(value, list) else str(value)


def read_log(registry: Registry, version: int, key: Ed25519PrivateKey | None) -> list[Delta]:
    """``version``'s catalogue deltas as its replicas read them: a signed version's verified against the public half
    of ``key``, which ``signing.check_delta_signer`` has found to be its publisher's. Raises CatalogueError for a
    log altered by hand: every replica refuses it from the altered delta on, a delta appended to it included."""
    version_dir = registry.version_dir(version)
    signed = key is not None and (version_dir / files.SIGNATURE_FILE).is_file()
    try:
        return read_deltas(registry.model_dir, version, key=key.public_key() if signed else None)
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
class Rollout:
    """What one delta reached: the generation, and which replicas took it."""

    generation: int
    applied: list[str]
    failed: dict[str, str]


def apply_everywhere(fleet: Fleet, version: int, generation: int) -> Rollout:
    """Asks every index replica holding ``version``, then every query replica, to
    catch up to ``generation`` (the replicas of a tier at once). Index first: a
    query replica at G routes only to index replicas at G or later, so the query
    tier is not moved while a shard of the version has no index replica at G.
    SIGINT or SIGTERM (``Interrupted``) lets the calls under way end, then
    raises naming the replicas that took the generation."""
    request = pb.ApplyCatalogueRequest(version=version, generation=generation)
    shards: dict[str, tuple[int, int]] = {}  # index replica holding the version -> (its shard, of how many)
    took: set[str] = set()  # filled by the calls themselves, which a signal does not cut off

    def apply(replica: Replica) -> str | None:
        """None if applied, "" if the replica does not hold the version, else the error."""
        try:
            if replica.role == "index":
                status = fleet.status(replica)
                states = {v.version: v.state for v in status.versions}
                if version not in states:
                    return ""
                if states[version] != LOADING:  # a slot reports the shard of the version it has loaded
                    shards[_name(replica)] = (status.shard, status.shards)
            fleet.call(replica, "ApplyCatalogue", request)
            took.add(_name(replica))
            return None
        except PublishError as e:
            return str(e)

    applied: list[str] = []
    # An index replica not reached may hold the version, of a shard unknown here: it counts as one that refused.
    failed = {f"{role} {address}": why for (role, address), why in fleet.unreachable.items() if role == "index"}
    try:
        with ThreadPoolExecutor(max(len(fleet.index), len(fleet.query), 1)) as pool:
            for replica, outcome in zip(fleet.index, pool.map(apply, fleet.index)):
                if outcome is None:
                    applied.append(_name(replica))
                elif outcome:
                    failed[_name(replica)] = outcome
            stuck = _unserved(version, generation, shards, applied, bool(failed))
            if stuck:
                for replica in fleet.query:
                    failed[_name(replica)] = (f"not moved to generation {generation}: {stuck}, and a query replica "
                                              "routes only to index replicas at its generation or later (its cache "
                                              "misses would fail); the delta stays in the registry for when they "
                                              "catch up")
            else:
                for replica, outcome in zip(fleet.query, pool.map(apply, fleet.query)):
                    if outcome is None:
                        applied.append(_name(replica))
                    else:
                        failed[_name(replica)] = outcome
    except Interrupted as e:  # raised once the pool's calls under way ended, so ``took`` is what they did
        at = [name for name in map(_name, (*fleet.index, *fleet.query)) if name in took]
        raise Interrupted(e.signum, f" while the replicas caught up to generation {generation} of version {version} "
                                    f"({'at it: ' + ', '.join(at) if at else 'none at it yet'})") from None
    failed |= {f"{role} {address}": why for (role, address), why in fleet.unreachable.items() if role == "query"}
    return Rollout(generation, applied, failed)


def _name(replica: Replica) -> str:
    return f"{replica.role} {replica.address}"


def _unserved(version: int, generation: int, shards: dict[str, tuple[int, int]], applied: list[str],
              refused: bool) -> str:
    """Why no query replica may move to ``generation`` ("" if it may): the index replicas holding ``version``
    (``shards``, or ``refused`` ones whose status was not read) leave some shard of it without one at it, or none
    listed holds it at all (``applied`` names the index replicas that took it, slots still loading it included)."""
    took = {shards[name] for name in applied if name in shards}  # a slot still loading the version names no shard
    if not took:
        if shards or refused:
            return f"no index replica holding version {version} took generation {generation}"
        # The replicas that do hold it were left out of the flag: they stay behind, and a query replica moved to
        # the generation would find no index replica at it.
        return "" if applied else (f"no index replica listed in --index-admin holds version {version} (list those "
                                   "that do, as recsys-client status shows them, and run again with --catch-up)")
    # Every shard of the version, also one whose replicas all refused before saying they hold it (or were not reached).
    missing = sorted((set(shards.values()) | {(shard, of) for _, of in took for shard in range(of)}) - took)
    return "; ".join(f"no replica of shard {shard} of {of} of version {version} took generation {generation}"
                     for shard, of in missing)


def _check_replicas(fleet: Fleet, registry: Registry, version: int, served: bool = False) -> None:
    """Raises CatalogueError, writing nothing, where a replica holds ``version`` at a catalogue generation the
    registry's log does not reach: a record was removed by hand, or the registry was restored from an older copy.
    The next delta would take a generation that replica already holds with other contents, and it would never
    apply it (nor would its catch-up, which looks for the generation after its own). With ``served`` (a delta for
    CURRENT), also where a query replica serves another version: a rollout or rollback cut off past its switch left
    CURRENT behind, and a delete would land on a version that serves nothing. A replica whose status does not
    answer is skipped here: the apply names it."""
    published = published_generation(registry.model_dir, version)
    others: dict[str, int] = {}  # query replicas serving another version than ``version``
    for replica in fleet.index + fleet.query:
        try:
            status = fleet.status(replica)
        except PublishError:
            continue
        live = version_in(status, SERVING)
        if replica.role == "query" and live not in (None, version):
            others[replica.address] = live
        held = {v.version: v.catalogue_generation for v in status.versions}
        if held.get(version, 0) > published:
            raise CatalogueError(
                f"{replica.role} replica {replica.address} holds version {version} at catalogue generation "
                f"{held[version]}, but the registry's log of it ends at generation {published} "
                f"({catalogue_dir(registry.model_dir, version)}): records were removed, or the registry was restored "
                "from an older copy; a new delta would take a generation that replica applied with other contents. "
                "Restore the missing records, or publish a new version (recsys-train, recsys-publish)")
    if served and others:
        raise CatalogueError(
            f"CURRENT names version {version} but query replicas serve another: {others} (a rollout or rollback "
            "was cut off after switching them): nothing was written; finish that run first (run it again, e.g. "
            "`recsys-publish --version N` for the version they serve), or pass --version to change a version on "
            "purpose")


def publish_delta(fleet: Fleet, registry: Registry, version: int, delta: Delta,
                  key: Ed25519PrivateKey | None = None, served: bool = False) -> Rollout:
    """Appends ``delta`` to ``version``'s log (signed by ``key`` if given), then applies it on every replica.
    Raises VersionError, writing nothing, if the version's replicas would refuse the delta's signature, and
    CatalogueError, writing nothing, for an upsert far outside the version's scale (``check_scale``), a replica
    past the registry's log or, with ``served``, a query replica serving another version (``_check_replicas``),
    or if the catalogue directory cannot be written."""
    signing.check_delta_signer(registry.version_dir(version), key)
    check_scale(registry, version, delta)
    _check_replicas(fleet, registry, version, served)
    try:
        generation = write_delta(registry.model_dir, version, delta, key)
    except OSError as e:
        directory = catalogue_dir(registry.model_dir, version)
        raise CatalogueError(f"the delta was not written: catalogue directory {directory} cannot be written "
                             f"({e.strerror or e})") from e
    log.info("version %d: catalogue delta %d (%d upserts, %d deletes) written", version, generation,
             len(delta.ids), len(delta.deleted))
    return apply_everywhere(fleet, version, generation)


def catch_up(fleet: Fleet, registry: Registry, version: int, generation: int) -> Rollout:
    """Has every replica of ``version`` catch up to ``generation``, where the registry's log ends, writing nothing.
    Raises CatalogueError, calling no replica, where one is past the log (``_check_replicas``): it would
    answer from what it holds, and the run would report it caught up."""
    _check_replicas(fleet, registry, version)
    return apply_everywhere(fleet, version, generation)


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
                "or --delete / --delete-file is required: there is nothing to upsert or delete")
        require(self.version >= 0, "version", "must be >= 0")
        # Else a delta would reach the query replicas alone, and they route only to index replicas at its generation.
        require(bool(self.index_admin), "index_admin", "is required (every index replica)")
        if self.signing_key:
            try:
                signing.private_key(self.signing_key)
            except ValueError as e:
                raise ConfigError("signing_key", f"is not a usable key: {e}") from None


def _check_id(candidate: str, what: str) -> None:
    """The services' rule for ids, which a delta's ids must meet to be named by requests. A NUL matters most here:
    numpy drops an id's trailing NULs, so an upsert or delete of "x\\x00" would change or delete x."""
    try:
        validation.check_id(candidate, what)
    except InvalidArgument as e:
        raise CatalogueError(str(e)) from None


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
        now = published_generation(registry.model_dir, self.version, self.published) if self.published >= 0 else 0
        catch_up = ("the replicas not at it take it by themselves once it is 10 s old (--catalogue-catch-up-"
                    f"period-s), or replay it at their next load or restart; run recsys-catalogue --catch-up "
                    f"--version {self.version}, with this run's --registry, --model and replica flags, to bring them "
                    "to it now")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    registry = Registry(config.registry, config.model)
    progress = _Progress()
    # Else SIGTERM after the delta was written ends the run with nothing said, and its replicas stay behind.
    with stop_on_signals(log, "already stopping: waiting for the admin calls under way to end"):
        try:
            _run(config, registry, progress)
        except Interrupted as e:
            print(f"recsys-catalogue: {e}; {progress.after_signal(registry)}", file=sys.stderr)
            sys.exit(e.exit_code)


def _run(config: CatalogueConfig, registry: Registry, progress: _Progress) -> None:
    """The run of ``main``, which ``progress`` follows."""
    try:
        version = config.version or registry.current_version()
        if version is None:
            raise CatalogueError(f"{config.model} has no CURRENT version: pass --version")
        manifest = registry.manifest(version)
        dim = manifest.embedding_dim
        token_ns, numeric_ns = Attributes.namespaces(files.attributes_file(registry.version_dir(version), manifest))
        key = signing.private_key(config.signing_key) if config.signing_key else None
        # Before any replica is called, and before the candidate tower is loaded: TensorFlow reads a SavedModel
        # only of a version whose manifest this key's signature vouches for.
        signing.check_delta_signer(registry.version_dir(version), key)
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
            _check_id(candidate, f"deleted id {i}")
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
    except (CatalogueError, VersionError, OSError) as e:
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
