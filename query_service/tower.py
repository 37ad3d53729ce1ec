"""One model version's query side: the query tower SavedModel and the popularity
fallback for customers the tower has never seen.

A stored customer's tower inputs (id, stored history, stored features) are fixed
for the life of a version, so so is its embedding: at load, every stored
customer is embedded once (batched), and a request for one is a row lookup.
The tower runs per request only for what a table cannot hold: customers not in
the store, requests carrying ``recent_candidate_ids``, and towers that take the
request time. A request costs a few microseconds instead of a ~0.3 ms tower call.

Thread-safety: ``embed`` may be called from several threads at once (a loaded
concrete function is stateless); everything else is read-only after load.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from model_registry import Manifest, VersionError, verify_version
from model_registry import manifest as files
from query_service.customers import CustomerStore

log = logging.getLogger(__name__)

REQUEST_TIME = files.REQUEST_TIME_INPUT  # filled with the serving time; the tower clips it
# Above this many stored customers the embedding table is not built (it takes
# 4 * dim bytes per customer: 256 MB at 1M x 64) and every request runs the tower.
MAX_PRECOMPUTED_CUSTOMERS = 5_000_000
PRECOMPUTE_BATCH = 8192


class QueryModel:
    """A loaded, verified, self-tested version's tower and fallback list."""

    self_test_recall = 0.0  # the admin plane's field; recall is the index's self-test

    def __init__(self, manifest: Manifest, signature, popular_ids: list[str], popular_scores: list[float],
                 customers: CustomerStore | None, memory_bytes: int):
        self.manifest = manifest
        self._signature = signature
        self._inputs: dict[str, tf.TensorSpec] = signature.structured_input_signature[1]
        self.popular_ids = popular_ids
        self.popular_scores = popular_scores
        self.customers = customers
        self.memory_bytes = memory_bytes
        self.load_seconds = 0.0
        self._check_inputs()
        self._table: np.ndarray | None = None  # float32 [C, D], rows of ``customers``
        self._table_known: np.ndarray | None = None

    def precompute(self, max_customers: int = MAX_PRECOMPUTED_CUSTOMERS) -> None:
        """Embeds every stored customer once (see the module docstring)."""
        if (self.customers is None or REQUEST_TIME in self._inputs
                or not 0 < len(self.customers.ids) <= max_customers):
            return
        ids = self.customers.ids.tolist()
        parts = [self._call_tower(ids[a:a + PRECOMPUTE_BATCH]) for a in range(0, len(ids), PRECOMPUTE_BATCH)]
        self._table = np.concatenate([p[0] for p in parts]).astype(np.float32, copy=False)
        self._table_known = np.concatenate([p[1] for p in parts])
        self.memory_bytes += self._table.nbytes

    def _check_inputs(self) -> None:
        """Every signature input must be one this class can fill."""
        if "customer_id" not in self._inputs:
            raise VersionError(f"version {self.version}: the query tower takes no customer_id input")
        for name in self._inputs:
            if name in ("customer_id", "history", REQUEST_TIME):
                continue
            if self.customers is None or name not in self.customers.features:
                raise VersionError(f"version {self.version}: the query tower needs feature {name!r}, which "
                                   f"{files.CUSTOMER_STORE_FILE} does not hold")
        if "history" in self._inputs and self.customers is None:
            raise VersionError(f"version {self.version}: the query tower takes a history but the version has "
                               f"no {files.CUSTOMER_STORE_FILE}")

    @property
    def takes_history(self) -> bool:
        return "history" in self._inputs

    @property
    def version(self) -> int:
        return self.manifest.version

    @classmethod
    def load(cls, version_dir: Path, model: str) -> "QueryModel":
        """Verifies checksums, loads the tower and checks it embeds a probe id
        into finite vectors of the manifest's dimension. Raises VersionError."""
        start = time.perf_counter()
        version_dir = Path(version_dir)
        manifest = verify_version(version_dir)
        if manifest.model != model:
            raise VersionError(f"{version_dir} holds model {manifest.model!r}, not {model!r}")
        try:
            signature = tf.saved_model.load(str(version_dir / files.QUERY_TOWER_DIR)).signatures["serving_default"]
        except (OSError, KeyError, ValueError) as e:
            raise VersionError(f"version {manifest.version}: query tower does not load: {e}") from e
        try:
            with np.load(version_dir / files.POPULAR_FILE, allow_pickle=False) as popular:
                popular_ids, popular_scores = popular["ids"].tolist(), popular["scores"].astype(float).tolist()
        except (OSError, ValueError, KeyError) as e:
            raise VersionError(f"version {manifest.version}: {files.POPULAR_FILE} is unreadable: {e}") from e
        store_path = version_dir / files.CUSTOMER_STORE_FILE
        customers = CustomerStore.load(store_path) if store_path.exists() else None
        tower_bytes = sum(p.stat().st_size for p in (version_dir / files.QUERY_TOWER_DIR).rglob("*") if p.is_file())
        query_model = cls(manifest, signature, popular_ids, popular_scores, customers, tower_bytes)
        vectors, _ = query_model.embed(["__self_test__"])
        if vectors.shape != (1, manifest.embedding_dim) or not np.isfinite(vectors).all():
            raise VersionError(
                f"version {manifest.version}: tower self-test gave shape {vectors.shape} "
                f"(finite: {bool(np.isfinite(vectors).all())}); manifest says dim {manifest.embedding_dim}"
            )
        query_model.precompute()
        if query_model._table is not None and not np.isfinite(query_model._table).all():
            raise VersionError(f"version {manifest.version}: the tower gives non-finite embeddings for "
                               f"some stored customers")
        query_model.load_seconds = time.perf_counter() - start
        log.info("loaded %s query tower version %d (dim %d) in %.2fs",
                 model, manifest.version, manifest.embedding_dim, query_model.load_seconds)
        return query_model

    def embed(self, customer_ids: list[str],
              recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Returns (embeddings float32 [B, dim], known bool [B]) in one tower call.

        ``recent[i]``, when non-empty, is customer i's latest items (most recent
        first) and replaces the stored history for a history-aware tower.
        """
        if self._table is None:
            return self._call_tower(customer_ids, recent)
        rows, live = self._live(customer_ids, recent)
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
        rows, live = self._live(customer_ids, recent)
        if live.any():
            return None
        return self._table[rows], self._table_known[rows]

    def _live(self, customer_ids: list[str], recent: list[tuple[str, ...]] | None) -> tuple[np.ndarray, np.ndarray]:
        """(store rows, which requests the table cannot answer)."""
        rows = self.customers.rows(customer_ids)
        live = rows < 0
        if recent is not None and self.takes_history:
            live |= np.array([bool(r) for r in recent], dtype=bool)
        return rows, live

    def _call_tower(self, customer_ids: list[str],
                    recent: list[tuple[str, ...]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One call of the SavedModel signature, its inputs filled as ``embed`` documents."""
        inputs = {"customer_id": tf.constant(customer_ids, dtype=tf.string)}
        if len(self._inputs) > 1:
            rows = self.customers.rows(customer_ids)
            if self.takes_history:
                inputs["history"] = tf.constant(self._histories(rows, recent or [()] * len(customer_ids)))
            if REQUEST_TIME in self._inputs:
                inputs[REQUEST_TIME] = tf.constant(np.full(len(customer_ids), time.time()), dtype=tf.float64)
            for name, spec in self._inputs.items():
                if name not in inputs:
                    inputs[name] = tf.constant(self.customers.feature(name, rows), dtype=spec.dtype)
        out = self._signature(**inputs)
        return out["embedding"].numpy(), out["known"].numpy()

    def _histories(self, rows: np.ndarray, recent: list[tuple[str, ...]]) -> np.ndarray:
        length = self.customers.history_length
        # object dtype: a fixed-width unicode array would truncate longer request ids
        histories = np.where(rows[:, None] >= 0, self.customers.history[np.maximum(rows, 0)], "").astype(object)
        for i, items in enumerate(recent):
            if items:
                histories[i] = (list(items[:length]) + [""] * length)[:length]
        return histories

    def seen(self, customer_id: str) -> frozenset[str]:
        """The customer's training-time items; empty if the version stores none."""
        return self.customers.seen(customer_id) if self.customers is not None else frozenset()

    def popular(self, k: int, excluded: frozenset[str]) -> tuple[list[str], list[float]]:
        """The version's k most popular candidates that are not excluded."""
        ids, scores = [], []
        for candidate, score in zip(self.popular_ids, self.popular_scores):
            if candidate not in excluded:
                ids.append(candidate)
                scores.append(score)
                if len(ids) == k:
                    break
        return ids, scores
