"""What the services and tools say when a TLS hop fails: the query service and the client tools name the TLS
flags when a connection fails like a refused handshake (and not when the port is closed), every tool reads the
same ``$RECSYS_TLS_*`` variables, and a server starting with an expired certificate warns."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import subprocess
from concurrent import futures

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2_grpc

from query_service.index.index_client import IndexEndpoint
from recsys_client import status
from recsys_client.fleet import Fleet, PublishError
from serving.rpc.tls import ClientTls, ServerTls
from tests.integration.test_tls import Authority, _name, _write
from tests.processes import console_script, free_port

pytestmark = pytest.mark.integration
HINT = "is it TLS?"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority(directory, "ca"), Authority(directory, "rogue-ca")
    return {"ca": ca.pem, "rogue_ca": rogue.pem, "server": ca.issue("server", server=True),
            "client": ca.issue("client", server=False), "authority": ca}


@pytest.fixture(scope="module")
def mtls_server(pki):
    """A gRPC server (health only) on a loopback port serving mutual TLS: its address."""
    server = grpc.server(futures.ThreadPoolExecutor(4))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, ServerTls(*pki["server"], client_ca=pki["ca"]).credentials())
    server.start()
    yield address
    server.stop(0)


async def _watch_for(endpoint: IndexEndpoint, seconds: float) -> None:
    task = asyncio.create_task(endpoint.watch(lambda: None))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await endpoint.close()


async def test_the_query_service_says_why_a_tls_slot_refuses_it(pki, caplog):
    server = grpc.aio.server()
    address = f"127.0.0.1:{free_port()}"
    server.add_secure_port(address, ServerTls(*pki["server"]).credentials())
    await server.start()
    try:
        caplog.set_level(logging.WARNING, logger="query_service.index.index_client")
        refusals = {"Socket closed": ClientTls(), "CERTIFICATE_VERIFY_FAILED": ClientTls(ca=pki["rogue_ca"])}
        for words, tls in refusals.items():
            caplog.clear()
            await _watch_for(IndexEndpoint(address, tls), 2.0)  # several reconnects: one line, not one each
            lines = [r.getMessage() for r in caplog.records if address in r.getMessage()]
            assert len(lines) == 1 and all(r.levelno == logging.WARNING for r in caplog.records), lines
            assert words in lines[0] and "--index-tls-ca" in lines[0], lines[0]
    finally:
        await server.stop(0)


async def test_a_closed_index_port_gets_no_tls_hint(caplog):
    caplog.set_level(logging.WARNING, logger="query_service.index.index_client")
    address = f"127.0.0.1:{free_port()}"
    await _watch_for(IndexEndpoint(address), 1.0)
    lines = [r.getMessage() for r in caplog.records if address in r.getMessage()]
    assert len(lines) == 1 and "Connection refused" in lines[0] and HINT not in lines[0], lines


def _tool(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([console_script(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_the_tools_name_tls_when_the_handshake_fails(pki, mtls_server):
    closed = f"127.0.0.1:{free_port()}"
    no_client_cert = ["--tls-ca", pki["ca"]]
    for flags in ([], no_client_cert):
        result = _tool("recsys-client", "health", "--address", mtls_server, *flags)
        assert result.returncode == 1 and HINT in result.stderr and "--tls-cert" in result.stderr, result.stderr
    result = _tool("recsys-client", "health", "--address", closed)
    assert result.returncode == 1 and "Connection refused" in result.stderr and HINT not in result.stderr
    for tls in (ClientTls(), ClientTls(ca=pki["ca"])):
        with pytest.raises(PublishError, match=f"no admin server answers there with these TLS settings.*{HINT}"):
            Fleet.connect([mtls_server], [], connect_timeout_s=1, tls=tls)
    with pytest.raises(PublishError) as refused:
        Fleet.connect([closed], [], connect_timeout_s=1)
    assert "no admin server answers there (waited 1 s)" in str(refused.value) and HINT not in str(refused.value)
    (reached,) = status.gather([mtls_server], [], timeout_s=2)
    assert reached.status is None and HINT in reached.error, reached.error  # recsys-client status's table
    # recsys-loadtest waits 10 s for its channels before saying why (a closed port's refusal: recsys-client above).
    result = _tool("recsys-loadtest", "--address", mtls_server, "--qps", "1", "--duration-s", "1")
    assert result.returncode == 1 and HINT in result.stderr, result.stderr


def test_every_tool_reads_tls_from_the_environment(pki, mtls_server, tmp_path):
    client_crt, client_key = pki["client"]
    env = {"RECSYS_TLS_CA": pki["ca"], "RECSYS_TLS_CERT": client_crt, "RECSYS_TLS_KEY": client_key}
    result = _tool("recsys-client", "health", "--address", mtls_server, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "SERVING", result.stderr
    # The server has no query service: calls that reach it are UNIMPLEMENTED, which a refused handshake is not.
    result = _tool("recsys-loadtest", "--address", mtls_server, "--qps", "5", "--duration-s", "1", "--quiet", env=env)
    assert json.loads(result.stdout)["errors_by_code"] == {"UNIMPLEMENTED": 5}, result.stderr
    result = _tool("recsys-publish", "--registry", str(tmp_path), "--model", "m", "--initial", "--index-admin",
                   mtls_server, "--connect-timeout-s", "5", env=env)
    # Past the connection (which fails without TLS: see above), to the empty registry.
    assert "no published version of m" in result.stderr and "no admin server" not in result.stderr, result.stderr


def test_a_server_with_an_expired_certificate_warns_at_start(pki, tmp_path, caplog):
    authority: Authority = pki["authority"]
    now = datetime.datetime.now(datetime.timezone.utc)
    for stem, (start, end) in {"expired": (now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)),
                               "early": (now + datetime.timedelta(days=1), now + datetime.timedelta(days=2))}.items():
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(authority.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end).sign(authority.key, hashes.SHA256()))
        crt, key_path = _write(tmp_path, stem, key, cert)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="serving.rpc.tls"):
            ServerTls(cert=crt, key=key_path).credentials()
        assert [r.levelno for r in caplog.records] == [logging.WARNING], caplog.text
        assert crt in caplog.text and end.strftime("%Y-%m-%d %H:%M:%S") in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serving.rpc.tls"):
        ServerTls(*pki["server"]).credentials()
    assert not caplog.records
