"""Registry publish/verify round trip (no TensorFlow)."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from typing import Callable

import numpy as np
import pytest

from model_registry import IndexSpec, Manifest, Registry, VersionError, verify_version
from model_registry import manifest as mf
from model_registry.deltas import Delta, catalogue_dir, read_deltas, write_delta


def _writer(payload: bytes = b"x"):
    def write(staging):
        (staging / mf.QUERY_TOWER_DIR).mkdir()
        (staging / mf.QUERY_TOWER_DIR / "saved_model.pb").write_bytes(payload)
        np.save(staging / mf.CANDIDATE_IDS_FILE, np.array(["a", "b"]), allow_pickle=False)
        np.save(staging / mf.CANDIDATE_EMBEDDINGS_FILE, np.eye(2, dtype=np.float32), allow_pickle=False)
        (staging / mf.METRICS_FILE).write_text(json.dumps({"hit_rate@10": 0.5}))

        def build(version, files):
            return Manifest(model="m", version=version, embedding_dim=2, num_candidates=2, tower="id",
                            dataset="test", created_at="2024-01-01T00:00:00+00:00",
                            index=IndexSpec(kind="brute_force"), files=files, metrics={"hit_rate@10": 0.5})
        return build
    return write


def test_publish_verify_round_trip(tmp_path):
    reg = Registry(tmp_path, "m")
    m1 = reg.publish(_writer())
    m2 = reg.publish(_writer(b"y"))
    assert (m1.version, m2.version) == (1, 2)
    assert reg.versions() == [1, 2] and reg.current_version() is None  # publishing never makes a version live
    got = verify_version(reg.version_dir(2))
    assert got == m2 and got.files == m2.files
    assert set(got.files) == {"query_tower/saved_model.pb", mf.CANDIDATE_IDS_FILE,
                              mf.CANDIDATE_EMBEDDINGS_FILE, mf.METRICS_FILE}
    assert not list(reg.model_dir.glob(".staging-*"))


def test_a_manifest_field_of_a_later_release_is_named_in_the_refusal(tmp_path):
    """A later release may add a field without a new format_version: the refusal said only "__init__() got an
    unexpected keyword argument"."""
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    path = reg.version_dir(1) / mf.MANIFEST_FILE
    raw = json.loads(path.read_text())
    raw["canary_share"] = 0.1
    raw["index"]["quantisation"] = "int8"
    path.write_text(json.dumps(raw))
    with pytest.raises(VersionError, match=r"not a valid manifest: manifest fields canary_share, index.quantisation "
                                           r"unknown to this build \(format_version 1\): written by a later release"):
        mf.read_manifest(reg.version_dir(1))
    # A shard's own fields were read by position, and one it did not know was dropped without a word.
    shard = {"num_candidates": 2, "index": {"kind": "brute_force"}, "replicas": 3}
    with pytest.raises(VersionError, match=r"^manifest fields canary_share, index.quantisation, shards\[\]\.replicas "
                                           r"unknown to this build"):
        Manifest.from_json(json.dumps({**raw, "shards": [shard]}))


def test_pointers_are_explicit_and_never_guessed(tmp_path):
    reg = Registry(tmp_path, "m")
    for payload in (b"1", b"2", b"3"):
        reg.publish(_writer(payload))
    assert reg.current_version() is None and reg.previous_version() is None  # not "the newest"
    reg.set_current(1)
    assert (reg.current_version(), reg.previous_version()) == (1, None)
    reg.set_current(3)
    assert (reg.current_version(), reg.previous_version()) == (3, 1)
    reg.set_current(1)  # a rollback swaps them
    assert (reg.current_version(), reg.previous_version()) == (1, 3)
    with pytest.raises(VersionError, match="not published"):
        reg.set_current(9)
    (reg.model_dir / "CURRENT").write_text("7\n")  # names a version that does not exist
    with pytest.raises(VersionError,
                       match=r"names '7', which is not a published version of m \(published: \[1, 2, 3\]\)"):
        reg.current_version()
    (reg.model_dir / "CURRENT").write_text("garbage")
    with pytest.raises(VersionError, match="garbage"):
        reg.current_version()


@pytest.mark.parametrize("damage", [b"\xb2\n", "\u00b2\n".encode()])  # not UTF-8; a digit int() refuses
def test_a_damaged_pointer_or_slot_record_is_refused_as_such_never_a_traceback(tmp_path, damage):
    """Bytes that are not UTF-8 raised UnicodeDecodeError, and "²" (a digit to str.isdigit) ValueError from int():
    the services printed a traceback, and a damaged PREVIOUS stopped a query replica that would have started."""
    reg = Registry(tmp_path, "m")
    for payload in (b"1", b"2"):
        reg.publish(_writer(payload))
    reg.set_current(1)
    reg.set_current(2)
    (reg.model_dir / "PREVIOUS").write_bytes(damage)
    assert reg.pointers(broken_previous_ok=True) == (2, None)
    with pytest.raises(VersionError, match="not a published version"):
        reg.previous_version()
    (reg.model_dir / "CURRENT").write_bytes(damage)
    with pytest.raises(VersionError, match="not a published version"):
        reg.current_version()
    reg.set_slot_version("blue", 1)
    reg.slot_file("blue").write_bytes(damage)
    with pytest.raises(VersionError, match="not a published version"):
        reg.slot_record("blue")
    (reg.model_dir / damage.decode("utf-8", "replace").strip()).mkdir()  # a version directory's name
    assert reg.versions() == [1, 2]


def test_slot_records(tmp_path):
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    assert reg.slot_version("blue") is None  # an empty slot
    reg.set_slot_version("blue", 1)
    assert reg.slot_version("blue") == 1 and reg.slot_version("green") is None
    reg.set_slot_version("blue", None)
    assert reg.slot_version("blue") is None
    with pytest.raises(VersionError, match="not published"):
        reg.set_slot_version("blue", 5)
    with pytest.raises(ValueError, match="slot name"):
        reg.slot_version("../etc")


def test_tampered_file_fails_verification(tmp_path):
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    vdir = reg.version_dir(1)
    (vdir / mf.QUERY_TOWER_DIR / "saved_model.pb").write_bytes(b"tampered")
    with pytest.raises(VersionError, match="sha256"):
        verify_version(vdir)
    with pytest.raises(VersionError, match="query_tower/saved_model.pb fails its sha256"):
        verify_version(vdir, mf.QUERY_READS)
    verify_version(vdir, mf.INDEX_READS)  # an index slot never reads the tower


def test_each_service_checksums_the_files_it_reads(tmp_path):
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    vdir = reg.version_dir(1)
    embeddings = vdir / mf.CANDIDATE_EMBEDDINGS_FILE
    embeddings.write_bytes(embeddings.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(VersionError, match="candidate_embeddings.npy fails its sha256"):
        verify_version(vdir, mf.INDEX_READS)
    verify_version(vdir, mf.QUERY_READS)  # its index slot refuses it, so no promotion can route to it
    embeddings.unlink()
    for reads in (None, mf.QUERY_READS, mf.INDEX_READS):  # presence is checked by everyone
        with pytest.raises(VersionError, match="missing"):
            verify_version(vdir, reads)


def test_a_file_replaced_by_a_link_out_of_the_registry_fails_verification(tmp_path):
    """Its target held the same bytes, so every checksum passed, and was then changed where the registry's
    permissions do not reach (the attack review)."""
    reg = Registry(tmp_path / "registry", "m")
    reg.publish(_writer())
    ids = reg.version_dir(1) / mf.CANDIDATE_IDS_FILE
    outside = tmp_path / "elsewhere.npy"
    outside.write_bytes(ids.read_bytes())
    ids.unlink()
    ids.symlink_to(outside)
    for reads in (None, mf.INDEX_READS):
        with pytest.raises(VersionError, match=f"holds symbolic links \\({mf.CANDIDATE_IDS_FILE}\\)"):
            verify_version(reg.version_dir(1), reads)


def test_missing_and_extra_files_fail_verification(tmp_path):
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    vdir = reg.version_dir(1)
    (vdir / "extra.bin").write_bytes(b"?")
    with pytest.raises(VersionError, match="not in the manifest"):
        verify_version(vdir)
    (vdir / "extra.bin").unlink()
    (vdir / mf.METRICS_FILE).unlink()
    with pytest.raises(VersionError, match="missing"):
        verify_version(vdir)


def test_failing_write_leaves_nothing(tmp_path):
    reg = Registry(tmp_path, "m")

    def broken(staging):
        (staging / "half-written").write_bytes(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        reg.publish(broken)
    assert reg.versions() == [] and reg.current_version() is None
    assert list(reg.model_dir.iterdir()) == []  # no version, no staging dir, no CURRENT


def test_bad_model_name_rejected(tmp_path):
    with pytest.raises(ValueError, match="model name"):
        Registry(tmp_path, "../escape")


def test_a_number_taken_by_a_directory_without_a_manifest_is_skipped(tmp_path):
    """A version folder left without its manifest (a copy or a non-atomic rename cut short) is no version, and the
    next publish takes the number after it rather than retrying that one forever."""
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    (reg.model_dir / "2").mkdir()
    (reg.model_dir / "2" / "half-copied.bin").write_bytes(b"?")
    published = []
    worker = threading.Thread(target=lambda: published.append(reg.publish(_writer(b"y")).version), daemon=True)
    worker.start()
    worker.join(10)
    assert published == [3] and reg.versions() == [1, 3]


def test_a_delta_log_with_a_gap_refuses_a_new_delta_instead_of_spinning(tmp_path):
    """A record deleted from the middle of a log (an operator undoing a delta by hand): readers refuse the log, and
    so must the writer, which otherwise retried the taken generation after the gap forever."""
    for name in "abc":
        write_delta(tmp_path, 1, Delta.make([name], np.ones((1, 2), np.float32), dim=2))
    (catalogue_dir(tmp_path, 1) / "00000002.json").unlink()
    outcome = []

    def write():
        try:
            outcome.append(write_delta(tmp_path, 1, Delta.make(["d"], np.ones((1, 2), np.float32), dim=2)))
        except VersionError as e:
            outcome.append(str(e))

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    worker.join(10)
    assert len(outcome) == 1 and "without a gap" in str(outcome[0])


def test_publish_syncs_every_file_and_folder_of_the_version_before_renaming_it(tmp_path, monkeypatch):
    """A SavedModel keeps its weights in variables/: a version renamed into place before that folder and its files
    reach the disk can come back from a crash with them empty or missing, yet listed as published."""
    reg = Registry(tmp_path, "m")
    synced: set[str] = set()
    real_fsync = os.fsync

    def recording_fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if (reg.model_dir / ".staging-").as_posix() in path:  # the staged tree, as the rename will publish it
            synced.add(path.split("/.staging-", 1)[1].partition("/")[2] or ".")
        real_fsync(fd)

    def write(staging):
        build = _writer()(staging)
        variables = staging / mf.QUERY_TOWER_DIR / "variables"
        variables.mkdir()
        (variables / "variables.data-00000-of-00001").write_bytes(b"weights")
        (variables / "variables.index").write_bytes(b"index")
        return build

    monkeypatch.setattr(os, "fsync", recording_fsync)
    reg.publish(write)
    vdir = reg.version_dir(1)
    tree = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*")} | {"."}
    assert tree - synced == set()


def _fsyncs(monkeypatch, fail: Callable[[str], bool] = lambda path: False) -> list[str]:
    """Records the path of every fsync made from now on; raises EIO for those ``fail`` names."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if fail(path):
            raise OSError(errno.EIO, "Input/output error")
        synced.append(path)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return synced


def test_new_folders_are_synced_in_their_parents(tmp_path, monkeypatch):
    """A version's first delta made catalogue/ and catalogue/<v>/, the first slot record slots/, the first publish the
    model's folder, none synced in its parent: a crash could take a reported delta, record or version with it."""
    synced = _fsyncs(monkeypatch)
    reg = Registry(tmp_path, "m")
    reg.publish(_writer())
    assert str(tmp_path) in synced
    write_delta(reg.model_dir, 1, Delta.make(["a"], np.ones((1, 2), np.float32), dim=2))
    assert {str(reg.model_dir), str(catalogue_dir(reg.model_dir, 1).parent)} <= set(synced)
    synced.clear()
    reg.set_slot_version("blue", 1)
    assert str(reg.model_dir) in synced


def test_a_delta_linked_in_place_is_reported_written_though_its_folder_did_not_sync(tmp_path, monkeypatch, caplog):
    """The folder's fsync failing after the record was linked raised: recsys-catalogue said the delta was not
    written while replicas applied it, and a run again wrote it twice."""
    delta = Delta.make(["a"], np.ones((1, 2), np.float32), dim=2)
    assert write_delta(tmp_path, 1, delta) == 1
    folder = str(catalogue_dir(tmp_path, 1))
    _fsyncs(monkeypatch, fail=lambda path: path == folder and os.path.exists(f"{folder}/00000002.json"))
    assert write_delta(tmp_path, 1, delta) == 2
    assert "catalogue delta 2 of version 1 is written, but" in caplog.text and "Input/output error" in caplog.text
    monkeypatch.undo()
    assert len(read_deltas(tmp_path, 1)) == 2


def test_a_prune_removes_what_killed_catalogue_and_pointer_writes_left_once_old(tmp_path):
    """Two killed 100k-candidate delta writes left 56 MB in catalogue/<v>/ (temporary files, a delta file no record
    names), a prune cut off left a removed version's log, and pointer writes their temporary files in slots/: none
    was ever removed."""
    reg = Registry(tmp_path, "m")
    for payload in (b"1", b"2"):
        reg.publish(_writer(payload))
    write_delta(reg.model_dir, 1, Delta.make(["a"], np.ones((1, 2), np.float32), dim=2))
    reg.set_slot_version("blue", 1)
    log = catalogue_dir(reg.model_dir, 1)
    old = [log / ".tmp-k1.npz", log / "0123456789abcdef.npz", reg.model_dir / "slots" / ".current-k2"]
    new = [log / ".tmp-k3.npz", reg.model_dir / "slots" / ".current-k4"]
    for path in old + new:
        path.write_bytes(b"partial")
    orphan = catalogue_dir(reg.model_dir, 9)
    orphan.mkdir()
    (orphan / "00000001.json").write_text("{}")
    an_hour_ago = time.time() - 3700
    for path in [*old, orphan, orphan / "00000001.json", log]:
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert reg.prune(keep=2) == []
    assert not any(p.exists() for p in [*old, orphan]) and all(p.exists() for p in new)
    assert [len(d.ids) for d in read_deltas(reg.model_dir, 1)] == [1] and reg.slot_version("blue") == 1
