"""Catalogue deltas: candidate upserts and deletes applied to a published
version without retraining, stored beside it in the registry.

A version directory never changes (its manifest checksums every file), so a
version's deltas live in ``<root>/<model>/catalogue/<version>/``, an
append-only log; generation G is the G-th delta::

    00000001-<sha256[:16]>.npz   the delta: upserted ids, vectors, attributes; deleted ids
    00000001.json                its commit record: the npz's name and sha256, counts,
                                 and the previous record's sha256 (a hash chain)

The npz is written first under a name of its own content, then the record
claims the generation with an exclusive create (``os.link``), so two writers
never both take one generation and a reader never sees half a delta: a
generation exists once its record does. Readers check every record's chain
and every npz's sha256, and the generations must run 1, 2, 3... without a gap.

With the publisher's signing key the record also carries an Ed25519 signature
of its other fields (``signing``), which name the model and version; a
service given the public key refuses a log with an unsigned or altered record.

Within a delta, deletes apply after upserts; an id both upserted and deleted
ends deleted. A service holding a version replays its deltas at load, and
catches up on ``ApplyCatalogue``; the rollout tool (``recsys-catalogue``) is
the writer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from model_registry import signing
from model_registry.attributes import Attributes
from model_registry.durable import fsync_dir, make_dirs
from model_registry import manifest as files
from model_registry.ids import MAX_ID_BYTES, first_unusable
from model_registry.manifest import VersionError, sha256_file, shard_of

log = logging.getLogger(__name__)

CATALOGUE_DIR = "catalogue"
# Deltas a load's replay holds at once (``replay``): memory for a few, not the whole log.
REPLAY_BATCH = 8
_RECORD = "{:08d}.json"
# Rows whose norms are computed at once: 16 MB of float32 at 64 dims, so a memory-mapped file is read without a copy
# of it all (at 1M x 64, 0.15 s in all).
NORM_CHUNK = 65_536
# The most an upsert's vector norm may be, in times the largest norm of its version's trained candidates (the
# publisher refuses more). A candidate's norm scales all its dot-product scores: one far longer than the version's
# candidates outscores them for nearly every query, and one of 3e38 a component scores inf against every query, the
# top of every result of the version. The index bounds query vectors against the trained candidates times this, not
# against the catalogue's own, so one bad upsert cannot have every query refused. 100 times leaves new candidates
# ample room beyond the trained ones' scale.
MAX_UPSERT_SCALE = 100.0
# A delta this young is left to the run that wrote it (recsys-catalogue applies it to the index slots, then the
# query replicas, and names any that did not take it); the replicas' catch-up is for the ones such a run missed.
WRITER_GRACE_S = 10.0


@dataclasses.dataclass(frozen=True)
class Delta:
    """One batch of catalogue changes: upsert ``ids`` with ``vectors`` [n, dim]
    (and ``attributes`` of those rows), then delete ``deleted``."""

    ids: np.ndarray  # str [n]
    vectors: np.ndarray  # float32 [n, dim]
    attributes: Attributes
    deleted: np.ndarray  # str [m]
    record_sha256: str = ""  # as read from a log: its commit record's sha256, what the next record chains to

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.ids):
            raise ValueError(f"a delta needs one vector per upserted id: {len(self.ids)} ids, vectors of shape "
                             f"{self.vectors.shape}")
        if self.attributes.rows != len(self.ids):
            raise ValueError(f"delta attributes describe {self.attributes.rows} rows for {len(self.ids)} ids")
        if len(set(self.ids.tolist())) != len(self.ids):
            raise ValueError("a delta upserts each id at most once")
        if not np.isfinite(self.vectors).all():
            raise ValueError("delta vectors must be finite")
        # Padded ids are refused where a delta is made, not where one is read: logs written before 77baf8b may hold
        # them, and their versions must still load after an upgrade.
        self.check_ids(padding_allowed=True)

    def check_ids(self, padding_allowed: bool = False) -> None:
        """Raises ValueError naming the first id of the delta that no request could name (``first_unusable``)."""
        for what, ids in (("upserted", self.ids), ("deleted", self.deleted)):
            # Else served as results that no request could send back (RecommendSimilar, a delete) or exclude.
            bad = first_unusable(ids, padding_allowed=padding_allowed)
            if bad is not None:
                raise ValueError(f"{what} id {str(ids[bad])[:64]!r} is no id a request could name: ids are 1 to "
                                 f"{MAX_ID_BYTES} bytes of UTF-8 without NUL or whitespace at either end")

    @classmethod
    def make(cls, ids=(), vectors=None, attributes: Attributes | None = None, deleted=(), dim: int = 0) -> "Delta":
        """A new delta, its ids checked as every writer must check them."""
        ids = np.asarray(list(ids), dtype=str) if len(ids) else np.zeros(0, dtype="<U1")
        vectors = np.zeros((0, dim), np.float32) if vectors is None else np.asarray(vectors, dtype=np.float32)
        deleted = np.asarray(list(deleted), dtype=str) if len(deleted) else np.zeros(0, dtype="<U1")
        delta = cls(ids, vectors, attributes or Attributes(len(ids)), deleted)
        delta.check_ids()
        return delta

    def of_shard(self, shard: int, shards: int) -> "Delta":
        """What ``shard`` of a version split in ``shards`` applies: the upserts of
        its own candidates (``manifest.shard_of``), and every delete (deleting an
        id a shard does not hold is a no-op)."""
        mine = np.flatnonzero(shard_of(self.ids, shards) == shard)
        if len(mine) == len(self.ids):
            return self
        return Delta(self.ids[mine], self.vectors[mine], self.attributes.take(mine), self.deleted, self.record_sha256)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"ids": self.ids, "vectors": self.vectors, "deleted": self.deleted, **self.attributes.to_arrays()}

    @classmethod
    def from_arrays(cls, arrays) -> "Delta":
        ids = np.asarray(arrays["ids"]).astype(str)
        return cls(ids, np.asarray(arrays["vectors"], dtype=np.float32), Attributes.from_arrays(len(ids), arrays),
                   np.asarray(arrays["deleted"]).astype(str))


def max_norm(vectors: np.ndarray) -> float:
    """The largest L2 norm of ``vectors`` [N, dim] (0 for none), summed in float64: squares of float32 values can
    pass float32's range."""
    squares = (float(np.einsum("ij,ij->i", vectors[start:start + NORM_CHUNK], vectors[start:start + NORM_CHUNK],
                               dtype=np.float64).max()) for start in range(0, len(vectors), NORM_CHUNK))
    return math.sqrt(max(squares, default=0.0))


@functools.lru_cache(maxsize=16)
def trained_max_norm(version_dir: Path) -> float:
    """The largest norm of the candidate vectors ``version_dir`` was published with (every shard's), the scale
    its deltas' upserts are checked against; a delta's own vectors do not move it. Kept per directory: a published
    version's files never change (its manifest checksums them), and a writer of many deltas reads them once (at 1M
    candidates of 64 dims, 0.15 s)."""
    return max(max_norm(np.load(directory / files.CANDIDATE_EMBEDDINGS_FILE, mmap_mode="r", allow_pickle=False))
               for directory in files.shard_dirs(version_dir, files.read_manifest(version_dir)))


class AlteredLog(VersionError):
    """A delta log whose record ``generation`` (or its npz) fails its checks: no reader takes it or any delta after
    it, so nothing may be appended to the log either."""

    def __init__(self, generation: int, message: str):
        super().__init__(message)
        self.generation = generation


def catalogue_dir(model_dir: Path, version: int) -> Path:
    return Path(model_dir) / CATALOGUE_DIR / str(int(version))


def _numbered(directory: Path) -> list[tuple[int, str]]:
    """The commit records' (generation, file name), by generation (by number: past 99,999,999 the names outgrow
    their zero padding). Names only: a writer lists the log for each delta, and at 5,000 deltas a glob of Paths took
    22 ms of it. A directory that is missing holds none; one that cannot be read raises OSError (the glob read it
    as empty: a writer then retried a taken generation for ever)."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted((int(name[:-5]), name) for name in names
                  if name.endswith(".json") and name[:-5].isascii() and name[:-5].isdigit())


def _records(directory: Path) -> list[Path]:
    """The commit records, by generation."""
    return [directory / name for _, name in _numbered(directory)]


def remove_leftovers(model_dir: Path, published: set[int], cutoff: float) -> None:
    """Removes, once last changed before ``cutoff`` (so no writer is still at them), what killed writers and prunes
    left in the catalogue: the logs of versions not ``published`` (a prune cut off after removing the version), and
    in the others, temporary files and delta files no record names (a write cut off before its link)."""
    root = Path(model_dir) / CATALOGUE_DIR
    for directory in root.iterdir() if root.is_dir() else ():
        try:
            if directory.stat().st_mtime >= cutoff:
                continue
            if not (files.is_version(directory.name) and int(directory.name) in published):
                shutil.rmtree(directory, ignore_errors=True)
                continue
            named = {json.loads(p.read_bytes()).get("file") for p in _records(directory)}
        except (OSError, ValueError, AttributeError):  # gone meanwhile, or a record damaged: its reader says so
            continue
        for entry in directory.iterdir():
            if entry.name.startswith(".tmp-") or (entry.suffix == ".npz" and entry.name not in named):
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        entry.unlink()


def _records_after(directory: Path, generation: int, up_to: int | None = None) -> list[Path]:
    """The records after ``generation`` (to ``up_to``), in order, up to the first one missing."""
    records = []
    while up_to is None or generation < up_to:
        path = directory / _RECORD.format(generation + 1)
        if not path.is_file():
            break
        records.append(path)
        generation += 1
    return records


def published_generation(model_dir: Path, version: int, at_least: int = 0) -> int:
    """How many deltas are published for ``version`` (0: none). ``at_least``: a
    generation known to be published; the log is then probed from there on
    rather than listed, which costs a long log's catch-ups nothing."""
    directory = catalogue_dir(model_dir, version)
    if at_least > 0:
        return at_least + len(_records_after(directory, at_least))
    numbered = _numbered(directory)
    return numbered[-1][0] if numbered else 0


def record_stat(model_dir: Path, version: int, generation: int) -> os.stat_result | None:
    """The stat of delta ``generation``'s commit record of ``version``, None while it is not published: one stat
    of its name, the cheap probe of a replica looking for the next delta (no listing, no checks: ``read_deltas``
    verifies what it then reads)."""
    try:
        return (catalogue_dir(model_dir, version) / _RECORD.format(generation)).stat()
    except FileNotFoundError:
        return None


def _signed_part(record: dict) -> bytes:
    """The bytes a record's signature covers: every other field, canonically."""
    return json.dumps({k: v for k, v in record.items() if k != "signature"}, sort_keys=True).encode()


def replay(model_dir: Path, version: int, apply: Callable[[list[Delta], int], None],
           key: Ed25519PublicKey | None = None) -> int:
    """Applies ``version``'s whole delta log through ``apply(deltas, generation reached)``, ``REPLAY_BATCH``
    deltas at a time, each read as its batch comes (a log read whole first took a restarted slot's peak memory
    1.3 GB above a replica that had applied the same 5,000 deltas live); once with none for an empty log. Returns
    the generation reached; raises as ``iter_deltas`` does."""
    deltas, generation = iter_deltas(model_dir, version, key=key), 0
    while True:
        batch = list(itertools.islice(deltas, REPLAY_BATCH))
        generation += len(batch)
        if batch or not generation:
            apply(batch, generation)
        if len(batch) < REPLAY_BATCH:
            return generation


def read_deltas(model_dir: Path, version: int, after: int = 0, up_to: int | None = None,
                key: Ed25519PublicKey | None = None, after_sha256: str = "") -> list[Delta]:
    """``iter_deltas``' deltas, as a list."""
    return list(iter_deltas(model_dir, version, after, up_to, key, after_sha256))


def iter_deltas(model_dir: Path, version: int, after: int = 0, up_to: int | None = None,
                key: Ed25519PublicKey | None = None, after_sha256: str = "") -> Iterator[Delta]:
    """The deltas of ``version`` with generations in (after, up_to] (None: all),
    in order, each verified. Raises VersionError on a gap, a broken chain, a
    checksum mismatch, a record of another model or version, fewer deltas than
    ``up_to``, or (with ``key``) a record without the publisher's signature;
    a record that fails its checks raises AlteredLog, naming its generation.

    The chain is checked from generation 1, unless ``after_sha256`` gives the
    sha256 of record ``after`` as the caller verified it before (its last
    delta's ``record_sha256``): then from there, so a replica that catches up
    delta by delta reads O(1) records per catch-up, not every record so far.
    Each delta is read when it is asked for, so a caller may hold one at a time."""
    directory = catalogue_dir(model_dir, version)
    if after_sha256 and after > 0:
        # The records after a verified one, probed by name: no listing of the whole log.
        records, previous = _records_after(directory, after, up_to), after_sha256
        published = after + len(records)
    else:
        records, previous = _records(directory), ""
        if [int(p.stem) for p in records] != list(range(1, len(records) + 1)):
            raise VersionError(f"catalogue deltas of version {version} in {directory} do not run 1..N without a "
                               f"gap: {[p.name for p in records][:10]}")
        published = len(records)
        records = records[:up_to]
    if up_to is not None and up_to > published:
        raise VersionError(f"version {version} has {published} catalogue deltas published, not {up_to}")
    for record_path in records:
        generation = int(record_path.stem)
        record_sha = sha256_file(record_path)
        if generation > after:
            try:
                delta = _read_delta(record_path, model_dir, version, key, previous, record_sha)
            except VersionError as e:
                raise AlteredLog(generation, str(e)) from None
            yield delta
        previous = record_sha


def _read_delta(record_path: Path, model_dir: Path, version: int, key: Ed25519PublicKey | None, previous: str,
                record_sha: str) -> Delta:
    """The delta of commit record ``record_path``, checked: readable, signed by ``key`` (if given), naming its
    model, version and generation, following the record of sha256 ``previous``, its npz matching its sha256."""
    generation = int(record_path.stem)
    where = f"catalogue delta {generation} of version {version}"
    try:
        record = json.loads(record_path.read_text())
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("file", "sha256")):
            raise ValueError("not a commit record naming its file and sha256")
    except ValueError as e:  # truncated or garbled: a refusal naming the delta, not a JSON traceback
        raise VersionError(f"{where}: {record_path.name} is unreadable ({e}): the log was altered") from None
    if key is not None:
        signing.verify_bytes(_signed_part(record), record.get("signature"), key, where)
    # Records written before they named their version have no such fields to check.
    if (record.get("model", Path(model_dir).name), record.get("version", version),
            record.get("generation", generation)) != (Path(model_dir).name, version, generation):
        raise VersionError(f"{where} was written as delta {record.get('generation')} of "
                           f"{record.get('model')} version {record.get('version')}: the log was altered")
    if record.get("previous_sha256", "") != previous:
        raise VersionError(f"catalogue delta {generation} of version {version} does not follow delta "
                           f"{generation - 1} (hash chain broken): the log was altered")
    data = Path(record_path).parent / record["file"]
    if not data.is_file() or sha256_file(data) != record["sha256"]:
        raise VersionError(f"catalogue delta {generation} of version {version}: {record['file']} is missing "
                           "or fails its sha256 check")
    try:
        with np.load(data, allow_pickle=False) as arrays:
            return dataclasses.replace(Delta.from_arrays(arrays), record_sha256=record_sha)
    except files.UNREADABLE_NPZ as e:
        # Its checksum holds, so it was written so, by hand or by another tool: refused like any altered log,
        # not failed as an internal error retried every catch-up period.
        raise VersionError(f"catalogue delta {generation} of version {version}: {record['file']} is not a valid "
                           f"delta ({type(e).__name__}: {e}): the log was altered") from None


def _staged(directory: Path, content: bytes) -> Path:
    """A durable file of ``content`` under a unique temporary name in ``directory``."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)  # a full disk would else leave one empty file per try in the log's directory
        raise
    return Path(tmp)


def write_delta(model_dir: Path, version: int, delta: Delta, key: Ed25519PrivateKey | None = None) -> int:
    """Appends ``delta`` to ``version``'s log, its record signed by ``key`` if given; returns its generation."""
    delta.check_ids()  # as strictly as a new delta is made: a read one may hold what older writers let through
    directory = catalogue_dir(model_dir, version)
    make_dirs(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:  # durable before a record can name it
            np.savez(f, **delta.to_arrays())
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(Path(tmp))
        data = directory / f"{digest[:16]}.npz"
        os.replace(tmp, data)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    while True:
        numbered = _numbered(directory)
        if [g for g, _ in numbered] != list(range(1, len(numbered) + 1)):  # else it retries a taken one forever
            raise VersionError(f"catalogue deltas of version {version} in {directory} do not run 1..N without a "
                               f"gap: {[name for _, name in numbered][:10]}; no delta can follow them")
        generation = len(numbered) + 1
        record = {"model": Path(model_dir).name, "version": int(version), "generation": generation,
                  "file": data.name, "sha256": digest,
                  "previous_sha256": sha256_file(directory / numbered[-1][1]) if numbered else "",
                  "upserts": len(delta.ids), "deletes": len(delta.deleted),
                  "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        if key is not None:
            record["signature"] = signing.sign_bytes(_signed_part(record), key)
        staged = _staged(directory, json.dumps(record, sort_keys=True).encode())
        try:
            os.link(staged, directory / _RECORD.format(generation))  # fails if another writer took it
        except BaseException as e:
            staged.unlink(missing_ok=True)
            if isinstance(e, FileExistsError):
                continue
            raise
        break
    # Linked, the delta is published: replicas apply it. What fails after is not raised: a caller told that nothing
    # was written would write it again, as the next generation.
    with contextlib.suppress(OSError):  # else the record's temporary name stays, for a prune to remove
        staged.unlink()
    try:
        fsync_dir(directory)
    except OSError as e:
        log.warning("catalogue delta %d of version %d is written, but %s could not be synced (%s): it may not "
                    "survive a crash of this host", generation, version, directory, e.strerror or e)
    return generation

