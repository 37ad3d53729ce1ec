"""recsys-catalogue reads a version's delta log as its replicas do (a signed version's with the publisher's public
key) before it writes: a delta appended to a log altered by hand would be refused by every replica with the records
before it, and ids the altered record claims to delete are not taken on its word."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from model_registry import Registry
from model_registry.deltas import Delta, published_generation, write_delta
from recsys_client.catalogue import main as catalogue_main
from recsys_client.publish import Fleet
from tests.unit.test_registry_retention import publish_dummy


@pytest.mark.parametrize("input_flag", ["--delete", "--upserts"])
def test_a_signed_versions_log_with_an_unsigned_record_is_refused_and_nothing_is_written(tmp_path, capsys,
                                                                                          monkeypatch, input_flag):
    publisher = Ed25519PrivateKey.generate()
    registry = Registry(tmp_path, "m", signing_key=publisher)
    publish_dummy(registry)  # candidates a, b, c
    pem = tmp_path / "publisher.pem"
    pem.write_bytes(publisher.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    write_delta(registry.model_dir, 1, Delta.make(deleted=["c"], dim=1), publisher)
    write_delta(registry.model_dir, 1, Delta.make(deleted=["a"], dim=1))  # by hand, unsigned: replicas refuse it
    upserts = tmp_path / "up.jsonl"
    upserts.write_text(json.dumps({"id": "n", "vector": [0.5]}) + "\n")
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: Fleet([], [])))
    given = "a" if input_flag == "--delete" else str(upserts)
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", input_flag, given,
                        "--index-admin", "127.0.0.1:1", "--signing-key-file", str(pem)])
    error = capsys.readouterr().err.strip()
    assert exit.value.code == 1
    assert error.startswith("recsys-catalogue: the log was altered at delta 2: catalogue delta 2 of version 1 is "
                            "unsigned"), error
    assert "nothing was written" in error, error
    assert published_generation(registry.model_dir, 1) == 2
