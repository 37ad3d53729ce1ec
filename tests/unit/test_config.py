"""Service configuration that guards secrets: secrets come from files or the
environment, never argv, and an admin plane off loopback needs a token."""

from __future__ import annotations

import argparse
import socket

import pytest

from serving.config import AdminConfig
from settings.flags import ConfigError, add_flags, from_args
from settings.ports import ephemeral_port_start, free_ports


def parse_admin(argv: list[str]) -> AdminConfig:
    parser = argparse.ArgumentParser()
    add_flags(parser, AdminConfig)
    return from_args(AdminConfig, parser.parse_args(argv))


def test_a_secret_comes_from_a_file_or_the_environment_never_argv(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RECSYS_TOKEN", raising=False)
    monkeypatch.delenv("RECSYS_TOKEN_FILE", raising=False)
    secret = tmp_path / "token"
    secret.write_text("from-a-file\n")
    assert parse_admin(["--token-file", str(secret)]).token == "from-a-file"
    with pytest.raises(SystemExit):
        parse_admin(["--token", "in-argv"])  # argparse reads it as --token-file: a path, never the token
    assert "--token-file: cannot read in-argv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_admin(["--token-file", str(tmp_path / "missing")])
    assert "cannot read" in capsys.readouterr().err
    monkeypatch.setenv("RECSYS_TOKEN", "from-the-environment")
    assert parse_admin([]).token == "from-the-environment"
    monkeypatch.delenv("RECSYS_TOKEN")
    monkeypatch.setenv("RECSYS_TOKEN_FILE", str(secret))
    assert parse_admin([]).token == "from-a-file"
    assert parse_admin(["--token-file", str(secret)]).token == "from-a-file"


def test_an_admin_plane_off_loopback_needs_a_token():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert AdminConfig(host=host).token == ""
    for host in ("0.0.0.0", "10.1.2.3", "::", "admin.internal"):
        with pytest.raises(ConfigError, match=f"is required with --admin-host {host}"):
            AdminConfig(host=host)
        assert AdminConfig(host=host, token="t").host == host


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    """Outgoing connections take their source ports from the ephemeral range; a server
    port chosen there could be taken before the server binds it."""
    ports = free_ports(32)
    assert len(set(ports)) == 32 and all(1024 < p < ephemeral_port_start() for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
