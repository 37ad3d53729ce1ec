"""TLS and mutual TLS for every gRPC hop: the servers' ports (data and admin
planes), the query service's calls to the index endpoints, and the tools'
calls (recsys-publish, recsys-client).

Certificates are PEM files named by flags (or ``$RECSYS_<FLAG>``). A server
with ``--tls-cert``/``--tls-key`` serves TLS only; with ``--tls-client-ca`` too,
it accepts only clients presenting a certificate that CA signed (mTLS). A
client with a CA bundle verifies the server against it, and presents its own
certificate when given one. Without any of them the hop is plaintext, for
loopback development.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc

from serving.validation import DEFAULT_MAX_MESSAGE_BYTES
from settings.flags import ConfigError, option, require

# Every client channel's, unless its caller sets them.
CLIENT_OPTIONS = {"grpc.max_receive_message_length": DEFAULT_MAX_MESSAGE_BYTES}


def _client_options(options: list[tuple] | None) -> list[tuple]:
    options = list(options or ())
    given = {name for name, _ in options}
    return options + [(name, value) for name, value in CLIENT_OPTIONS.items() if name not in given]


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(field, f"cannot read {path}: {e.strerror}") from None


def _check_files(config) -> None:
    """A certificate goes with its key, and every file named can be read (at start, not at the first call)."""
    require(bool(config.cert) == bool(config.key), "cert", "and the key go together")
    for field in dataclasses.fields(config):
        if getattr(config, field.name):
            _read(getattr(config, field.name), field.name)


@dataclasses.dataclass(frozen=True)
class ServerTls:
    cert: str = option("", "PEM certificate (chain) of this server: its ports then serve TLS only; empty: plaintext")
    key: str = option("", "PEM private key of the certificate")
    client_ca: str = option("", "PEM CA bundle: clients must present a certificate it signed (mutual TLS)")

    def __post_init__(self) -> None:
        require(not self.client_ca or bool(self.cert), "client_ca", "needs the server's own certificate and key")
        _check_files(self)

    def credentials(self) -> grpc.ServerCredentials | None:
        """The server's credentials; None for plaintext."""
        if not self.cert:
            return None
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
        """The channel's credentials; None for plaintext."""
        if not self.ca:
            return None
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
