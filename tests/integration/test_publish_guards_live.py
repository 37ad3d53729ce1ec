"""recsys-publish refuses, on real processes and before any change, what the operator walk-through got wrong:
another model's replicas, a replica given in the other role's flag, a data port given as an admin port."""

from __future__ import annotations

import pytest

from model_registry import Registry
from recsys_client.cli import main as client_main
from recsys_client.publish import main as publish_main
from tests.integration.conftest import MODEL, live_versions

pytestmark = pytest.mark.integration


def refusal(capsys, *argv: str) -> str:
    """recsys-publish's one-line refusal (exit 1) of ``argv``."""
    with pytest.raises(SystemExit) as exit:
        publish_main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 1 and err, err
    return err[-1]


def test_wrong_model_role_or_port_is_refused_naming_the_address_and_the_flag(trained_registry, index_service,
                                                                           query_service, capsys, tmp_path):
    registry = Registry(trained_registry, MODEL)
    pointers = registry.pointers()
    # Another model's registry (demo2 in the walk-through), with a rollback to make, given this model's replica.
    other = Registry(tmp_path, "other")
    other.model_dir.mkdir()
    line = refusal(capsys, "--registry", str(tmp_path), "--model", "other", "--rollback", "--query-admin",
                   query_service.admin_address)
    assert line == (f"recsys-publish: --query-admin {query_service.admin_address} is the query service of model "
                    f"'{MODEL}', not the query service of 'other': give --query-admin only the admin addresses of "
                    "'other''s query replicas; nothing changed")
    common = ["--registry", str(trained_registry), "--model", MODEL, "--version", "1"]
    line = refusal(capsys, *common, "--index-admin", query_service.admin_address, "--query-admin",
                   query_service.admin_address)
    assert line.startswith(f"recsys-publish: --index-admin {query_service.admin_address} is the query service of "
                           f"model '{MODEL}', not the index service"), line
    line = refusal(capsys, *common, "--index-admin", index_service.admin_address, "--query-admin",
                   index_service.admin_address)
    assert line.startswith(f"recsys-publish: --query-admin {index_service.admin_address} is the index service"), line
    line = refusal(capsys, *common, "--index-admin", index_service.address, "--query-admin",
                   query_service.admin_address)
    assert line.endswith(f"UNIMPLEMENTED: Method not found!; {index_service.address} is not an admin port: give the "
                         "replica's --admin-port address in --index-admin"), line
    assert live_versions(index_service.admin_address, query_service.admin_address) == [1, 1]
    assert registry.pointers() == pointers and other.pointers() == (None, None)


def test_recsys_client_given_a_port_of_another_plane_says_which_port_to_give(index_service, query_service, capsys):
    with pytest.raises(SystemExit) as exited:
        client_main(["recommend", "--address", index_service.address, "--customer-id", "c000001", "--k", "3"])
    line = capsys.readouterr().err.strip()
    assert exited.value.code == 1 and line.endswith(
        f"UNIMPLEMENTED: Method not found!; {index_service.address} is not a query service's data port (an index "
        "slot's, or an admin port?): give the query service's --port address in --address"), line
    with pytest.raises(SystemExit):
        client_main(["status", "--query-admin", query_service.address])
    assert (f"{query_service.address} is not an admin port: give the replica's --admin-port address in --query-admin"
            in capsys.readouterr().out)
