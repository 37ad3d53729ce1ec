import pytest

from serving.errors import FailedPrecondition, Unavailable
from serving.versions import State, VersionManager


def test_empty_manager_is_unavailable():
    with pytest.raises(Unavailable, match="no version of model m"):
        VersionManager("m").get()


def test_first_added_becomes_live_and_pinning_by_number():
    versions = VersionManager("m")
    versions.add(1, "one")
    versions.add(2, "two")
    assert versions.get() == (1, "one")
    assert versions.get(2) == (2, "two")
    versions.promote(2)
    assert versions.get() == (2, "two")
    assert versions.loaded_versions() == [1, 2]


def test_promotion_keeps_the_previous_live_version_as_rollback_target():
    versions = VersionManager("m")
    for v in (1, 2, 3):
        versions.add(v, str(v))
    versions.promote(2)
    assert versions.rollback_target == 1
    assert {v: s for v, (s, _) in versions.states().items()} == {
        1: State.ROLLBACK_TARGET, 2: State.SERVING, 3: State.READY}
    versions.promote(1)  # a rollback: the switch goes both ways
    assert (versions.live_version, versions.rollback_target) == (1, 2)


def test_unknown_version_is_failed_precondition_naming_what_is_loaded():
    versions = VersionManager("m")
    versions.add(3, "three")
    with pytest.raises(FailedPrecondition, match=r"version 9 is not loaded here \(loaded: \[3\]\)"):
        versions.get(9)
    with pytest.raises(FailedPrecondition):
        versions.promote(9)


def test_live_version_is_removed_only_when_allowed():
    versions = VersionManager("m")
    versions.add(1, "one")
    versions.add(2, "two", make_live=True)
    with pytest.raises(FailedPrecondition, match="is live"):
        versions.remove(2)
    assert versions.remove(1) == "one" and versions.rollback_target is None
    assert versions.loaded_versions() == [2]
    assert versions.remove(2, allow_live=True) == "two"  # an index slot replacing what it holds
    assert versions.live_version is None
    with pytest.raises(Unavailable):
        versions.get()


def test_listeners_hear_every_change():
    versions = VersionManager("m")
    heard = []
    versions.listen(lambda: heard.append(dict(versions.states())))
    assert versions.begin_loading(1)
    assert not versions.begin_loading(1)  # already loading: no change
    versions.add(1, "one")
    versions.remove(1, allow_live=True)
    assert [{v: s for v, (s, _) in h.items()} for h in heard] == [{1: State.LOADING}, {1: State.SERVING}, {}]
