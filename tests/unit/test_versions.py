import pytest

from serving.errors import FailedPrecondition, Unavailable
from serving.versions import VersionSet


def test_empty_set_is_unavailable():
    with pytest.raises(Unavailable, match="no version of model m"):
        VersionSet("m").get()


def test_first_added_becomes_live_and_pinning_by_number():
    versions = VersionSet("m")
    versions.add(1, "one")
    versions.add(2, "two")
    assert versions.get() == (1, "one")
    assert versions.get(2) == (2, "two")
    versions.promote(2)
    assert versions.get() == (2, "two")
    assert versions.loaded_versions() == [1, 2]


def test_unknown_version_is_failed_precondition_naming_what_is_loaded():
    versions = VersionSet("m")
    versions.add(3, "three")
    with pytest.raises(FailedPrecondition, match=r"version 9 is not loaded here \(loaded: \[3\]\)"):
        versions.get(9)
    with pytest.raises(FailedPrecondition):
        versions.promote(9)


def test_live_version_cannot_be_removed():
    versions = VersionSet("m")
    versions.add(1, "one")
    versions.add(2, "two", make_live=True)
    with pytest.raises(FailedPrecondition, match="is live"):
        versions.remove(2)
    assert versions.remove(1) == "one"
    assert versions.loaded_versions() == [2]
