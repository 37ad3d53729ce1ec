"""recsys-publish --rollback run right after another one, against in-memory admin stubs: the first made the version
it left the rollback target, so a second would roll forward; it is refused, naming the rollout that does that. A
rollback undoing a rollout of an older version (whose target is newer too) still runs."""

from __future__ import annotations

import pytest

from recsys_client.fleet import ROLLBACK_TARGET, SERVING, Fleet
from recsys_client.publish import publish_version, rollback
from recsys_client.publish import main as publish_main
from tests.unit.test_publish import cut_before_the_pointers, two_live


def test_a_second_rollback_in_a_row_is_refused_naming_the_rollout_that_rolls_forward(tmp_path, monkeypatch, capsys):
    registry, query, fleet = two_live(tmp_path)  # 2 live, 1 its rollback target
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: fleet))
    argv = ["--rollback", "--registry", str(tmp_path), "--model", "m", "--query-admin", "q:1"]
    publish_main(argv)
    assert capsys.readouterr().out.strip() == "live version 1"
    assert (registry.current_version(), registry.previous_version()) == (1, 2)
    with pytest.raises(SystemExit) as exit:
        publish_main(argv)
    err = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and "\n" not in err, err
    assert err.startswith("recsys-publish: the last run was a rollback from version 2 to 1: another would roll "
                          "forward to version 2; nothing changed"), err
    assert "run `recsys-publish --version 2` with the index slots" in err, err
    assert query.versions == {1: SERVING, 2: ROLLBACK_TARGET}
    assert (registry.current_version(), registry.previous_version()) == (1, 2)


def test_a_rollback_undoes_a_rollout_of_an_older_version_made_after_a_rollback(tmp_path):
    registry, query, fleet = two_live(tmp_path)  # 2 live, 1 its rollback target
    assert rollback(fleet, registry, refuse_forward=True) == 1
    publish_version(fleet, registry, 2)  # forward again, on purpose
    publish_version(fleet, registry, 1)  # and back to the older version by a rollout
    assert rollback(fleet, registry, refuse_forward=True) == 2  # its undo: no rollback ran last
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING}
    assert (registry.current_version(), registry.previous_version()) == (2, 1)


def test_a_rollback_undoes_the_roll_forward_it_refused_when_that_rollout_stopped_past_the_switch(tmp_path,
                                                                                                  monkeypatch):
    """The refusal above names `recsys-publish --version 2`; cut off after it switched the replicas, the pointers
    and the replicas look like a rollback to 2 cut off before its pointer move. A rollback then rolls the
    replicas back to 1, rather than report the rollout's switch as a rollback finished."""
    registry, query, fleet = two_live(tmp_path)  # 2 live, 1 its rollback target
    assert rollback(fleet, registry, refuse_forward=True) == 1
    cut_before_the_pointers(monkeypatch, registry)
    with pytest.raises(OSError):
        publish_version(fleet, registry, 2)
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING}
    assert rollback(fleet, registry, refuse_forward=True) == 1
    assert query.versions == {1: SERVING, 2: ROLLBACK_TARGET}
    assert (registry.current_version(), registry.previous_version()) == (1, 2)


@pytest.mark.parametrize("rerun_first", [True, False])
def test_a_rollback_record_outlived_by_a_finished_rollout_refuses_no_rollback(tmp_path, monkeypatch, rerun_first):
    """After a rollback 2 -> 1, a rollout of 2 cut off past its switch, and a rollout of 1 whose catch-up move of
    CURRENT to 2 was made before it was cut off: the rollback record "2 1" was left, so the rollback that undoes
    the rollout of 1 was refused as a second in a row (or, run at once, reported finished with nothing switched)."""
    registry, query, fleet = two_live(tmp_path)  # 2 live, 1 its rollback target
    assert rollback(fleet, registry, refuse_forward=True) == 1
    cut_before_the_pointers(monkeypatch, registry)
    with pytest.raises(OSError):
        publish_version(fleet, registry, 2)
    cut_before_the_pointers(monkeypatch, registry, move=2)
    with pytest.raises(OSError):
        publish_version(fleet, registry, 1)
    if rerun_first:
        publish_version(fleet, registry, 1)  # already live: it finishes the pointers
    assert rollback(fleet, registry, refuse_forward=True) == 2
    assert query.versions == {1: ROLLBACK_TARGET, 2: SERVING}
    assert (registry.current_version(), registry.previous_version()) == (2, 1)
