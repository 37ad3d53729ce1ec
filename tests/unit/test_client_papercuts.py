"""What the command-line tools tell their user: errors that say what is wrong, examples that run against a real
version's namespaces, hints that name the right command, and secrets kept out of argv."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from model_registry import Registry, VersionError
from model_registry.attributes import from_catalogue
from recsys_client import catalogue, cli, loadtest, publish, upserts
from recsys_client.candidate_tower import CandidateTower
from tests.unit.test_registry_retention import publish_dummy
from trainer.data.movielens import _movielens_items


def test_a_bad_rpc_mix_says_what_is_wrong_with_it(capsys):
    with pytest.raises(SystemExit) as exit_:
        loadtest.build_parser().parse_args(["--address", "h:1", "--qps", "1", "--duration-s", "1",
                                            "--rpc-mix", "recommend=0.8,similer=0.2"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "recsys-loadtest: error: argument --rpc-mix: unknown RPC 'similer'; choose from recommend, similar, batch, "
        "record")


@pytest.mark.parametrize("tool, argv, message", [
    (publish.main, ["--model", "../etc", "--index-admin", "i:1", "--query-admin", "q:1"],
     "recsys-publish: error: --model model name '../etc' must be 1-64 characters"),
    (catalogue.main, ["--model", "../x", "--delete", "a", "--index-admin", "i:1"],
     "recsys-catalogue: error: --model model name '../x' must be 1-64 characters"),
    # A replica named twice would be counted twice: as a status watcher the rollout expects, as a slot to unload.
    (publish.main, ["--model", "m", "--index-admin", "i:1", "--query-admin", "q:1,q:2,q:1"],
     "recsys-publish: error: --query-admin names q:1 more than once: list each once"),
    (catalogue.main, ["--model", "m", "--delete", "a", "--index-admin", "i:1,i:1"],
     "recsys-catalogue: error: --index-admin names i:1 more than once: list each once"),
])
def test_the_rollout_tools_refuse_a_bad_model_name_or_a_replica_named_twice_in_one_line(tool, argv, message, capsys,
                                                                                          tmp_path):
    with pytest.raises(SystemExit) as exit_:
        tool(["--registry", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1].startswith(message) and "Traceback" not in err, err


@pytest.mark.parametrize("k, message", [("99999999999", "99999999999 is out of range"),
                                        ("ten", "'ten' is not a whole number")])
def test_a_k_a_request_cannot_carry_is_refused_in_one_line(k, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["recommend", "--address", "127.0.0.1:1", "--customer-id", "c", "--k", k])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.splitlines()[-1] == f"recsys-client recommend: error: argument --k: " \
        f"{message}{': ask for 1 or more candidates (the service says its largest k)' if k[0].isdigit() else ''}", err


def test_a_catalogue_run_with_nothing_to_do_says_so_in_one_sentence(tmp_path, capsys):
    publish_dummy(Registry(tmp_path, "m"))
    with pytest.raises(SystemExit) as exit_:
        catalogue.main(["--registry", str(tmp_path), "--model", "m", "--index-admin", "127.0.0.1:1"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "recsys-catalogue: error: --upserts or --delete / --delete-file is required: there is nothing to upsert or "
        "delete (--catch-up alone brings the replicas to the deltas published)")


@pytest.fixture
def movielens_namespaces(tmp_path):
    """(token, numeric) attribute namespaces of a MovieLens version, made as the trainer makes them."""
    flags = ["0"] * 19
    rows = [f"{i}|Film {i} (1995)|01-Jan-{1990 + i}||http://x|" + "|".join(flags[:8] + ["1"] + flags[9:])
            for i in range(1, 9)]
    (tmp_path / "u.item").write_text("\n".join(rows) + "\n", encoding="latin-1")
    _, columns = _movielens_items(tmp_path / "u.item", tmp_path / "u.genre")
    attributes = from_catalogue(columns)
    return frozenset(attributes.tokens), frozenset(attributes.numeric)


def _examples(doc: str) -> list[str]:
    """The example JSON lines of a tool's --help."""
    return [line.strip() for line in doc.splitlines() if line.strip().startswith('{"id"')]


class _Signature:
    """A candidate tower's serving signature that embeds every candidate as ones."""

    def __call__(self, candidate_id, **columns):
        return {"embedding": SimpleNamespace(numpy=lambda: np.ones((len(candidate_id), 2), np.float32))}


def test_the_catalogue_examples_fit_a_movielens_version(movielens_namespaces):
    tokens, numeric = movielens_namespaces
    by_vector, by_features = _examples(catalogue.__doc__)
    delta = upserts.read_upserts([by_vector.replace("0.1, ...", "0.1, 0.2")], 2, tokens, numeric)
    assert delta.attributes.numeric["release_year"].tolist() == [1997.0]
    # The features tower of a MovieLens version takes its catalogue's columns.
    tower = CandidateTower(_Signature(), frozenset({"release_year"}), frozenset({"title", "genres"}), None)
    delta = upserts.read_upserts([by_features], 2, tokens, numeric, lambda: tower)
    assert delta.attributes.numeric["release_year"].tolist() == [1995.0]


def test_the_client_filter_example_names_a_movielens_versions_namespaces(movielens_namespaces):
    tokens, numeric = movielens_namespaces
    example = re.search(r"::\n\n(.*?)\n\n", cli.__doc__, re.S).group(1)
    value = cli.parse_filter(example)
    assert {r.namespace for r in value.restricts} | {value.crowding_namespace} <= tokens
    assert {r.namespace for r in value.ranges} <= numeric


def _fake_training(monkeypatch, version: int) -> None:
    """recsys-train's pipeline as if it had published ``version`` of model m."""
    from trainer import pipeline
    from trainer.evaluation import report

    manifest = SimpleNamespace(model="m", version=version, num_candidates=1, embedding_dim=1,
                               index=SimpleNamespace(kind="brute_force", recall_at_10=1.0))
    monkeypatch.setattr(pipeline, "run", lambda config, log, strategy: (manifest, {}))
    monkeypatch.setattr(report, "print_table", lambda metrics: None)


def test_the_trainers_hint_names_the_first_rollout_or_a_later_one(tmp_path, monkeypatch, capsys):
    from trainer import cli as train_cli

    registry = Registry(tmp_path, "m")
    publish_dummy(registry)
    args = ["--dataset", "synthetic", "--registry", str(tmp_path), "--model", "m", "--quiet"]
    _fake_training(monkeypatch, 1)
    assert train_cli.main(args) == 0
    # No CURRENT yet: without --initial, recsys-publish demands query replicas, and none can start.
    assert "recsys-publish --initial --version 1" in capsys.readouterr().out
    publish_dummy(registry)
    registry.set_current(1)
    _fake_training(monkeypatch, 2)
    assert train_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "recsys-publish --version 2" in out and "--initial" not in out


def test_a_query_service_without_current_names_the_first_rollout(tmp_path):
    from query_service.server import QueryServiceConfig, build_parser, create_server
    from settings.flags import parse

    publish_dummy(Registry(tmp_path, "m"))
    config = parse(build_parser(), QueryServiceConfig, ["--registry", str(tmp_path), "--model", "m",
                                                         "--index-address", "127.0.0.1:1"])
    with pytest.raises(VersionError, match="recsys-publish --initial"):
        asyncio.run(create_server(config))


def test_health_of_an_unknown_service_names_the_services_there(capsys):
    server = grpc.server(ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    servicer.set("recsys.v1.QueryService", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(["recsys.v1.QueryService", health.SERVICE_NAME, reflection.SERVICE_NAME],
                                        server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["health", "--address", f"127.0.0.1:{port}", "--service", "nope"])
    finally:
        server.stop(None)
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        f"recsys-client: NOT_FOUND: no service 'nope' at 127.0.0.1:{port}; its services: '' (the whole server), "
        "recsys.v1.QueryService")


def test_status_takes_the_admin_token_from_a_file_or_the_environment(tmp_path, monkeypatch, capsys):
    token = tmp_path / "token"
    token.write_text("secret\n")
    args = cli.build_parser().parse_args(["status", "--query-admin", "h:1", "--admin-token-file", str(token)])
    assert args.admin_token == "secret"
    monkeypatch.setenv("RECSYS_ADMIN_TOKEN", "from-env")
    assert cli.build_parser().parse_args(["status", "--query-admin", "h:1"]).admin_token == "from-env"
    with pytest.raises(SystemExit):  # a token typed on the command line is never the token
        cli.build_parser().parse_args(["status", "--query-admin", "h:1", "--admin-token", str(tmp_path / "secret")])
    assert "cannot read" in capsys.readouterr().err
