"""Flags of the operator tools and the index service that were taken as given and then misbehaved, found by trying
them as an operator would (stop 60); each is now refused at parsing, naming the flag."""

from __future__ import annotations

import argparse

import pytest

from index_service.server import IndexServiceConfig
from recsys_client.catalogue import CatalogueConfig
from recsys_client.publish import PublishConfig
from settings.flags import add_flags, parse

FLEET = ["--registry", "/r", "--model", "m", "--query-admin", "q:1"]


def _refused(config: type, argv: list[str], capsys) -> str:
    parser = argparse.ArgumentParser(prog="tool")
    add_flags(parser, config)
    with pytest.raises(SystemExit) as exit_:
        parse(parser, config, argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("config", [PublishConfig, CatalogueConfig])
@pytest.mark.parametrize("argv, says", [
    # Dialled port 6476 (72012 modulo 65536), and 443 for an address without a port.
    (["--index-admin", "127.0.0.1:72012"], "--index-admin '127.0.0.1:72012' is not HOST:PORT with a port from 1 to "
                                           "65535"),
    (["--index-admin", "127.0.0.1"], "--index-admin '127.0.0.1' is not HOST:PORT"),
    # "no admin server answers there (waited -5 s)"; recsys-catalogue wrote a delta no replica was asked to take.
    (["--index-admin", "i:1", "--connect-timeout-s", "-5"], "--connect-timeout-s must be over 0 and at most 86400"),
    (["--index-admin", "i:1", "--timeout-s", "0"], "--timeout-s must be over 0 and at most 86400"),  # DEADLINE_EXCEEDED
])
def test_an_admin_address_or_wait_out_of_range_is_refused(config, argv, says, capsys):
    assert f"error: {says}" in _refused(config, [*FLEET, *argv], capsys)


def test_a_rollback_given_a_version_is_refused(capsys):
    """--version was ignored: "rolled back to version 2" of a run given --version 7, which was not published."""
    err = _refused(PublishConfig, [*FLEET, "--index-admin", "i:1", "--rollback", "--version", "7"], capsys)
    assert "error: --version goes without --rollback: a rollback makes the rollback target (registry PREVIOUS) live" \
        in err


def test_an_index_slot_keepalive_no_watcher_could_wait_out_is_refused(capsys):
    """1e300 s was advertised to every watcher: a hung slot would never be seen as hung."""
    err = _refused(IndexServiceConfig, ["--registry", "/r", "--model", "m", "--slot", "blue", "--keepalive-s", "1e300"],
                   capsys)
    assert "error: --keepalive-s must be over 0 and at most 86400" in err


@pytest.mark.parametrize("config", [PublishConfig, CatalogueConfig])
def test_an_admin_token_no_grpc_header_can_carry_is_refused_naming_none_of_it(config, tmp_path, capsys):
    """The services refuse such a token at start; the tools sent it, and gRPC failed inside ("INTERNAL: Invalid
    metadata", after its multi-line trace)."""
    token = tmp_path / "token"
    token.write_text("s\\u00e9cret\\nline two")
    err = _refused(config, [*FLEET, "--index-admin", "i:1", "--admin-token-file", str(token)], capsys)
    assert "error: --admin-token-file must be printable ASCII without spaces" in err and "cret" not in err
