"""Service configuration that guards secrets: secrets come from files or the
environment, never argv, and an admin plane off loopback needs a token."""

from __future__ import annotations

import argparse
import socket
import sys

import pytest

from serving.config import AdminConfig
from settings.flags import ConfigError, add_flags, env_secret, from_args
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
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00k")  # head -c 32 /dev/urandom
    with pytest.raises(SystemExit):
        parse_admin(["--token-file", str(binary)])
    assert f"--token-file: {binary} is not UTF-8 text" in capsys.readouterr().err
    monkeypatch.setenv("RECSYS_TOKEN", "from-the-environment")
    assert parse_admin([]).token == "from-the-environment"
    monkeypatch.delenv("RECSYS_TOKEN")
    monkeypatch.setenv("RECSYS_TOKEN_FILE", str(secret))
    assert parse_admin([]).token == "from-a-file"
    assert parse_admin(["--token-file", str(secret)]).token == "from-a-file"


def test_an_admin_plane_off_loopback_needs_a_token():
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert AdminConfig(host=host).token == ""
    for host in ("0.0.0.0", "10.1.2.3", "::", "admin.internal"):
        with pytest.raises(ConfigError, match=f"is required with --admin-host {host}"):
            AdminConfig(host=host)
        assert AdminConfig(host=host, token="t").host == host


@pytest.mark.parametrize("token", [" ", "abc def", "caf\u00e9", "tab\there", "line\nbreak"])
def test_an_admin_token_a_grpc_header_cannot_carry_is_refused(token):
    with pytest.raises(ConfigError, match="must be printable ASCII without spaces"):
        AdminConfig(token=token)


def test_an_admin_token_from_the_environment_loses_its_line_break(monkeypatch):
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "s3cret\n")  # a Secret made of a file ending in a line break
    assert env_secret("admin-token") == "s3cret"


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range():
    """Outgoing connections take their source ports from the ephemeral range; a server
    port chosen there could be taken before the server binds it."""
    ports = free_ports(32)
    assert len(set(ports)) == 32 and all(1024 < p < ephemeral_port_start() for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("variable, value, says", [
    ("RECSYS_PORT", "abc", "$RECSYS_PORT: invalid int value 'abc'"),
    ("RECSYS_LOG_LEVEL", "verbose", "$RECSYS_LOG_LEVEL: invalid choice 'verbose'"),
    ("RECSYS_ECHO_REQUEST_ID", "ture", "$RECSYS_ECHO_REQUEST_ID: invalid value 'ture': not a boolean"),
    ("RECSYS_ADMIN_TOKEN_FILE", "/nonexistent/token", "$RECSYS_ADMIN_TOKEN_FILE: cannot read /nonexistent/token"),
])
def test_a_bad_environment_variable_is_one_line_naming_it_and_exit_2(monkeypatch, capsys, variable, value, says):
    """As a bad flag is: not a traceback, not silently another value (a misspelt boolean read as off)."""
    from index_service.server import build_parser

    monkeypatch.setenv(variable, value)
    with pytest.raises(SystemExit) as exit_:
        build_parser()
    assert exit_.value.code == 2
    assert f"recsys-index-service: error: {says}" in capsys.readouterr().err


def test_a_flag_wins_over_its_environment_variable(monkeypatch):
    from index_service.server import IndexServiceConfig, build_parser
    from settings.flags import parse

    for name, value in (("RECSYS_REGISTRY", "/r"), ("RECSYS_MODEL", "m"), ("RECSYS_SLOT", "blue"),
                        ("RECSYS_PORT", "7001"), ("RECSYS_ECHO_REQUEST_ID", "yes"), ("RECSYS_LOG_LEVEL", "debug")):
        monkeypatch.setenv(name, value)
    config = parse(build_parser(), IndexServiceConfig, [])
    assert (config.port, config.echo_request_id, config.log_level) == (7001, True, "debug")
    config = parse(build_parser(), IndexServiceConfig, ["--port", "7002", "--no-echo-request-id",
                                                         "--log-level", "error"])
    assert (config.port, config.echo_request_id, config.log_level) == (7002, False, "error")


@pytest.mark.parametrize("flag, says", [
    ("--metrics-port=70000", "--metrics-port must be a TCP port"),  # not the metrics server's OverflowError
    ("--metrics-port=-1", "--metrics-port must be a TCP port"),
    # A slot never busy takes a load while it serves live traffic.
    ("--busy-window-s=-1", "--busy-window-s must be >= 0"),
    ("--busy-window-s=nan", "--busy-window-s must be >= 0"),
    ("--shutdown-drain-s=inf", "--shutdown-drain-s must be >= 0 and at most 86400"),  # a SIGTERM would never stop it
])
def test_an_index_flag_out_of_range_is_a_flag_error(capsys, flag, says):
    from index_service.server import IndexServiceConfig, build_parser
    from settings.flags import parse

    with pytest.raises(SystemExit) as exit_:
        parse(build_parser(), IndexServiceConfig, ["--registry", "/r", "--model", "m", "--slot", "blue", flag])
    assert exit_.value.code == 2
    assert f"error: {says}" in capsys.readouterr().err


@pytest.mark.parametrize("flag, says", [
    ("--redis-timeout-s=0", "--redis-timeout-s must be positive"),
    ("--redis-retry-after-s=-1", "--redis-retry-after-s must be >= 0"),  # was blamed on --redis-timeout-s
])
def test_a_query_flag_out_of_range_names_itself(capsys, flag, says):
    from query_service.server import QueryServiceConfig, build_parser
    from settings.flags import parse

    with pytest.raises(SystemExit) as exit_:
        parse(build_parser(), QueryServiceConfig, ["--registry", "/r", "--model", "m", flag])
    assert exit_.value.code == 2
    assert f"error: {says}" in capsys.readouterr().err


def test_a_refused_value_from_the_environment_names_its_variable(capsys, monkeypatch):
    """An image upgrade that tightened a check crash-looped a pod with "--catalogue-catch-up-period-s must be ...",
    a flag its command line did not hold: the value was $RECSYS_CATALOGUE_CATCH_UP_PERIOD_S's."""
    from index_service.server import IndexServiceConfig, build_parser
    from settings.flags import parse

    monkeypatch.setenv("RECSYS_CATALOGUE_CATCH_UP_PERIOD_S", "0.01")
    for argv, note in (([], " (set by $RECSYS_CATALOGUE_CATCH_UP_PERIOD_S)"),
                       (["--catalogue-catch-up-period-s=0.02"], "")):
        with pytest.raises(SystemExit) as exit_:
            parse(build_parser(), IndexServiceConfig, ["--registry", "/r", "--model", "m", "--slot", "blue", *argv])
        assert exit_.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert ": error: --catalogue-catch-up-period-s must be 0" in line, line
        assert line.endswith(f"finite{note}"), line


def test_a_nan_from_the_environment_names_its_variable(capsys, monkeypatch):
    """The note compared the flag's value with its default from the environment: nan equals nothing, itself
    included, so RECSYS_MIN_RECALL=nan was refused as "--min-recall must be in [0, 1]" alone."""
    from index_service.server import IndexServiceConfig, build_parser
    from settings.flags import parse

    monkeypatch.setenv("RECSYS_MIN_RECALL", "nan")
    with pytest.raises(SystemExit):
        parse(build_parser(), IndexServiceConfig, ["--registry", "/r", "--model", "m", "--slot", "blue"])
    assert capsys.readouterr().err.strip().endswith("--min-recall must be in [0, 1] (set by $RECSYS_MIN_RECALL)")


def test_recsys_train_takes_its_training_flags_from_the_environment_too(monkeypatch, capsys):
    """DEPLOY.md: every flag of the services and operator tools defaults to $RECSYS_<FLAG>. recsys-train's training
    flags ignored theirs: RECSYS_EPOCHS in a trainer Job's environment trained the preset's epochs, silently. Set,
    the variable is a flag given: it pins that knob (the search leaves it), and a flag given wins over it."""
    from trainer import cli

    monkeypatch.setenv("RECSYS_EPOCHS", "1")
    monkeypatch.setenv("RECSYS_EMBEDDING_DIM", "8")
    parser = cli.build_parser()
    config = cli.config_from_args(parser, parser.parse_args(["--dataset", "synthetic", "--registry", "r",
                                                             "--model", "m"]))
    assert (config.train.max_epochs, config.train.towers.embedding_dim) == (1, 8)
    assert config.pinned == {"max_epochs": 1, "towers": {"embedding_dim": 8}}
    config = cli.config_from_args(parser, parser.parse_args(["--dataset", "synthetic", "--registry", "r",
                                                             "--model", "m", "--epochs", "3"]))
    assert config.train.max_epochs == 3
    monkeypatch.setenv("RECSYS_EPOCHS", "many")  # one line naming the variable, not a traceback
    monkeypatch.setattr(sys, "argv", ["/venv/bin/recsys-train"])
    with pytest.raises(SystemExit) as refused:
        cli.build_parser()
    # A usage error's status and line, as argparse gives a bad flag (it was 1, with no program name).
    assert refused.value.code == 2
    assert capsys.readouterr().err == "recsys-train: error: $RECSYS_EPOCHS: invalid int value 'many'\n"


@pytest.mark.parametrize("flag, says", [
    # Python's float() reads these: a wait that never ends, a back-off that never ends, a deadline gRPC reads as past.
    ("--batch-wait-ms=inf", "--batch-wait-ms must be a finite number"),
    ("--redis-retry-after-s=inf", "--redis-retry-after-s must be a finite number"),
    ("--warmup-budget-s=inf", "--warmup-budget-s must be a finite number"),
    ("--index-timeout-s=inf", "--index-timeout-s must be positive and at most 86,400 s"),
    ("--index-timeout-s=1e10", "--index-timeout-s must be positive and at most 86,400 s"),
    # Redis refuses an expiry this far off ("invalid expire time"), after the live history's items were pushed.
    ("--cache-ttl-s=10000000000000000", "--cache-ttl-s must be from 1 to 315,360,000"),
    ("--live-history-ttl-s=10000000000000000", "--live-history-ttl-s must be from 1 to 315,360,000"),
    # gRPC reads a negative limit as 0: every call that found another waiting would be refused.
    ("--max-pending-calls=-1", "--max-pending-calls must be from 0 (gRPC's own) to 2147483647"),
    # Found trying the services (stop 60): past a C int, an OverflowError's traceback once the service had loaded;
    # a drain of 1e300 s, a SIGTERM that never stopped it; a port past 65535, another endpoint (modulo 65536).
    ("--max-pending-calls=99999999999", "--max-pending-calls must be from 0 (gRPC's own) to 2147483647"),
    ("--max-streams-per-connection=99999999999", "--max-streams-per-connection must be from 0 (no limit) to "),
    ("--max-connection-age-s=1e10", "--max-connection-age-s must be 0 (never) or from 1 s to 2147483 s"),
    ("--max-message-bytes=2147483648", "--max-message-bytes must be from 65536 to 2147483647 (2 GiB)"),
    ("--shutdown-drain-s=1e300", "--shutdown-drain-s must be >= 0 and at most 86400"),
    ("--index-address=127.0.0.1:72547", "--index-address '127.0.0.1:72547' is not HOST:PORT with a port from 1 to "
                                        "65535"),
    ("--index-address=h:1,h:1", "--index-address names h:1 more than once"),
    # Tracebacks at start, and a database that is no number read as database 0.
    ("--redis-url=redis://127.0.0.1:99999/0", "--redis-url 'redis://127.0.0.1:99999/0': Port out of range 0-65535"),
    ("--redis-url=redis://127.0.0.1:7001/abc", "--redis-url 'redis://127.0.0.1:7001/abc': the database 'abc' is not "
                                               "a number"),
    ("--redis-url=redis+cluster://", "--redis-url 'redis+cluster://': a cluster URL lists its nodes as host:port"),
    ("--redis-url=redis+cluster://h:1,h:99999", "--redis-url 'redis+cluster://h:1,h:99999': a cluster URL lists its "
                                                "nodes as host:port[,host:port...]; got 'h:1,h:99999'"),
])
def test_a_query_flag_that_no_wait_or_expiry_can_use_is_refused(capsys, flag, says):
    from query_service.server import QueryServiceConfig, build_parser
    from settings.flags import parse

    with pytest.raises(SystemExit) as exit_:
        parse(build_parser(), QueryServiceConfig, ["--registry", "/r", "--model", "m", "--index-address", "h:1", flag]
              if not flag.startswith("--index-address") else ["--registry", "/r", "--model", "m", flag])
    assert exit_.value.code == 2
    assert f"error: {says}" in capsys.readouterr().err


def test_only_the_query_service_limits_the_streams_of_a_connection():
    # An index slot's callers are query replicas, each multiplexing its searches of a version over one connection
    # (RecommendSimilar's unbatched): at 64 streams a healthy endpoint refused searches and was passed over.
    import dataclasses

    from index_service.server import IndexServiceConfig
    from query_service.server import QueryServiceConfig

    def fields(config) -> set[str]:
        return {f.name for f in dataclasses.fields(config)}

    # Nor do they bound the calls not yet taken: a query replica's searches of a version queue behind each other.
    only_query = fields(QueryServiceConfig) - fields(IndexServiceConfig)
    assert {"max_streams_per_connection", "max_pending_calls"} <= only_query


def test_recsys_train_help_shows_the_presets_defaults_not_the_fields():
    """The training flags default to the tower family's preset (the group's title says so), yet their help showed
    TrainConfig's field defaults: "--l2 ... default 0.0" where --tower history trains with 0.03."""
    from trainer import cli
    from trainer.config import PRESETS

    help_text = " ".join(cli.build_parser().format_help().split())
    history = PRESETS["history"]
    assert f"(env RECSYS_L2, default {PRESETS['id'].towers.l2}; {history.towers.l2} in the history preset)" in help_text
    assert (f"(env RECSYS_HISTORY_DROPOUT, default {PRESETS['id'].towers.history_dropout}; "
            f"{history.towers.history_dropout} in the history preset)") in help_text
    assert "(env RECSYS_USE_CUSTOMER_ID, default off; on in the history, sequence presets)" in help_text
    assert "(env RECSYS_TOWER, default id)" in help_text  # the flag that picks the preset
    assert "(env RECSYS_EMBEDDING_DIM, default 64)" in help_text  # alike in every preset
