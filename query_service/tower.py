"""One model version's query side: the query tower SavedModel, the customer
store it reads and the popularity fallback for customers the tower never saw.

The tower's inputs are filled by the version contract's rule
(``model_registry.tower_inputs``), the one the trainer evaluated with. A
stored customer's inputs are fixed for the life of a version unless the
request brings a history or the tower takes the time, so at load every stored
customer is embedded once (batched) and a request for one is a row lookup. The
tower runs per request only for what that table cannot answer.

Thread-safety: ``embed`` may be called from several threads at once (a loaded
concrete function is stateless); everything else is read-only after load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import tensorflow as tf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from model_registry import Manifest, VersionError
from model_registry import manifest as files
from model_registry.attributes import Attributes
from model_registry.customers import CustomerStore
from model_registry.deltas import Delta, replay
from model_registry.tower_inputs import EMBEDDING, KNOWN, SIGNATURE, TowerInputs, check_store, tower_inputs
from serving.filters import Filter
from serving.lifecycle.admin import LoadReport

log = logging.getLogger(__name__)

# Above this many stored customers the embedding table is not built (it takes
# 4 * dim bytes per customer: 256 MB at 1M x 64) and every request runs the tower.
MAX_PRECOMPUTED_CUSTOMERS = 5_000_000
PRECOMPUTE_BATCH = 8192
# Candidate ids are hashed this many at a time: the transient Python strings stay a few MB at any catalogue size.
ID_HASH_CHUNK = 65536


@dataclasses.dataclass(frozen=True)
class CatalogueState:
    """The catalogue deltas a loaded version has taken in (``generation``) and the candidates deleted by them."""

    generation: int = 0
    deleted: frozenset[str] = frozenset()


class QueryModel:
    """A loaded, verified, self-tested version's tower, customer store and fallback list."""

    def __init__(self, manifest: Manifest, signature, popular_ids: list[str], popular_scores: list[float],
                 customers: CustomerStore | None):
        self.manifest = manifest
        self.identity = manifest.digest  # in its results' cache keys
        self._signature = signature
        specs = signature.structured_input_signature[1]
        try:
            self.takes = TowerInputs.from_signature({name: (tuple(s.shape.as_list()), s.dtype.name)
                                                      for name, s in specs.items()})
            check_store(self.takes, customers)
            missing = [name for name in (EMBEDDING, KNOWN) if name not in signature.structured_outputs]
            if missing:
                raise ValueError(f"the query tower gives no {' or '.join(missing)} output "
                                 f"(its outputs: {sorted(signature.structured_outputs)})")
        except ValueError as e:
            raise VersionError(f"version {manifest.version}: {e}") from None
        self.popular_ids = popular_ids
        self.popular_scores = popular_scores
        self.customers = customers
        # Each input as the signature types it: the contract takes a feature of any float width.
        self._dtypes = {name: s.dtype for name, s in specs.items()}
        self.report = LoadReport(0.0, 0)
        self._table: np.ndarray | None = None  # float32 [C, D], rows of ``customers``
        self._table_known: np.ndarray | None = None
        # The version's attribute namespaces: a filter naming another is refused here, before any search.
        self.token_namespaces: frozenset[str] = frozenset()
        self.numeric_namespaces: frozenset[str] = frozenset()
        # Catalogue deltas taken in (model_registry.deltas): deleted candidates leave the fallback. The generation
        # and its deleted set are one snapshot, replaced whole: a delta is taken in on a worker thread while the
        # event loop reads them (changed in place, an answer named a generation it did not match).
        self.catalogue = CatalogueState()
        # The version's own candidate ids as sorted 64-bit hashes (8 MB at 1M candidates, where a set of the
        # ids would hold ~100 MB), only to tell a delta's new ids from held ones for the count; a collision
        # miscounts one delta id with odds of about candidates / 2**64.
        self._held = np.zeros(0, np.int64)
        self._added: set[str] = set()  # upserted ids the version did not hold, not deleted since
        self._deleted_held = 0  # how many of ``catalogue.deleted`` the version held
        self._num_candidates = manifest.num_candidates

    @property
    def version(self) -> int:
        return self.manifest.version

    @property
    def catalogue_generation(self) -> int:
        """The catalogue deltas taken in."""
        return self.catalogue.generation

    @property
    def num_candidates(self) -> int:
        """The candidates the version holds, its catalogue deltas included (as its index endpoints count them)."""
        return self._num_candidates

    @classmethod
    def load(cls, version_dir: Path, manifest: Manifest, delta_key: Ed25519PublicKey | None = None) -> "QueryModel":
        """Loads a verified version's tower, store and fallback; checks the tower
        embeds into finite vectors of the manifest's dimension; replays the
        version's catalogue deltas (with ``delta_key``, only a log its private key
        signed). Raises VersionError."""
        start = time.perf_counter()
        version_dir = Path(version_dir)
        try:
            signature = tf.saved_model.load(str(version_dir / files.QUERY_TOWER_DIR)).signatures[SIGNATURE]
        except (OSError, KeyError, ValueError) as e:
            raise VersionError(f"version {manifest.version}: query tower does not load: {e}") from e
        popular_ids, popular_scores = files.read_popular(version_dir, manifest.version)
        store_path = version_dir / files.CUSTOMER_STORE_FILE
        customers = CustomerStore.load(store_path) if store_path.exists() else None
        model = cls(manifest, signature, popular_ids, popular_scores, customers)
        model.token_namespaces, model.numeric_namespaces = Attributes.namespaces(
            files.attributes_file(version_dir, manifest))
        probe = str(customers.ids[0]) if customers is not None and len(customers.ids) else "__self_test__"
        try:
            vectors, _ = model.embed([probe])
        except (TypeError, ValueError, tf.errors.OpError) as e:  # a signature the contract's inputs do not fit
            raise VersionError(f"version {manifest.version}: the query tower's self-test call failed: "
                               f"{type(e).__name__}: {str(e)[:300]}") from e
        if vectors.shape != (1, manifest.embedding_dim) or not np.isfinite(vectors).all():
            raise VersionError(
                f"version {manifest.version}: tower self-test gave shape {vectors.shape} "
                f"(finite: {bool(np.isfinite(vectors).all())}); manifest says dim {manifest.embedding_dim}")
        model._precompute()
        if model._table is not None and not np.isfinite(model._table).all():
            raise VersionError(f"version {manifest.version}: the tower gives non-finite embeddings for some "
                               "stored customers")
        model._held = _candidate_hashes(version_dir, manifest)
        replay(version_dir.parent, manifest.version, model.apply_catalogue, delta_key)
        tower_bytes = sum(p.stat().st_size for p in (version_dir / files.QUERY_TOWER_DIR).rglob("*") if p.is_file())
        table_bytes = model._table.nbytes if model._table is not None else 0
        model.report = LoadReport(time.perf_counter() - start, tower_bytes + table_bytes + model._held.nbytes)
        log.info("loaded query tower version %d (dim %d) in %.2fs", manifest.version, manifest.embedding_dim,
                 model.report.load_seconds)
        return model

    def _precompute(self, max_customers: int = MAX_PRECOMPUTED_CUSTOMERS) -> None:
        """Embeds every stored customer once (see the module docstring)."""
        if self.customers is None or self.takes.request_time or not 0 < len(self.customers.ids) <= max_customers:
            return
        ids = self.customers.ids
        parts = [self._call_tower(ids[a:a + PRECOMPUTE_BATCH]) for a in range(0, len(ids), PRECOMPUTE_BATCH)]
        self._table = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
        self._table_known = np.concatenate([p[1] for p in parts])

    def embed(self, customer_ids: list[str],
              recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (embeddings float32 [B, dim], known bool [B]), from the table
        where it can answer and one tower call for the rest.

        ``recent[i]``, when non-empty, is customer i's latest items (most recent
        first) and replaces the stored history for a history-aware tower.
        """
        if self._table is None:
            return self._call_tower(customer_ids, recent)
        rows, live = self._rows_needing_tower(customer_ids, recent)
        vectors = self._table[np.maximum(rows, 0)]
        known = self._table_known[np.maximum(rows, 0)]
        if live.any():
            at = np.flatnonzero(live)
            vectors[at], known[at] = self._call_tower([customer_ids[i] for i in at],
                                                      [recent[i] for i in at] if recent is not None else None)
        return vectors, known

    def lookup(self, customer_ids: list[str],
               recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """``embed``'s answer from the precomputed table alone (no tower call), or None
        when any of these requests needs the tower."""
        if self._table is None:
            return None
        rows, live = self._rows_needing_tower(customer_ids, recent)
        if live.any():
            return None
        return self._table[rows], self._table_known[rows]

    def _rows_needing_tower(self, customer_ids: list[str],
                            recent: list[tuple[str, ...]] | None) -> tuple[np.ndarray, np.ndarray]:
        """(store rows, which requests the table cannot answer)."""
        rows = self.customers.rows(customer_ids)
        live = rows < 0
        if recent is not None and self.takes.history_length:
            live |= np.array([bool(r) for r in recent], dtype=bool)
        return rows, live

    def _call_tower(self, customer_ids, recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One call of the SavedModel signature with the contract's inputs."""
        inputs = tower_inputs(self.takes, self.customers, customer_ids, recent=recent, request_time=time.time())
        out = self._signature(**{name: tf.constant(value, dtype=self._dtypes[name]) for name, value in inputs.items()})
        return out[EMBEDDING].numpy(), out[KNOWN].numpy()

    def seen(self, customer_id: str) -> frozenset[str]:
        """The customer's training-time items; empty if the version stores none."""
        return self.customers.seen(customer_id) if self.customers is not None else frozenset()

    def check_filter(self, f: Filter) -> None:
        """Raises InvalidArgument if ``f`` names a namespace this version's candidates do not have."""
        f.check_namespaces(self.token_namespaces, self.numeric_namespaces)

    def apply_catalogue(self, deltas: list[Delta], generation: int) -> None:
        """Takes in the version's catalogue deltas up to ``generation`` (those
        after ``catalogue_generation``): a deleted candidate leaves the
        popularity fallback, an upsert brings it back. The new deleted set and
        generation replace ``catalogue`` in one assignment. The candidate count follows:
        an upserted id the version did not hold adds one, a deleted id it held
        (or added) takes one away. Only the deltas' own ids are looked at; the
        deleted set is copied only by deltas that change it (a delete, or an
        upsert of a deleted id), the copy the snapshot's readers need: upserts
        alone cost the same however many deletions came before them (a copy
        took ~37 ms at 100,000 deleted ids)."""
        deleted, added = self.catalogue.deleted, self._added
        for delta in deltas:
            upserted = delta.ids.tolist()
            removed = delta.deleted.tolist()
            if removed or not deleted.isdisjoint(upserted):
                deleted = set(deleted) if isinstance(deleted, frozenset) else deleted
            for candidate, held in zip(upserted, self._holds(upserted).tolist()):
                if candidate in deleted:
                    deleted.discard(candidate)
                    self._deleted_held -= held
                if not held:
                    added.add(candidate)
            for candidate, held in zip(removed, self._holds(removed).tolist()):
                added.discard(candidate)
                if candidate not in deleted:
                    deleted.add(candidate)
                    self._deleted_held += held
        self._num_candidates = self.manifest.num_candidates + len(added) - self._deleted_held
        self.catalogue = CatalogueState(generation, frozenset(deleted))  # the same object where nothing changed

    def _holds(self, ids: list[str]) -> np.ndarray:
        """Whether the version itself (before any delta) holds each of ``ids``."""
        if not len(self._held):
            return np.zeros(len(ids), bool)
        hashes = np.fromiter(map(hash, ids), np.int64, len(ids))
        return self._held[np.minimum(np.searchsorted(self._held, hashes), len(self._held) - 1)] == hashes

    def popular(self, k: int, excluded: frozenset[str], catalogue: CatalogueState | None = None
                ) -> tuple[list[str], list[float]]:
        """The version's k most popular candidates that are neither excluded nor deleted at ``catalogue`` (a
        snapshot the caller read its generation from; default: the current one)."""
        ids, scores = [], []
        deleted = (catalogue or self.catalogue).deleted
        for candidate, score in zip(self.popular_ids, self.popular_scores):
            if candidate not in excluded and candidate not in deleted:
                ids.append(candidate)
                scores.append(score)
                if len(ids) == k:
                    break
        return ids, scores


def _candidate_hashes(version_dir: Path, manifest: Manifest) -> np.ndarray:
    """The sorted hashes of the version's candidate ids (every shard's). The files are the index endpoints' to
    verify: here they only feed the count. Raises VersionError if unreadable or not the manifest's count."""
    parts = []
    for data_dir in files.shard_dirs(version_dir, manifest):
        path = data_dir / files.CANDIDATE_IDS_FILE
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise VersionError(f"version {manifest.version}: {path} is unreadable: {e}") from e
        parts.extend(np.fromiter(map(hash, ids[a:a + ID_HASH_CHUNK].tolist()), np.int64)
                     for a in range(0, len(ids), ID_HASH_CHUNK))
    hashes = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
    if len(hashes) != manifest.num_candidates:
        raise VersionError(f"version {manifest.version}: {len(hashes)} candidate ids but the manifest says "
                           f"{manifest.num_candidates}")
    return hashes


@tf.function
def _first_function() -> tf.Tensor:
    return tf.constant(0)


async def prime_threads(executor: Executor, threads: int) -> None:
    """Starts the ``threads`` threads of ``executor`` (a tower call's) now, each running a TensorFlow function.

    TensorFlow seeds a random generator for each thread from /dev/urandom the first time the thread runs a function,
    and aborts the process if that open fails. A thread pool starts its threads as calls come, so a replica that met
    a connection storm with every file descriptor taken died on a tower thread's first call; primed before the
    replica serves, the threads need no descriptor for it. The barrier keeps each call on a thread of its own."""
    barrier = threading.Barrier(threads)

    def prime() -> None:
        barrier.wait(timeout=60)
        _first_function()

    await asyncio.gather(*(asyncio.wrap_future(executor.submit(prime)) for _ in range(threads)))
