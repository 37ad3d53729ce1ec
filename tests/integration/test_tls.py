"""TLS and mutual TLS on every hop, with certificates made at run time: a
client reaches the query service, the query service reaches the index slot,
and the tools reach the admin planes, each only with a certificate the CA
signed; plaintext and foreign certificates are refused."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.recsys.v1 import retrieval_pb2 as pb
from protos.recsys.v1 import retrieval_pb2_grpc as pb_grpc
from query_service.storage.cache import CacheConfig, CachedResult, ResultCache, cache_key
from recsys_client.fleet import Fleet, PublishError
from serving.rpc.tls import ClientTls
from tests.conftest import RedisProcess
from tests.integration.conftest import index_slot, query_replica
from tests.processes import console_script, free_port, start_all

pytestmark = pytest.mark.integration


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, key, cert: x509.Certificate) -> tuple[str, str]:
    (directory / f"{stem}.key").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(Encoding.PEM))
    return str(directory / f"{stem}.crt"), str(directory / f"{stem}.key")


class Authority:
    """A throwaway certificate authority in ``directory``."""

    def __init__(self, directory: Path, name: str):
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem, _ = _write(directory, name, self.key, self.cert)

    def issue(self, name: str, server: bool) -> tuple[str, str]:
        """(certificate, key) paths of a leaf for 127.0.0.1 / localhost (server) or a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return _write(self.directory, name, key, builder.sign(self.key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, rogue = Authority(directory, "ca"), Authority(directory, "rogue-ca")
    return {"ca": ca.pem, "server": ca.issue("server", server=True), "client": ca.issue("client", server=False),
            "rogue_client": rogue.issue("rogue-client", server=False)}


def test_every_hop_needs_a_certificate_the_ca_signed(trained_registry, pki, tmp_path):
    (server_crt, server_key), (client_crt, client_key) = pki["server"], pki["client"]
    serve_tls = ["--tls-cert", server_crt, "--tls-key", server_key, "--tls-client-ca", pki["ca"]]
    client = ClientTls(ca=pki["ca"], cert=client_crt, key=client_key)
    slot = index_slot(trained_registry, "blue", tmp_path / "index.log", *serve_tls)
    slot.credentials = client.credentials()
    query = query_replica(trained_registry, [slot], tmp_path / "query.log", *serve_tls,
                          "--index-tls-ca", pki["ca"], "--index-tls-cert", client_crt, "--index-tls-key", client_key)
    query.credentials = client.credentials()
    try:
        start_all(slot, query)
        with client.channel(query.address) as channel:  # client -> query -> index, all mutual TLS
            response = pb_grpc.QueryServiceStub(channel).Recommend(
                pb.RecommendRequest(customer_id="c000001", k=10), timeout=10)
            assert len(response.candidates) == 10 and response.source == pb.RESULT_SOURCE_MODEL
        refused = {"plaintext": ClientTls(),
                   "TLS without a client certificate": ClientTls(ca=pki["ca"]),
                   "a certificate of another CA": ClientTls(ca=pki["ca"], cert=pki["rogue_client"][0],
                                                            key=pki["rogue_client"][1])}
        for what, tls in refused.items():
            with tls.channel(query.address) as channel, pytest.raises(grpc.RpcError) as err:
                pb_grpc.QueryServiceStub(channel).Recommend(pb.RecommendRequest(customer_id="c000001", k=10),
                                                            timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, what
        # The admin planes take the same certificates: the rollout tool connects with them, and not without.
        fleet = Fleet.connect([slot.admin_address], [query.admin_address], tls=client)
        try:
            assert [s.service for s in map(fleet.status, fleet.index + fleet.query)] == ["index", "query"]
        finally:
            fleet.close()
        with pytest.raises(PublishError, match="no admin server answers"):
            Fleet.connect([slot.admin_address], [], connect_timeout_s=1)
        health = subprocess.run([console_script("recsys-client"), "health", "--address", query.address,
                                 "--tls-ca", pki["ca"], "--tls-cert", client_crt, "--tls-key", client_key],
                                capture_output=True, text=True, timeout=60)
        assert health.returncode == 0 and health.stdout.strip() == "SERVING", health.stderr
        load = subprocess.run([console_script("recsys-loadtest"), "--address", query.address, "--qps", "50",
                               "--duration-s", "1", "--tls-ca", pki["ca"], "--tls-cert", client_crt,
                               "--tls-key", client_key], capture_output=True, text=True, timeout=120)
        assert load.returncode == 0, load.stderr[-2000:]
        report = json.loads(load.stdout)
        assert report["requests"]["ok"] == report["requests"]["scheduled"] == 50 and report["requests"]["errors"] == 0
    finally:
        query.stop()
        slot.stop()


async def test_the_result_cache_reaches_redis_over_tls(pki):
    server_crt, server_key = pki["server"]
    client_crt, client_key = pki["client"]
    tls_port = free_port()
    redis_process = RedisProcess("--tls-port", str(tls_port), "--tls-cert-file", server_crt, "--tls-key-file",
                                 server_key, "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "yes")
    try:
        redis_process.start()
    except TimeoutError as e:
        redis_process.stop()
        pytest.skip(f"this redis-server does not start with TLS: {e}")
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={pki['ca']}"
    # A TLS handshake on a loaded 2-core CI machine can outlast the 50 ms serving timeout
    # (the put then fails, a miss by design); this test is about reachability, not latency.
    trusted = ResultCache(CacheConfig(f"{url}&ssl_certfile={client_crt}&ssl_keyfile={client_key}", local_mb=0,
                                      timeout_s=2.0))
    anonymous = ResultCache(CacheConfig(url, local_mb=0, timeout_s=2.0))  # TLS, but no client certificate: refused
    key = cache_key("m", 1, "tls", 1, frozenset())
    try:
        await trusted.put(key, CachedResult(["i1"], [1.0], "model"))
        assert await trusted.get(key) == CachedResult(["i1"], [1.0], "model")
        assert await anonymous.get(key) is None  # a refused connection is a miss, not an error
    finally:
        await trusted.close()
        await anonymous.close()
        redis_process.stop()
