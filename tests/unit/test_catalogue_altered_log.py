"""recsys-catalogue reads a version's delta log as its replicas do (a signed version's with the publisher's public
key) before it writes: a delta appended to a log altered by hand would be refused by every replica with the records
before it, and ids the altered record claims to delete are not taken on its word."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from model_registry import Registry
from model_registry.deltas import AlteredLog, Delta, published_generation, read_deltas, write_delta
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import Fleet
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


def _rewrite_npz(registry: Registry, generation: int, **arrays) -> None:
    """Replaces delta ``generation``'s npz of version 1 with ``arrays``, its record's name and sha256 updated to
    match: a log written by hand or by another tool, whose checksums and chain hold."""
    import hashlib

    import numpy as np

    directory = registry.model_dir / "catalogue" / "1"
    record_path = directory / f"{generation:08d}.json"
    record = json.loads(record_path.read_text())
    (directory / record["file"]).unlink()
    data = directory / "handmade.npz"
    np.savez(data, **arrays)
    record.update(file=data.name, sha256=hashlib.sha256(data.read_bytes()).hexdigest())
    record_path.write_text(json.dumps(record, sort_keys=True))


@pytest.mark.parametrize("arrays, why", [
    ({"ids": ["n", "n"], "vectors": [[0.5], [0.5]], "deleted": []}, "ValueError: a delta upserts each id at most once"),
    ({"ids": ["n"], "vectors": [[0.5]]}, "KeyError"),
    ({"ids": ["", "n"], "vectors": [[0.5], [0.5]], "deleted": []}, "ValueError: upserted id '' is no id a request "
                                                                    "could name"),
    ({"ids": ["n"], "vectors": [[0.5]], "deleted": ["a\x00b"]}, "ValueError: deleted id 'a\\x00b' is no id"),
])
def test_a_delta_whose_checksum_holds_but_whose_contents_are_no_delta_is_an_altered_log(tmp_path, capsys, arrays, why):
    """It failed every reader with a ValueError or KeyError: INTERNAL from ApplyCatalogue and a load, retried
    every catch-up period, a traceback from recsys-catalogue; and ids no request could name were served."""
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    write_delta(registry.model_dir, 1, Delta.make(["n"], [[0.5]], dim=1))
    _rewrite_npz(registry, 1, **arrays)
    with pytest.raises(AlteredLog) as altered:
        read_deltas(registry.model_dir, 1)
    assert altered.value.generation == 1 and "handmade.npz is not a valid delta" in str(altered.value)
    assert why in str(altered.value), str(altered.value)
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--delete", "a",
                        "--index-admin", "127.0.0.1:1"])
    error = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and error.startswith("recsys-catalogue: the log was altered at delta 1"), error


def test_a_log_written_before_padded_ids_were_refused_still_loads_and_takes_no_new_padded_id(tmp_path):
    """Before 77baf8b a delta could upsert ' n ' (the ids of requests were not checked for padding): replicas refused
    such a log as altered after an upgrade, so its version could no longer load. A writer still refuses one."""
    import numpy as np

    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    write_delta(registry.model_dir, 1, Delta.make(["n"], [[0.5]], dim=1))
    _rewrite_npz(registry, 1, ids=[" n "], vectors=np.array([[0.5]], np.float32), deleted=np.zeros(0, "<U1"))
    (delta,) = read_deltas(registry.model_dir, 1)
    assert delta.ids.tolist() == [" n "]
    with pytest.raises(ValueError, match="upserted id ' n ' is no id a request could name"):
        write_delta(registry.model_dir, 1, Delta(delta.ids, delta.vectors, delta.attributes, delta.deleted))
    assert published_generation(registry.model_dir, 1) == 1
