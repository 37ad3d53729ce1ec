"""Candidate vectors from catalogue values, by a version's own candidate tower.

A version whose towers take catalogue features (``--tower features`` or
``--candidate-features``) publishes its candidate tower as a SavedModel
(``candidate_tower/``). ``recsys-catalogue`` embeds upserts given as
``"features"`` with it, so a new item gets the vector the model would have
given it had it been in the training catalogue with those values (its id is
unknown to the tower, so that part is the unknown-id row).

The vectors are computed here, once, by the writer of the delta, not by each
replica: the delta then holds vectors, every replica (and every restart's
replay) applies the same numbers, and the index service needs no TensorFlow.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from model_registry import Manifest, VersionError
from model_registry import manifest as files
from model_registry.ids import index_of
from model_registry.tower_inputs import CANDIDATE_ID, EMBEDDING, SIGNATURE

BATCH = 4096


class FeatureError(ValueError):
    """A candidate's values do not fit the tower's columns; the message names the column."""


class CandidateTower:
    """The loaded ``candidate_tower/`` of one version (see ``vectors``)."""

    def __init__(self, signature, numeric: frozenset[str], strings: frozenset[str],
                 published: tuple[np.ndarray, np.ndarray] | None):
        self._signature = signature
        self.numeric = numeric
        self.strings = strings
        self._published = published  # (sorted ids, their prior values) where the vectors carry a prior column

    @classmethod
    def load(cls, version_dir: Path, manifest: Manifest) -> "CandidateTower":
        """Verifies (against ``manifest``, not the file read again) and loads the version's candidate tower;
        VersionError if it has none."""
        version_dir = Path(version_dir)
        if not any(name.startswith(files.CANDIDATE_TOWER_DIR + "/") for name in manifest.files):
            raise VersionError(
                f"version {manifest.version} has no candidate tower: its towers take no catalogue features (train "
                "with --tower features or --candidate-features), so its upserts must give vectors")
        files.check_files(version_dir, manifest, reads=(files.CANDIDATE_TOWER_DIR,))
        import settings.tf_env  # noqa: F401  (before TensorFlow loads)
        import tensorflow as tf

        module = tf.saved_model.load(str(version_dir / files.CANDIDATE_TOWER_DIR))
        signature = module.signatures[SIGNATURE]
        specs = {name: spec for name, spec in signature.structured_input_signature[1].items() if name != CANDIDATE_ID}
        numeric = frozenset(name for name, spec in specs.items() if spec.dtype != tf.string)
        with_prior = bool(module.prior_columns.numpy())
        return cls(signature, numeric, frozenset(specs) - numeric,
                   _published_prior(version_dir, manifest) if with_prior else None)

    @property
    def columns(self) -> list[str]:
        return sorted(self.numeric | self.strings)

    def inputs(self, features: list[dict[str, Any]]) -> dict[str, np.ndarray]:
        """The tower's raw inputs for candidates described by ``features``: a column
        left out is missing (NaN for numbers, "" for text and categories); a list of
        categories is joined with ``|`` as the catalogue writes them."""
        out: dict[str, np.ndarray] = {}
        for row, values in enumerate(features):
            unknown = set(values) - self.numeric - self.strings
            if unknown:
                raise FeatureError(f"row {row + 1}: {sorted(unknown)} are not columns of this version's candidate "
                                   f"tower (it takes {self.columns})")
        for name in self.numeric:
            column = []
            for row, values in enumerate(features):
                value = values.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not math.isfinite(value)):
                    raise FeatureError(f"row {row + 1}: {name!r} must be a finite number or null, got {value!r}")
                column.append(math.nan if value is None else float(value))
            out[name] = np.array(column, dtype=np.float32)
        for name in self.strings:
            column = []
            for row, values in enumerate(features):
                value = values.get(name, "")
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    value = "|".join(value)
                if not isinstance(value, str):
                    raise FeatureError(f"row {row + 1}: {name!r} must be a string or a list of strings, "
                                       f"got {value!r}")
                column.append(value)
            out[name] = np.array(column, dtype=object)
        return out

    def vectors(self, ids: list[str], features: list[dict[str, Any]]) -> np.ndarray:
        """float32 [len(ids), D]: the vectors to index ``ids`` with. A candidate the
        version was published with keeps its published popularity-prior value
        (the prior counts training interactions, which a feature change does not
        alter); any other gets the prior of a candidate never interacted with."""
        inputs = self.inputs(features)
        id_array = np.array(ids, dtype=object)
        parts = []
        for start in range(0, len(ids), BATCH):
            batch = {name: values[start:start + BATCH] for name, values in inputs.items()}
            parts.append(self._signature(**{CANDIDATE_ID: id_array[start:start + BATCH], **batch})[EMBEDDING]
                         .numpy())
        vectors = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
        if self._published is not None and len(ids):
            published_ids, prior = self._published
            rows = index_of(published_ids, np.array(ids, dtype=str))
            vectors[rows >= 0, -1] = prior[rows[rows >= 0]]
        return vectors.astype(np.float32, copy=False)


def _published_prior(version_dir: Path, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """(sorted ids, prior column) of every candidate the version was published with."""
    ids, prior = [], []
    for data_dir in files.shard_dirs(version_dir, manifest):
        ids.append(np.load(data_dir / files.CANDIDATE_IDS_FILE, allow_pickle=False))
        prior.append(np.array(np.load(data_dir / files.CANDIDATE_EMBEDDINGS_FILE, mmap_mode="r",
                                      allow_pickle=False)[:, -1]))
    all_ids, all_prior = np.concatenate(ids), np.concatenate(prior)
    order = np.argsort(all_ids, kind="stable")
    return all_ids[order], all_prior[order]
