"""A client's own certificate is checked as a server's is. A server asking for mutual TLS refuses an expired (or
not yet valid) client certificate, and all the client hears is "Socket closed": the query service warns of it when
it makes its index channels, and the tools and the query service name it where they name TLS for a refused
handshake. A key that is not its certificate's is refused at parsing, not met as "Failed to create security
handshaker" (a client) or "Failed to bind" (a server)."""

from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from query_service.index.index_client import IndexEndpoint
from recsys_client import status
from serving.rpc.tls import ClientTls, ServerTls
from settings.flags import ConfigError
from tests.integration.test_tls import Authority, _name, _write
from tests.integration.test_tls_diagnostics import HINT, _tool, _watch_for, mtls_server  # noqa: F401 (a fixture)

DAY = datetime.timedelta(days=1)


def _leaf(authority: Authority, directory: Path, name: str, start: datetime.datetime,
          end: datetime.datetime) -> dict:
    """A client certificate ``authority`` signed, valid from ``start`` to ``end``: its paths and its end."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(authority.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end).sign(authority.key, hashes.SHA256()))
    crt, key_path = _write(directory, name, key, cert)
    return {"cert": crt, "key": key_path, "name": name, "end": end.strftime("%Y-%m-%d %H:%M:%S")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = Authority(directory, "ca")
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"ca": ca.pem, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "expired": _leaf(ca, directory, "expired-client", now - 2 * DAY, now - DAY),
            # Another for the query service: a process warns of a certificate once.
            "expired_index": _leaf(ca, directory, "expired-index-client", now - 2 * DAY, now - DAY),
            "early": _leaf(ca, directory, "early-client", now + DAY, now + 2 * DAY)}


def test_the_tools_name_an_expired_client_certificate_the_server_refused(pki, mtls_server):
    expired = pki["expired"]
    tls = ClientTls(pki["ca"], expired["cert"], expired["key"])
    (reached,) = status.gather([mtls_server], [], timeout_s=2, tls=tls)  # recsys-client status's table
    # gRPC's own words: the server's refusal reaches the client as a closed socket, naming no certificate.
    assert "Socket closed" in reached.error and HINT in reached.error, reached.error
    assert (f"the client certificate {expired['cert']} (CN=expired-client) expired at {expired['end']}"
            in reached.error and "--tls-cert / $RECSYS_TLS_CERT" in reached.error), reached.error
    result = _tool("recsys-client", "health", "--address", mtls_server,
                   env={"RECSYS_TLS_CA": pki["ca"], "RECSYS_TLS_CERT": expired["cert"],
                        "RECSYS_TLS_KEY": expired["key"]})
    error = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and error.startswith("recsys-client: UNAVAILABLE"), result.stderr
    assert f"CN=expired-client) expired at {expired['end']}" in error and "RECSYS_TLS_CERT" in error, error


@pytest.mark.parametrize("which, words", [("expired_index", "expired at"), ("early", "is not valid before")])
async def test_the_query_service_warns_of_its_client_certificate_at_start(pki, mtls_server, caplog, which, words):
    leaf = pki[which]
    tls = ClientTls(pki["ca"], leaf["cert"], leaf["key"])
    caplog.set_level(logging.WARNING)
    endpoints = [IndexEndpoint(mtls_server, tls), IndexEndpoint(mtls_server, tls)]  # routing's, at start
    warnings = [r.getMessage() for r in caplog.records if r.name == "serving.rpc.tls"]
    assert len(warnings) == 1 and f"{leaf['cert']} (CN={leaf['name']}) {words}" in warnings[0], warnings
    await endpoints[1].close()
    caplog.clear()
    await _watch_for(endpoints[0], 1.0)
    (line,) = [r.getMessage() for r in caplog.records if mtls_server in r.getMessage()]
    assert f"CN={leaf['name']}) {words}" in line and "--index-tls-cert / $RECSYS_INDEX_TLS_CERT" in line, line


def test_a_valid_client_certificate_is_not_warned_about(pki, mtls_server, caplog):
    crt, key = pki["client"]
    with caplog.at_level(logging.WARNING, logger="serving.rpc.tls"):
        (reached,) = status.gather([mtls_server], [], timeout_s=2, tls=ClientTls(pki["ca"], crt, key))
    assert reached.error.startswith("UNIMPLEMENTED") and not caplog.records, (reached.error, caplog.text)


def test_a_key_that_is_not_the_certificates_is_refused_at_parsing(pki):
    client_crt, client_key = pki["client"]
    server_crt, server_key = pki["server"]
    with pytest.raises(ConfigError, match=re.escape(f"{client_key} is not the private key of {server_crt}")) as refused:
        ServerTls(server_crt, client_key)
    assert refused.value.field == "key"
    with pytest.raises(ConfigError, match=re.escape(f"{server_key} is not the private key of {client_crt}")):
        ClientTls(pki["ca"], client_crt, server_key)
    result = _tool("recsys-client", "health", "--address", "127.0.0.1:1",
                   env={"RECSYS_TLS_CA": pki["ca"], "RECSYS_TLS_CERT": client_crt, "RECSYS_TLS_KEY": server_key})
    assert result.returncode == 2 and f"--tls-key {server_key} is not the private key" in result.stderr, \
        result.stderr


def test_a_ca_or_certificate_file_that_holds_no_certificate_is_refused_at_parsing(pki, tmp_path):
    """gRPC logged "Cannot load server root certificates" and every call failed UNAVAILABLE, with the hint to give
    --tls-ca: the flag just given."""
    not_pem = tmp_path / "hostname"
    not_pem.write_text("recsys-7f9c\n")
    with pytest.raises(ConfigError, match=re.escape(f"{not_pem} holds no PEM certificate")) as refused:
        ClientTls(str(not_pem))
    assert refused.value.field == "ca"
    client_crt, client_key = pki["client"]
    with pytest.raises(ConfigError, match=re.escape(f"{client_key} holds no PEM certificate")) as refused:
        ClientTls(pki["ca"], client_key, client_key)  # the key given for the certificate
    assert refused.value.field == "cert"
    server_crt, server_key = pki["server"]
    with pytest.raises(ConfigError, match=re.escape(f"{not_pem} holds no PEM certificate")) as refused:
        ServerTls(server_crt, server_key, str(not_pem))  # "cannot listen ... or the certificate and key are not usable"
    assert refused.value.field == "client_ca"
    result = _tool("recsys-client", "health", "--address", "127.0.0.1:1", env={"RECSYS_TLS_CA": str(not_pem)})
    assert result.returncode == 2 and f"--tls-ca {not_pem} holds no PEM certificate" in result.stderr, result.stderr
