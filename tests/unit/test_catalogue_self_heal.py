"""Replicas catch up by themselves with the catalogue deltas of the versions they hold: an index slot with the
registry's published deltas (once the run that wrote one has had its chance to apply it), a query replica with
the generation its index endpoints hold. Without it, a replica a ``recsys-catalogue`` run missed served deleted
candidates (fresh and cached) and a restarted query replica waited for a lagging slot, until someone ran
``recsys-catalogue --catch-up``. Real ScaNN and TensorFlow cores in process (tests/unit/tiny_versions.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np
import pytest

from index_service.core import Query
from model_registry import Registry
from model_registry.deltas import Delta, catalogue_dir, write_delta
from query_service.core.queries import SOURCE_POPULARITY
from query_service.index.routing import IndexRouter, RoutingConfig
from query_service.server import _lag_hint
from serving.lifecycle import admin as serving_admin
from serving.lifecycle.admin import CatalogueCatchUp
from serving.lifecycle.versions import State
from settings.flags import ConfigError
from tests.unit import tiny_versions as tiny
from tests.unit.test_cores import query_replica, slot

FAST = CatalogueCatchUp(period_s=0.05)


@pytest.fixture
def registry(tmp_path) -> Registry:
    registry = Registry(tmp_path, tiny.MODEL)
    tiny.publish(registry, 1)
    return registry


async def _until(predicate, what: str, timeout_s: float = 5.0) -> float:
    """Seconds until ``predicate()`` held (polled on the loop); fails after ``timeout_s``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"{what} within {timeout_s}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def _stop(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _fake_router(generations: dict[int, int]) -> IndexRouter:
    """A router whose one endpoint holds version 1 SERVING at ``generations`` (what its status stream would say:
    no network here)."""
    router = IndexRouter(RoutingConfig(addresses=("blue:1",)))
    [blue] = router.endpoints
    blue.watch = lambda on_change: asyncio.Event().wait()
    blue.versions, blue.generations = {1: State.SERVING}, generations
    return router


async def test_an_index_slot_a_run_missed_applies_the_published_delta_by_itself(registry):
    core, admin = slot(registry, "blue", 1)
    vector = tiny.embeddings(1)[0][3].tolist()
    top = (await core.search([Query(vector, 5)], 1))[1][0].ids[0]
    write_delta(registry.model_dir, 1, Delta.make(deleted=[top], dim=tiny.DIM))  # no ApplyCatalogue follows
    task = admin.follow_catalogue(FAST, grace_s=0.0)
    healed_s = await _until(lambda: admin.manager.get(1)[1].catalogue_generation == 1, "the slot to catch up")
    answer, (result,) = await core.search([Query(vector, 5)], 1)
    assert answer.generation == 1 and top not in result.ids
    print(f"index slot healed in {healed_s:.3f}s at a period of {FAST.period_s}s")
    await _stop(task)


async def test_a_delta_younger_than_the_grace_is_left_to_its_writer_then_applied(registry):
    _, admin = slot(registry, "blue", 1)
    write_delta(registry.model_dir, 1, Delta.make(deleted=["i001"], dim=tiny.DIM))
    task = admin.follow_catalogue(FAST, grace_s=30.0)
    await asyncio.sleep(0.3)  # six looks
    assert admin.manager.get(1)[1].catalogue_generation == 0
    record = catalogue_dir(registry.model_dir, 1) / "00000001.json"
    os.utime(record, (time.time() - 60, time.time() - 60))  # the run that wrote it died a minute ago
    await _until(lambda: admin.manager.get(1)[1].catalogue_generation == 1, "the slot to catch up")
    await _stop(task)


async def test_a_delta_whose_mtime_is_in_the_future_is_applied_once_the_grace_has_passed_here(registry):
    _, admin = slot(registry, "blue", 1)
    write_delta(registry.model_dir, 1, Delta.make(deleted=["i001"], dim=tiny.DIM))
    record = catalogue_dir(registry.model_dir, 1) / "00000001.json"
    os.utime(record, (time.time() + 3600, time.time() + 3600))  # written by a host whose clock is an hour ahead
    task = admin.follow_catalogue(FAST, grace_s=0.5)
    await asyncio.sleep(0.2)
    assert admin.manager.get(1)[1].catalogue_generation == 0  # the writer's grace still holds
    await _until(lambda: admin.manager.get(1)[1].catalogue_generation == 1, "the slot to catch up")
    await _stop(task)


async def test_a_registry_that_cannot_be_read_is_logged_once_not_every_period(registry, caplog, monkeypatch):
    _, admin = slot(registry, "blue", 1)
    looks = []

    def unreadable(*args):
        looks.append(args)
        raise NotADirectoryError(20, "Not a directory")  # a network volume gone, a folder replaced by a file

    monkeypatch.setattr(serving_admin, "record_stat", unreadable)
    with caplog.at_level(logging.WARNING, logger="serving.lifecycle.admin"):
        task = admin.follow_catalogue(FAST, grace_s=0.0)
        await _until(lambda: len(looks) >= 5, "five looks")
        await _stop(task)
    lines = [r for r in caplog.records if "could not catch up" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "NotADirectoryError" in lines[0].getMessage()


async def test_a_refused_delta_is_logged_once_and_not_read_again_every_period(registry, caplog):
    _, admin = slot(registry, "blue", 1)
    # A delta of the wrong dimension: the index refuses it, as it would one that fails its checks.
    write_delta(registry.model_dir, 1, Delta.make(["new"], np.ones((1, tiny.DIM + 1), np.float32)))
    reads = []
    apply = admin.apply_catalogue

    async def counted(version, generation):
        reads.append(generation)
        return await apply(version, generation)

    admin.apply_catalogue = counted
    with caplog.at_level(logging.WARNING, "serving.lifecycle.admin"):
        task = admin.follow_catalogue(FAST, grace_s=0.0)
        await asyncio.sleep(0.4)
        await _stop(task)
    assert admin.manager.get(1)[1].catalogue_generation == 0 and reads == [0]
    [line] = [r.getMessage() for r in caplog.records if "by itself" in r.getMessage()]
    assert "version 1 did not catch up" in line and "vectors of shape (1, 5)" in line


async def test_a_query_replica_follows_its_index_endpoints_at_once_and_never_passes_them(registry):
    # The version's most popular candidate is deleted by a delta the query replica was never sent.
    router = _fake_router({})
    router.start()
    recommender, admin = query_replica(registry, router, live=1)
    tower = admin.manager.get(1)[1]
    deleted = tower.popular_ids[0]
    write_delta(registry.model_dir, 1, Delta.make(deleted=[deleted], dim=tiny.DIM))
    task = admin.follow_catalogue(CatalogueCatchUp(period_s=60.0))  # only the endpoint's move can wake it
    await asyncio.sleep(0.2)
    # Published, but the index is at 0: a tower at 1 could route no search (endpoints must be at its generation).
    assert tower.catalogue_generation == 0
    before = await recommender.recommend("nobody", 5)
    assert (before.source, before.generation) == (SOURCE_POPULARITY, 0) and deleted in before.ids

    router.endpoints[0].generations = {1: 1}  # the slot applied the delta (ApplyCatalogue, or by itself)
    router._on_change()
    healed_s = await _until(lambda: tower.catalogue_generation == 1, "the query replica to follow its index")
    after = await recommender.recommend("nobody", 5)
    assert (after.source, after.generation, after.cache_hit) == (SOURCE_POPULARITY, 1, False)
    assert deleted not in after.ids
    print(f"query replica healed {healed_s:.3f}s after its index endpoint's status changed")
    await _stop(task)
    await recommender.close()
    await router.close()


async def test_the_wait_for_a_lagging_endpoint_names_the_catch_up(registry):
    router = _fake_router({1: 19})
    assert "`recsys-catalogue --catch-up`" in _lag_hint(router, 1) and "generation 19" in _lag_hint(router, 1)
    assert _lag_hint(router, 2) == ""  # no endpoint holds it at all: a load is missing, not a delta
    await router.close()


@pytest.mark.parametrize("period_s", [0.001, -1.0, float("inf")])
def test_a_catch_up_period_that_would_spin_or_never_run_is_refused(period_s):
    with pytest.raises(ConfigError, match="must be 0 .no catch-up of its own. or from 0.05 s"):
        CatalogueCatchUp(period_s=period_s)
    assert CatalogueCatchUp(period_s=0).period_s == 0 and CatalogueCatchUp(period_s=0.05).period_s == 0.05
