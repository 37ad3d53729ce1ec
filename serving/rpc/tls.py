"""TLS and mutual TLS for every gRPC hop: the servers' ports (data and admin
planes), the query service's calls to the index endpoints, and the tools'
calls (recsys-publish, recsys-client, recsys-loadtest).

Certificates are PEM files named by flags (or ``$RECSYS_<FLAG>``). A server
with ``--tls-cert``/``--tls-key`` serves TLS only; with ``--tls-client-ca`` too,
it accepts only clients presenting a certificate that CA signed (mTLS). A
client with a CA bundle verifies the server against it, and presents its own
certificate when given one. Without any of them the hop is plaintext, for
loopback development.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import re
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from serving.validation import DEFAULT_MAX_MESSAGE_BYTES
from settings.flags import ConfigError, env_name, option, require

log = logging.getLogger(__name__)

# Every client channel's, unless its caller sets them.
CLIENT_OPTIONS = {"grpc.max_receive_message_length": DEFAULT_MAX_MESSAGE_BYTES}
# gRPC's words for a connection that failed in its TLS handshake: a TLS server reached in plaintext closes the
# socket at once ("Socket closed"), as does a server asking for a client certificate that none was sent for;
# a refused certificate or a plaintext server reached with TLS fail the handshake. A closed port says
# "Connection refused", which none of them match.
_HANDSHAKE_FAILURE = re.compile(r"socket closed|handshake|\bssl|\btls\b|certificate", re.IGNORECASE)
# The client certificates this process presented (``ClientTls.credentials``), each with what puts it out of its
# validity ('' if nothing), for ``tls_hint``: a server refusing an expired one closes the socket, and gRPC's
# details then name no certificate (nor do its callers, which hand it only those details).
_presented: dict[str, str] = {}


def _client_options(options: list[tuple] | None) -> list[tuple]:
    options = list(options or ())
    given = {name for name, _ in options}
    return options + [(name, value) for name, value in CLIENT_OPTIONS.items() if name not in given]


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(field, f"cannot read {path}: {e.strerror}") from None


def tls_hint(details: str, flags: str = "--tls-") -> str:
    """A hint naming the TLS flags (``flags``: their prefix) when ``details`` of a failed connection read as a
    failed TLS handshake (a TLS server reached in plaintext, a certificate one side refused), else ''; it names
    a client certificate this process presented out of its validity too."""
    if not _HANDSHAKE_FAILURE.search(details or ""):
        return ""
    where = f"{flags}cert / ${env_name(flags.lstrip('-') + 'cert')}"
    stale = "".join(f"; the client certificate {problem} ({where})" for problem in _presented.values() if problem)
    return (f" (is it TLS? give {flags}ca, and {flags}cert/{flags}key under mutual TLS, from the CA that signed "
            f"the server's certificate{stale})")


# A PEM certificate block as OpenSSL reads one: CERTIFICATE, TRUSTED CERTIFICATE, X509 CERTIFICATE.
_CERTIFICATE_BLOCK = re.compile(rb"-----BEGIN (?:TRUSTED |X509 )?CERTIFICATE-----")


def _check_files(config) -> None:
    """A certificate goes with its key, every file named can be read, and the CA, certificate and client CA files
    hold PEM certificates, checked at start, not at the first call. Of a CA file that is none, gRPC logged "Cannot
    load server root certificates" and each call failed UNAVAILABLE, with a hint to give the flag just given; of a
    client CA, a server said "cannot listen ... or the TLS certificate and key are not usable"."""
    require(bool(config.cert) == bool(config.key), "cert", "and the key go together")
    for field in dataclasses.fields(config):
        if getattr(config, field.name):
            data = _read(getattr(config, field.name), field.name)
            # Only a certificate block is asked for: cryptography's parser is stricter than gRPC's (it warns of
            # certificates in the system's own bundle).
            if field.name in ("ca", "cert", "client_ca") and not _CERTIFICATE_BLOCK.search(data):
                raise ConfigError(field.name, f"{getattr(config, field.name)} holds no PEM certificate "
                                              "(-----BEGIN CERTIFICATE-----)")
    if config.cert:
        _check_key(config.cert, config.key)


def _check_key(cert_path: str, key_path: str) -> None:
    """The key is the certificate's: else gRPC says only "Failed to create security handshaker" at each call
    (a client) or "Failed to bind to address" (a server)."""
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, "cert"))
        key = serialization.load_pem_private_key(_read(key_path, "key"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # not PEM, encrypted: gRPC refuses them, saying so
        return
    require(key.public_key() == cert.public_key(), "key", f"{key_path} is not the private key of {cert_path}")


def _out_of_validity(path: str) -> str:
    """What puts the certificate in ``path`` out of its validity now, which every peer checking it refuses:
    "PATH (SUBJECT) expired at ..." or "... is not valid before ..."; '' when nothing does."""
    try:
        cert = x509.load_pem_x509_certificate(_read(path, "cert"))
    except ValueError:  # not PEM: gRPC refuses it when it loads the credentials, saying so
        return ""
    now = datetime.datetime.now(datetime.timezone.utc)
    if now > cert.not_valid_after_utc:
        when = f"expired at {cert.not_valid_after_utc}"
    elif now < cert.not_valid_before_utc:
        when = f"is not valid before {cert.not_valid_before_utc} (until {cert.not_valid_after_utc})"
    else:
        return ""
    return f"{path} ({cert.subject.rfc4514_string()}) {when}"


def _present(path: str) -> None:
    """Notes the client certificate in ``path`` for ``tls_hint``, warning (once) when it is out of its validity:
    only servers asking for mutual TLS refuse it, so it is no reason to stop."""
    problem = _out_of_validity(path)
    if problem and _presented.get(path) != problem:
        log.warning("the client certificate %s: servers asking for mutual TLS will refuse the handshake", problem)
    _presented[path] = problem


@dataclasses.dataclass(frozen=True)
class ServerTls:
    cert: str = option("", "PEM certificate (chain) of this server: its ports then serve TLS only; empty: plaintext")
    key: str = option("", "PEM private key of the certificate")
    client_ca: str = option("", "PEM CA bundle: clients must present a certificate it signed (mutual TLS)")

    def __post_init__(self) -> None:
        require(not self.client_ca or bool(self.cert), "client_ca", "needs the server's own certificate and key")
        _check_files(self)

    def credentials(self) -> grpc.ServerCredentials | None:
        """The server's credentials; None for plaintext. Made as the server starts (logging set up by then,
        unlike at parsing), which warns of a certificate out of its validity."""
        if not self.cert:
            return None
        problem = _out_of_validity(self.cert)
        if problem:
            log.warning("the certificate %s: clients will refuse the handshake", problem)
        return grpc.ssl_server_credentials([(_read(self.key, "key"), _read(self.cert, "cert"))],
                                           root_certificates=_read(self.client_ca, "client_ca") if self.client_ca
                                           else None, require_client_auth=bool(self.client_ca))


@dataclasses.dataclass(frozen=True)
class ClientTls:
    ca: str = option("", "PEM CA bundle that signed the servers' certificates: TLS to them; empty: plaintext")
    cert: str = option("", "PEM certificate this client presents (servers asking for mutual TLS)")
    key: str = option("", "PEM private key of the client certificate")

    def __post_init__(self) -> None:
        require(not self.cert or bool(self.ca), "cert", "needs the CA bundle too (a client certificate is sent "
                                                        "over TLS only)")
        _check_files(self)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """The channel's credentials; None for plaintext. Made with the channels (the query service's index
        channels at its start), which warns of a client certificate out of its validity."""
        if not self.ca:
            return None
        if self.cert:
            _present(self.cert)
        return grpc.ssl_channel_credentials(_read(self.ca, "ca"),
                                            _read(self.key, "key") if self.key else None,
                                            _read(self.cert, "cert") if self.cert else None)

    def channel(self, address: str, options: list[tuple] | None = None) -> grpc.Channel:
        """A blocking channel to ``address``, taking answers as large as the data plane sends by default."""
        options = _client_options(options)
        credentials = self.credentials()
        if credentials is None:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, credentials, options=options)

    def aio_channel(self, address: str, options: list[tuple] | None = None) -> grpc.aio.Channel:
        """An asyncio channel to ``address``, as ``channel``."""
        options = _client_options(options)
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, credentials, options=options)

    def connect_failure(self, address: str, timeout_s: float = 2.0) -> str:
        """gRPC's details of why a call to ``address`` fails to connect, for a tool whose wait for its channel
        ran out; '' when a server answers now, or the call cannot tell within ``timeout_s``."""
        with self.channel(address) as channel:
            try:  # any method: a call that fails to connect says why, unlike a wait for the channel
                channel.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=timeout_s)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    return e.details() or ""
        return ""


@dataclasses.dataclass(frozen=True)
class ToolTls:
    """The TLS flags every client tool takes: ``--tls-ca``, ``--tls-cert``, ``--tls-key``, each defaulting to its
    ``$RECSYS_TLS_*`` variable (``settings.flags.add_flags``), as recsys-publish's."""

    tls: ClientTls = option(ClientTls(), "TLS to the servers", prefix="tls-")
