"""The tools whose parsers are built by hand (recsys-client status, recsys-loadtest --swap) take the admin token
from ``$RECSYS_ADMIN_TOKEN_FILE`` as every other tool does: they read only ``$RECSYS_ADMIN_TOKEN``, so a token
mounted as a file (as docs/DEPLOY.md does) was no token at all, and the admin calls were refused."""

from __future__ import annotations

import pytest

from recsys_client import cli, loadtest

PARSERS = {
    "recsys-client status": (cli.build_parser, ["status", "--query-admin", "h:1"]),
    "recsys-loadtest --swap": (loadtest.build_parser,
                               ["--address", "h:1", "--qps", "1", "--duration-s", "1", "--swap"]),
}


@pytest.mark.parametrize("tool", PARSERS)
def test_the_admin_token_comes_from_the_file_the_environment_names(tool, tmp_path, monkeypatch):
    build, argv = PARSERS[tool]
    token = tmp_path / "token"
    token.write_text("from-file\n")
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "from-env")
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN_FILE", str(token))
    assert build().parse_args(argv).admin_token == "from-file"  # the file first, as option(secret=True) flags
    monkeypatch.delenv("RECSYS_ADMIN_TOKEN_FILE")
    assert build().parse_args(argv).admin_token == "from-env"


@pytest.mark.parametrize("tool", PARSERS)
def test_an_unreadable_token_file_is_a_usage_error_naming_the_variable(tool, tmp_path, monkeypatch, capsys):
    build, _ = PARSERS[tool]
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as exit:
        build()
    assert exit.value.code == 2
    assert f"$RECSYS_ADMIN_TOKEN_FILE: cannot read {tmp_path / 'missing'}" in capsys.readouterr().err
