"""The manifest of one model version and its integrity check.

``manifest.json`` is written last into a version's staging directory, so a
version directory that has one is complete; its ``files`` map (path -> sha256)
lets a service refuse a corrupt or truncated copy before loading it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"  # optional: the publisher's Ed25519 signature of the manifest (signing.py)
FORMAT_VERSION = 1

# File names inside a version directory. The services read these names; the
# trainer writes them.
QUERY_TOWER_DIR = "query_tower"
CANDIDATE_IDS_FILE = "candidate_ids.npy"
CANDIDATE_EMBEDDINGS_FILE = "candidate_embeddings.npy"
SCANN_DIR = "scann"
POPULAR_FILE = "popular.npz"  # arrays "ids" (str) and "scores" (float32)
PROBE_QUERIES_FILE = "probe_queries.npy"
CUSTOMER_STORE_FILE = "customer_store.npz"  # model_registry.customers.CustomerStore
METRICS_FILE = "metrics.json"
ATTRIBUTES_FILE = "candidate_attributes.npz"  # optional: model_registry.attributes, what filters select on

# What each service reads, and so verifies before a load (``verify_version``'s
# ``reads``): a query replica never reads the candidates, which an index slot
# holding the version has verified before any promotion can route to it.
QUERY_READS = (QUERY_TOWER_DIR, POPULAR_FILE, CUSTOMER_STORE_FILE, ATTRIBUTES_FILE)
INDEX_READS = (CANDIDATE_IDS_FILE, CANDIDATE_EMBEDDINGS_FILE, SCANN_DIR, PROBE_QUERIES_FILE, POPULAR_FILE,
               ATTRIBUTES_FILE)


class VersionError(Exception):
    """A version directory is missing, incomplete, corrupt or inconsistent."""


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
        raw["index"] = IndexSpec(**raw["index"])
        return cls(**raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version_files(directory: Path) -> dict[str, Path]:
    """Every regular file under ``directory`` except the manifest and its signature, by relative name."""
    return {str(p.relative_to(directory)): p for p in sorted(directory.rglob("*"))
            if p.is_file() and p.relative_to(directory).as_posix() not in (MANIFEST_FILE, SIGNATURE_FILE)}


def checksum_tree(directory: Path) -> dict[str, str]:
    """sha256 of every regular file under ``directory`` except the manifest."""
    return {name: sha256_file(path) for name, path in _version_files(directory).items()}


def read_manifest(version_dir: Path) -> Manifest:
    path = Path(version_dir) / MANIFEST_FILE
    try:
        return Manifest.from_json(path.read_text())
    except FileNotFoundError:
        raise VersionError(f"{version_dir} has no {MANIFEST_FILE}: not a published version") from None
    except (ValueError, TypeError, KeyError) as e:
        raise VersionError(f"{path} is not a valid manifest: {e}") from e


def write_popular(version_dir: Path, ids: np.ndarray, scores: np.ndarray) -> None:
    """Writes the version's popularity list (ids most popular first, their float32 scores)."""
    np.savez(Path(version_dir) / POPULAR_FILE, ids=np.asarray(ids).astype(str), scores=np.asarray(scores, np.float32))


def read_popular(version_dir: Path, version: int) -> tuple[list[str], list[float]]:
    """The version's popularity list (ids, scores), most popular first. Raises VersionError if unreadable."""
    try:
        with np.load(Path(version_dir) / POPULAR_FILE, allow_pickle=False) as popular:
            return popular["ids"].tolist(), popular["scores"].astype(float).tolist()
    except (OSError, ValueError, KeyError) as e:
        raise VersionError(f"version {version}: {POPULAR_FILE} is unreadable: {e}") from e


def verify_version(version_dir: Path, reads: tuple[str, ...] | None = None) -> Manifest:
    """Reads the manifest, checks that exactly its files are present and that
    each has its sha256; with ``reads`` (top-level names, e.g. ``QUERY_READS``),
    only those files' sha256: the rest are checked by the services reading them.
    (Who published the manifest is ``signing.verify``'s question.)

    Raises VersionError naming the first file that is missing, extra or altered.
    """
    version_dir = Path(version_dir)
    manifest = read_manifest(version_dir)
    present = _version_files(version_dir)
    for name, expected in manifest.files.items():
        if name not in present:
            raise VersionError(f"version {manifest.version}: file {name} is missing from {version_dir}")
        if reads is not None and Path(name).parts[0] not in reads:
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
    return manifest
