"""The manifest of one model version and its integrity check.

``manifest.json`` is written last into a version's staging directory, so a
version directory that has one is complete; its ``files`` map (path -> sha256)
lets a service refuse a corrupt or truncated copy before loading it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import lzma
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # optional: the publisher's Ed25519 signature of the manifest (signing.py)
FORMAT_VERSION = 1

# File names inside a version directory. The services read these names; the
# trainer writes them.
QUERY_TOWER_DIR = "query_tower"
# Optional: the candidate tower, for towers that take catalogue features, so a
# catalogue upsert can give features instead of a vector (recsys_client.candidate_tower).
CANDIDATE_TOWER_DIR = "candidate_tower"
CANDIDATE_IDS_FILE = "candidate_ids.npy"
CANDIDATE_EMBEDDINGS_FILE = "candidate_embeddings.npy"
SCANN_DIR = "scann"
POPULAR_FILE = "popular.npz"  # arrays "ids" (str) and "scores" (float32)
PROBE_QUERIES_FILE = "probe_queries.npy"
CUSTOMER_STORE_FILE = "customer_store.npz"  # model_registry.customers.CustomerStore
METRICS_FILE = "metrics.json"
ATTRIBUTES_FILE = "candidate_attributes.npz"  # optional: model_registry.attributes, what filters select on
# A sharded version keeps each shard's candidate files (ids, embeddings, ScaNN
# searcher, attributes) under shards/<shard>/, named as an unsharded version's.
SHARDS_DIR = "shards"

# What each service reads, and so verifies before a load (``verify_version``'s
# ``reads``): a query replica never reads the candidates, which an index slot
# holding the version has verified before any promotion can route to it.
QUERY_READS = (QUERY_TOWER_DIR, POPULAR_FILE, CUSTOMER_STORE_FILE, ATTRIBUTES_FILE,
               f"{SHARDS_DIR}/0/{ATTRIBUTES_FILE}")
INDEX_READS = (CANDIDATE_IDS_FILE, CANDIDATE_EMBEDDINGS_FILE, SCANN_DIR, PROBE_QUERIES_FILE, POPULAR_FILE,
               ATTRIBUTES_FILE)


def is_version(text: str) -> bool:
    """Whether ``text`` names a version number: ASCII digits (``str.isdigit`` takes "²", which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def index_reads(shard: int | None = None) -> tuple[str, ...]:
    """What an index endpoint serving ``shard`` of a version (None: a whole,
    unsharded version) reads: its own shard's files, not the other shards'."""
    return INDEX_READS if shard is None else INDEX_READS + (f"{SHARDS_DIR}/{shard}",)


def shard_dir(version_dir: Path, shard: int | None) -> Path:
    """Where ``shard``'s candidate files are (the version directory itself when unsharded)."""
    return Path(version_dir) if shard is None else Path(version_dir) / SHARDS_DIR / str(shard)


def shard_dirs(version_dir: Path, manifest: "Manifest") -> list[Path]:
    """Every shard's candidate folder, in shard order (the version directory alone when unsharded)."""
    return [shard_dir(version_dir, shard) for shard in (range(len(manifest.shards)) if manifest.shards else (None,))]


def attributes_file(version_dir: Path, manifest: "Manifest") -> Path:
    """The file naming the version's attribute namespaces (every shard's holds the same ones)."""
    return shard_dir(version_dir, 0 if manifest.shards else None) / ATTRIBUTES_FILE


def shard_of(ids, shards: int) -> np.ndarray:
    """The shard of each candidate id: CRC-32 of its UTF-8 bytes mod ``shards``.

    A function of the id alone, so the publisher, every index endpoint and a
    catalogue delta written long after the version agree on where an id lives
    without a table; CRC-32 is stable across processes (Python's ``hash`` is salted).
    """
    return np.fromiter((zlib.crc32(str(i).encode()) % shards for i in ids), dtype=np.int64, count=len(ids))


class VersionError(Exception):
    """A version directory is missing, incomplete, corrupt or inconsistent."""


# What numpy and zipfile raise for an npz that is not one numpy wrote: an empty file EOFError, a cut or garbled zip
# BadZipFile (neither an OSError nor a ValueError), a garbled entry's flags RuntimeError (encrypted; an unknown
# compression or zip version is its NotImplementedError) or the named decompressor's error (zlib.error, LZMAError;
# bz2's is an OSError), a missing array KeyError, an object array ValueError.
UNREADABLE_NPZ = (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error,
                  lzma.LZMAError)


@dataclasses.dataclass(frozen=True)
class IndexSpec:
    """How the ScaNN searcher of a version was built and how well it does.

    ``recall_at_10`` is measured against exact dot-product search on held-out
    query vectors at publish time, never assumed.
    """

    kind: str  # "brute_force" or "tree_ah"
    num_leaves: int = 0
    num_leaves_to_search: int = 0
    reorder: int = 0
    recall_at_10: float = 1.0
    probe_queries: int = 0


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One shard of a sharded version: its candidates (``shard_of`` == its number) and their searcher."""

    num_candidates: int
    index: IndexSpec


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything a service must know about a version before loading it."""

    model: str
    version: int
    embedding_dim: int
    num_candidates: int
    tower: str
    dataset: str
    created_at: str
    index: IndexSpec
    files: dict[str, str]
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    # Empty: one searcher over every candidate. Otherwise shard s's candidates and
    # searcher, in shards/<s>/; ``index`` then describes the merged search
    # (kind "sharded", recall@10 of the shards' merged top-10 vs exact search over all).
    shards: tuple[ShardSpec, ...] = ()

    def shard(self, shard: int | None) -> "Manifest":
        """The manifest as an endpoint serving ``shard`` sees it: that shard's
        candidate count and searcher (itself for None). Raises VersionError if
        the version is not sharded so, naming what the operator must change."""
        if shard is None:
            if self.shards:
                raise VersionError(f"version {self.version} is split into {len(self.shards)} shards: serve it from "
                                   f"index endpoints started with --shard 0..{len(self.shards) - 1}")
            return self
        if not 0 <= shard < len(self.shards):
            raise VersionError(f"version {self.version} has {len(self.shards) or 'no'} shards; this endpoint serves "
                               f"shard {shard}: load it into endpoints of the version's own shard count")
        spec = self.shards[shard]
        return dataclasses.replace(self, num_candidates=spec.num_candidates, index=spec.index, shards=())

    @functools.cached_property
    def digest(self) -> str:
        """A short digest of the whole manifest (its files' checksums, the time it was written): tells this version
        from another published under its number, by another registry or after this one was deleted. Result
        caches shared by registries key by it, so that neither reads the other's results."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        raw = json.loads(text)
        if raw.get("format_version") != FORMAT_VERSION:
            raise VersionError(
                f"manifest format_version {raw.get('format_version')!r} is not "
                f"{FORMAT_VERSION}; this build cannot read it"
            )
        unknown = _unknown(cls, raw, "") + _unknown(IndexSpec, raw["index"], "index.") + [
            name for s in raw.get("shards", ())
            for name in _unknown(ShardSpec, s, "shards[].") + _unknown(IndexSpec, s["index"], "shards[].index.")]
        if unknown:  # else refused as an unexpected keyword argument of a constructor, which names no cause
            raise VersionError(f"manifest {'field' if len(unknown) == 1 else 'fields'} {', '.join(unknown)} unknown "
                               f"to this build (format_version {FORMAT_VERSION}): written by a later release? Load "
                               "the version with that release's services, or upgrade these")
        raw["index"] = IndexSpec(**raw["index"])
        raw["shards"] = tuple(ShardSpec(s["num_candidates"], IndexSpec(**s["index"])) for s in raw.get("shards", ()))
        return cls(**raw)


def _unknown(cls: type, fields: dict[str, Any], prefix: str) -> list[str]:
    """The names in ``fields`` that are no field of dataclass ``cls`` (a later release's, added without a new
    format_version), each after ``prefix``."""
    return [prefix + name for name in sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_files(directory: Path) -> dict[str, Path]:
    """Every regular file under ``directory`` except the manifest and its signature, by relative name. Raises
    VersionError for a symbolic link: a version's files are its own (one pointing out of the registry passed every
    check, its target then changed where the registry's permissions do not reach)."""
    entries = sorted(directory.rglob("*"))
    links = [str(p.relative_to(directory)) for p in entries if p.is_symlink()]
    if links:
        raise VersionError(f"{directory} holds symbolic links ({', '.join(links[:3])}): a version's files are "
                           "regular files of its own folder; republish it")
    return {str(p.relative_to(directory)): p for p in entries
            if p.is_file() and p.relative_to(directory).as_posix() not in (MANIFEST_FILE, SIGNATURE_FILE)}


def checksum_tree(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under ``directory`` except the manifest."""
    return {name: sha256_file(path) for name, path in _version_files(directory).items()}


def read_manifest(version_dir: Path, data: bytes | None = None) -> Manifest:
    """The manifest of ``version_dir``, parsed from ``data`` where given (its bytes as read already), else read."""
    path = Path(version_dir) / MANIFEST_FILE
    try:
        return Manifest.from_json(path.read_bytes() if data is None else data)
    except FileNotFoundError:
        raise VersionError(f"{version_dir} has no {MANIFEST_FILE}: not a published version") from None
    except (ValueError, TypeError, KeyError, VersionError) as e:
        raise VersionError(f"{path} is not a valid manifest: {e}") from e


def write_popular(version_dir: Path, ids: np.ndarray, scores: np.ndarray) -> None:
    """Writes the version's popularity list (ids most popular first, their float32 scores)."""
    np.savez(Path(version_dir) / POPULAR_FILE, ids=np.asarray(ids).astype(str), scores=np.asarray(scores, np.float32))


def read_popular(version_dir: Path, version: int) -> tuple[list[str], list[float]]:
    """The version's popularity list (ids, scores), most popular first. Raises VersionError if unreadable."""
    try:
        with np.load(Path(version_dir) / POPULAR_FILE, allow_pickle=False) as popular:
            return popular["ids"].tolist(), popular["scores"].astype(float).tolist()
    except UNREADABLE_NPZ as e:
        raise VersionError(f"version {version}: {POPULAR_FILE} is unreadable: {e}") from e


def verify_version(version_dir: Path, reads: tuple[str, ...] | None = None,
                   manifest_bytes: bytes | None = None) -> Manifest:
    """Reads the manifest, checks that exactly its files are present and that
    each has its sha256; with ``reads`` (files or folders, e.g. ``QUERY_READS``),
    only the sha256 of the files in them: the rest are checked by the services reading them.
    (Who published the manifest is ``signing.verify``'s question: give the bytes it verified as
    ``manifest_bytes``, and those are what is parsed, not the file read again, which may have been swapped since.)

    Raises VersionError naming the first file that is missing, extra or altered.
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir, manifest_bytes)
    check_files(version_dir, manifest, reads)
    return manifest


def check_files(version_dir: Path, manifest: Manifest, reads: tuple[str, ...] | None = None) -> None:
    """``verify_version``'s checks of the files against ``manifest``, one already read (and its signature checked)."""
    present = _version_files(version_dir)
    for name, expected in manifest.files.items():
        if name not in present:
            raise VersionError(f"version {manifest.version}: file {name} is missing from {version_dir}")
        if reads is not None and not any(name == r or name.startswith(r + "/") for r in reads):
            continue
        actual = sha256_file(present[name])
        if actual != expected:
            raise VersionError(
                f"version {manifest.version}: {name} fails its sha256 check "
                f"(manifest {expected[:12]}..., file {actual[:12]}...); republish the version"
            )
    extra = sorted(set(present) - set(manifest.files))
    if extra:
        raise VersionError(f"version {manifest.version}: files not in the manifest: {extra[:5]}")
