"""What an upsert line of recsys-catalogue may hold: only the documented keys (a misspelt one, "token" for "tokens",
was dropped unread and the candidate written without the attributes its filters need), and an id without whitespace
at its ends (the trainer trims ids, as --delete and --delete-file trim theirs, so no delete could name it). An id
both upserted and deleted in one run is said: the delete wins."""

from __future__ import annotations

import logging

import pytest

from model_registry import Registry
from model_registry.deltas import published_generation, read_deltas
from recsys_client.upserts import CatalogueError, read_upserts
from recsys_client.catalogue import main as catalogue_main
from recsys_client.fleet import Fleet
from tests.unit.test_registry_retention import publish_dummy


def _read(*lines: str):
    return read_upserts(lines, 2, frozenset({"genre"}), frozenset({"price"}))


@pytest.mark.parametrize("line, named", [
    ('{"id": "typo1", "vector": [1, 0], "token": {"genre": ["jazz"]}, "numerics": {"price": 10}}',
     "['numerics', 'token']"),
    ('{"id": "c1", "vector": [1, 0], "colour": "red"}', "['colour']"),
])
def test_a_key_an_upsert_line_does_not_take_is_refused_naming_the_line_and_the_key(line, named):
    with pytest.raises(CatalogueError) as refused:
        _read('{"id": "ok", "vector": [0, 1], "tokens": {"genre": ["pop"]}, "numeric": {"price": 3}}', line)
    message = str(refused.value)
    assert message.startswith("line 2 ") and named in message, message
    assert "id, vector, features, tokens, numeric" in message


@pytest.mark.parametrize("candidate", [" sp1 ", "sp1 ", "\tsp1", "sp1\u00a0"])
def test_an_upsert_id_with_whitespace_at_an_end_is_refused(candidate):
    with pytest.raises(CatalogueError) as refused:
        _read(f'{{"id": "{candidate}", "vector": [1, 0]}}'.replace("\t", "\\t"))
    assert str(refused.value).startswith(f"line 1: id {candidate!r} has whitespace at its start or end")
    assert _read('{"id": "s p1", "vector": [1, 0]}').ids.tolist() == ["s p1"]  # inside an id, it is the id's


def test_a_run_upserting_a_padded_id_writes_nothing(tmp_path, capsys):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    upserts = tmp_path / "up.jsonl"
    upserts.write_text('{"id": " sp1 ", "vector": [0.5]}\n')
    with pytest.raises(SystemExit) as exit:
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--upserts", str(upserts),
                        "--index-admin", "127.0.0.1:1", "--connect-timeout-s", "0.2"])
    assert exit.value.code == 1 and published_generation(registry.model_dir, 1) == 0
    assert "line 1: id ' sp1 ' has whitespace" in capsys.readouterr().err


def test_an_id_both_upserted_and_deleted_is_named_in_a_warning(tmp_path, capsys, monkeypatch, caplog):
    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    upserts = tmp_path / "both.jsonl"
    upserts.write_text('{"id": "both1", "vector": [0.5]}\n')
    monkeypatch.setattr(Fleet, "connect", classmethod(lambda cls, *args, **kwargs: Fleet([], [])))
    with caplog.at_level(logging.WARNING, "recsys-catalogue"):
        catalogue_main(["--registry", str(tmp_path), "--model", "m", "--version", "1", "--upserts", str(upserts),
                        "--delete", "both1", "--index-admin", "127.0.0.1:1"])
    assert read_deltas(registry.model_dir, 1)[0].deleted.tolist() == ["both1"]
    assert "1 ids are both upserted (--upserts) and deleted (--delete / --delete-file): both1" in caplog.text


def test_a_line_nested_too_deep_to_read_is_refused_naming_it():
    """A RecursionError's traceback from the JSON decoder (found trying the tool, stop 60)."""
    with pytest.raises(CatalogueError, match=r"^line 2: not a JSON object with an 'id' \(nested too deep to read\)$"):
        _read('{"id": "ok", "vector": [0, 1]}', "[" * 100_000)
