"""A catalogue upsert's vector far outside its version's scale is refused before anything is written: under
dot-product scoring it would outscore the version's candidates for every query (at 3e38 a component its scores
are inf) and top every result of the version; the index bounds query vectors, not catalogue ones."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_registry import Registry
from model_registry.deltas import Delta, published_generation, read_deltas
from model_registry.deltas import MAX_UPSERT_SCALE
from recsys_client.delta_rollout import publish_delta
from recsys_client.upserts import CatalogueError
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import Fleet
from tests.unit import tiny_versions as tiny


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    return registry


def _trained_max_norm() -> float:
    return float(np.linalg.norm(tiny.embeddings(1)[1], axis=1).max())


def test_an_upsert_far_outside_the_versions_scale_is_refused_in_process_and_nothing_is_written(registry):
    bound = MAX_UPSERT_SCALE * _trained_max_norm()
    absurd = Delta.make(["fine", "absurd"], [[0.5] * tiny.DIM, [3e38] * tiny.DIM], dim=tiny.DIM)
    with pytest.raises(CatalogueError) as refused:
        publish_delta(Fleet([], []), registry, 1, absurd)
    message = str(refused.value)
    assert "'absurd'" in message and "6e+38" in message and f"{bound:.3g}" in message, message
    assert published_generation(registry.model_dir, 1) == 0
    # Just over the bound is refused too; just under it, and a vector of the version's own scale, pass.
    direction = np.ones(tiny.DIM) / np.sqrt(tiny.DIM)
    with pytest.raises(CatalogueError, match="'long'"):
        publish_delta(Fleet([], []), registry, 1, Delta.make(["long"], [direction * bound * 1.01], dim=tiny.DIM))
    normal = Delta.make(["new1", "near-bound"], [tiny.embeddings(1)[1][0], direction * bound * 0.99], dim=tiny.DIM)
    assert publish_delta(Fleet([], []), registry, 1, normal).generation == 1
    assert read_deltas(registry.model_dir, 1)[0].ids.tolist() == ["new1", "near-bound"]


def test_recsys_catalogue_refuses_an_absurd_upsert_naming_it_and_writes_nothing(registry, tmp_path, capsys,
                                                                                monkeypatch):
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: Fleet([], [])))
    upserts = tmp_path / "up.jsonl"
    upserts.write_text(json.dumps({"id": "fine", "vector": [0.5] * tiny.DIM}) + "\n"
                       + json.dumps({"id": "absurd", "vector": [3e38] * tiny.DIM}) + "\n")
    command = ["--registry", str(tmp_path), "--model", tiny.MODEL, "--version", "1", "--upserts", str(upserts),
               "--delete", "i000", "--index-admin", "127.0.0.1:1"]
    with pytest.raises(SystemExit) as exit:
        catalogue_main(command)
    error = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and error.startswith("recsys-catalogue: upsert 'absurd'"), error
    assert f"{MAX_UPSERT_SCALE:g} times the largest norm of version 1's trained candidates" in error, error
    assert published_generation(registry.model_dir, 1) == 0
    upserts.write_text(json.dumps({"id": "fine", "vector": [0.5] * tiny.DIM}) + "\n")
    catalogue_main(command)
    assert json.loads(capsys.readouterr().out)["generation"] == 1
