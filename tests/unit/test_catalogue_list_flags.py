"""Comma-separated list flags (recsys-catalogue's --delete and replica lists, every config's tuple flags, and
recsys-client's id lists) refuse an empty part naming the flag: "u1,,u2" was read as u1,u2, the id between the
commas dropped without a word (a batch answered for one customer less, a delete list one id short)."""

from __future__ import annotations

import argparse

import pytest

from recsys_client import cli
from recsys_client.catalogue import CatalogueConfig
from settings.flags import add_flags


def _catalogue_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser, CatalogueConfig)
    return parser.parse_args(["--registry", "r", "--model", "m", *argv])


@pytest.mark.parametrize("flag", ["--delete", "--index-admin"])
@pytest.mark.parametrize("value, part", [("a,,b", 2), ("a,b,", 3), (",a", 1), ("a, ,b", 2)])
def test_an_empty_part_of_a_config_list_flag_is_refused_naming_the_flag(capsys, flag, value, part):
    with pytest.raises(SystemExit) as exit:
        _catalogue_flags(flag, value)
    assert exit.value.code == 2
    assert f"argument {flag}: part {part} of {value!r} is empty" in capsys.readouterr().err


def test_an_empty_part_of_a_list_from_the_environment_is_refused_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("RECSYS_INDEX_ADMIN", "a:1,,b:1")
    with pytest.raises(SystemExit) as exit:
        _catalogue_flags()
    assert exit.value.code == 2
    assert "$RECSYS_INDEX_ADMIN: invalid value 'a:1,,b:1': part 2 of 'a:1,,b:1' is empty" in capsys.readouterr().err


def test_list_flags_still_trim_their_parts_and_take_an_empty_value_as_none():
    args = _catalogue_flags("--delete", " a , b", "--index-admin", "")
    assert (args.delete, args.index_admin) == (("a", "b"), ())


@pytest.mark.parametrize("command, flag", [("batch", "--customer-ids"), ("record", "--candidate-ids")])
def test_recsys_client_refuses_an_empty_id_in_a_list(capsys, command, flag):
    base = [command, "--address", "127.0.0.1:1", *(["--customer-id", "u1"] if command == "record" else [])]
    with pytest.raises(SystemExit) as exit:
        cli.build_parser().parse_args([*base, flag, "u1,,u2"])
    assert exit.value.code == 2
    assert f"argument {flag}: part 2 of 'u1,,u2' is empty" in capsys.readouterr().err
    args = cli.build_parser().parse_args([*base, flag, "u1, u2"])
    assert getattr(args, flag[2:].replace("-", "_")) == ["u1", "u2"]
