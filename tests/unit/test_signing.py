"""Signed manifests: a registry writer without the signing key cannot make a
service load a version, even with every sha256 in the manifest recomputed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (BestAvailableEncryption, Encoding, NoEncryption,
                                                          PrivateFormat, PublicFormat)

from model_registry import Registry, VersionError, verify_version
from model_registry import manifest as mf
from model_registry import signing
from model_registry.deltas import Delta, catalogue_dir, read_deltas, write_delta
from serving.errors import FailedPrecondition
from tests.unit.test_registry import _writer


@pytest.fixture
def keys(tmp_path):
    """(signing key, path of its public key PEM, path of another key's public PEM)."""
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    paths = []
    for name, k in (("publisher.pub", key), ("other.pub", other)):
        path = tmp_path / name
        path.write_bytes(k.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
        paths.append(path)
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return signing.private_key(pem), paths[0], paths[1]


def test_a_signed_version_verifies_with_its_key_only(tmp_path, keys):
    key, public, other = keys
    registry = Registry(tmp_path / "reg", "m", signing_key=key)
    manifest = registry.publish(_writer())
    version_dir = registry.version_dir(manifest.version)
    assert (version_dir / mf.SIGNATURE_FILE).is_file() and mf.SIGNATURE_FILE not in manifest.files
    signing.verify(version_dir, signing.public_key(public))
    assert verify_version(version_dir) == manifest  # the signature is no file of the version
    with pytest.raises(VersionError, match="does not match its signature"):
        signing.verify(version_dir, signing.public_key(other))
    unsigned = Registry(tmp_path / "reg", "m").publish(_writer(b"y"))
    assert verify_version(registry.version_dir(unsigned.version)) == unsigned
    with pytest.raises(VersionError, match="is unsigned"):
        signing.verify(registry.version_dir(unsigned.version), signing.public_key(public))


def _ids_shifted(version_dir) -> dict:
    """The attack: shifts the version's candidate ids by one; returns its manifest with their sha256 fixed up to
    match (not written)."""
    ids = np.load(version_dir / mf.CANDIDATE_IDS_FILE)
    np.save(version_dir / mf.CANDIDATE_IDS_FILE, np.roll(ids, 1), allow_pickle=False)
    raw = json.loads((version_dir / mf.MANIFEST_FILE).read_text())
    raw["files"][mf.CANDIDATE_IDS_FILE] = mf.sha256_file(version_dir / mf.CANDIDATE_IDS_FILE)
    return raw


def test_a_file_changed_with_its_sha256_recomputed_is_caught_by_the_signature(tmp_path, keys):
    key, public, _ = keys
    registry = Registry(tmp_path / "reg", "m", signing_key=key)
    version_dir = registry.version_dir(registry.publish(_writer()).version)
    (version_dir / mf.MANIFEST_FILE).write_text(json.dumps(_ids_shifted(version_dir)))
    assert verify_version(version_dir).version == 1  # the checksums alone are fooled
    with pytest.raises(VersionError, match="does not match its signature"):
        signing.verify(version_dir, signing.public_key(public))


def test_a_manifest_swapped_after_its_signature_was_checked_is_not_the_one_loaded(tmp_path, keys, monkeypatch):
    from serving.lifecycle.loader import Background, Loader

    key, public, _ = keys
    registry = Registry(tmp_path / "reg", "m", signing_key=key)
    version_dir = registry.version_dir(registry.publish(_writer()).version)
    # The attack above, its forged manifest swapped in just after the signature check read the signed one.
    forged = _ids_shifted(version_dir)
    checked = signing.verify

    def then_swapped(directory, public_key):
        verified = checked(directory, public_key)
        (directory / mf.MANIFEST_FILE).write_text(json.dumps(forged))
        return verified

    monkeypatch.setattr(signing, "verify", then_swapped)
    loader = Loader(registry, lambda path, manifest: manifest, "index", Background.IDLE,
                    public_key=signing.public_key(public))
    with pytest.raises(FailedPrecondition, match=f"{mf.CANDIDATE_IDS_FILE} fails its sha256 check"):
        loader.verify(1)


def test_keys_of_the_wrong_kind_are_refused_with_a_clear_message(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        signing.public_key(tmp_path / "missing.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ValueError):
        signing.public_key(tmp_path / "junk.pub")
    encrypted = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                           BestAvailableEncryption(b"secret"))
    with pytest.raises(ValueError, match=r"the signing key is encrypted \(password-protected\)"):  # was a TypeError
        signing.private_key(encrypted.decode())


def test_catalogue_deltas_apply_only_as_signed_and_in_their_own_version(tmp_path, keys):
    key, public, other = keys
    model_dir = tmp_path / "m"
    delta = Delta.make(["a"], np.ones((1, 2), np.float32), dim=2)
    assert write_delta(model_dir, 1, delta, key) == 1
    assert [d.ids.tolist() for d in read_deltas(model_dir, 1, key=signing.public_key(public))] == [["a"]]
    with pytest.raises(VersionError, match="delta 1 of version 1 does not match its signature"):
        read_deltas(model_dir, 1, key=signing.public_key(other))
    # A writer without the key: readers without a key take its delta, those with one refuse the log.
    write_delta(model_dir, 1, delta)
    assert len(read_deltas(model_dir, 1)) == 2
    with pytest.raises(VersionError, match="delta 2 of version 1 is unsigned"):
        read_deltas(model_dir, 1, 1, key=signing.public_key(public))
    # A signed record edited (its counts), or moved to another version's log, is refused.
    record = catalogue_dir(model_dir, 1) / "00000001.json"
    moved = catalogue_dir(model_dir, 2)
    moved.mkdir(parents=True)
    for path in catalogue_dir(model_dir, 1).glob("*.npz"):
        (moved / path.name).write_bytes(path.read_bytes())
    (moved / record.name).write_bytes(record.read_bytes())
    with pytest.raises(VersionError, match="written as delta 1 of m version 1: the log was altered"):
        read_deltas(model_dir, 2)
    raw = json.loads(record.read_text())
    record.write_text(json.dumps({**raw, "upserts": 7}, sort_keys=True))
    with pytest.raises(VersionError, match="delta 1 of version 1 does not match its signature"):
        read_deltas(model_dir, 1, key=signing.public_key(public))


def test_a_truncated_or_garbled_delta_record_is_refused_naming_the_delta(tmp_path, keys):
    key, public, _ = keys
    model_dir = tmp_path / "m"
    write_delta(model_dir, 1, Delta.make(["a"], np.ones((1, 2), np.float32), dim=2), key)
    record = catalogue_dir(model_dir, 1) / "00000001.json"
    text = record.read_text()
    for garbled in (text[:len(text) // 2], "[]", '{"sha256": "0"}'):
        record.write_text(garbled)
        for reader_key in (None, signing.public_key(public)):
            with pytest.raises(VersionError, match="catalogue delta 1 of version 1"):
                read_deltas(model_dir, 1, key=reader_key)
