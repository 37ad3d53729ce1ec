"""A rollout away from a version with catalogue deltas says that they stay with it: an operator's deletes (a
recalled item) would otherwise come back with the next version without a word."""

from __future__ import annotations

import logging

from model_registry.deltas import Delta, write_delta
from recsys_client.publish import publish_version, rollback
from tests.unit.test_publish import two_live


def test_a_rollout_away_from_a_version_with_deltas_warns_that_they_do_not_carry_over(tmp_path, caplog):
    registry, _, fleet = two_live(tmp_path)  # 2 live
    write_delta(registry.model_dir, 2, Delta.make(deleted=["recalled"]))
    write_delta(registry.model_dir, 2, Delta.make(deleted=["gone"]))
    with caplog.at_level(logging.WARNING, logger="recsys-publish"):
        publish_version(fleet, registry, 3)
    assert registry.current_version() == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    expected = ("version 2 had 2 catalogue delta(s), which do not carry over to version 3: candidates they deleted "
                "are back")
    assert any(w.startswith(expected) and "`recsys-catalogue --version 3`" in w for w in warnings), warnings


def test_a_rollout_away_from_a_version_without_deltas_says_nothing_of_them(tmp_path, caplog):
    registry, _, fleet = two_live(tmp_path)
    write_delta(registry.model_dir, 3, Delta.make(deleted=["only-in-3"]))  # the new version's own: nothing left behind
    with caplog.at_level(logging.WARNING, logger="recsys-publish"):
        publish_version(fleet, registry, 3)
    assert registry.current_version() == 3
    assert not [r for r in caplog.records if "catalogue delta" in r.getMessage()]


def test_a_rollback_away_from_a_version_with_deltas_warns_too(tmp_path, caplog):
    registry, _, fleet = two_live(tmp_path)  # 2 live, 1 its rollback target
    write_delta(registry.model_dir, 2, Delta.make(deleted=["recalled"]))
    with caplog.at_level(logging.WARNING, logger="recsys-publish"):
        assert rollback(fleet, registry) == 1
    assert any(r.getMessage().startswith("version 2 had 1 catalogue delta(s), which do not carry over to version 1")
               for r in caplog.records), caplog.text
