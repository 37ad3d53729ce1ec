"""The configuration both servers share (each flag also ``$RECSYS_<FLAG>``)."""

from __future__ import annotations

import dataclasses
import ipaddress

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from model_registry import signing
from model_registry.registry import check_model_name
from serving.rpc.tls import ServerTls
from serving.telemetry.observability import LOG_FORMATS
from serving.telemetry.tracing import TracingConfig
from serving.validation import DEFAULT_MAX_MESSAGE_BYTES
from settings.flags import MAX_INT32, MAX_DEADLINE_S, ConfigError, option, require, require_valid


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a port to this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback  # IPv6 bracketed or not
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    """The admin plane: its own server, so it can stay on loopback behind a token."""

    host: str = option("127.0.0.1", "admin plane bind address (keep it private)")
    port: int = option(0, "admin plane port (0 picks a free one)")
    token: str = option("", "bearer token required on admin calls (required off loopback)", secret=True)

    def __post_init__(self) -> None:
        require(0 <= self.port < 65536, "port", "must be a TCP port (0 picks a free one)")
        require(bool(self.token) or is_loopback(self.host), "token",
                f"is required with --admin-host {self.host}: off loopback, anyone who reaches the port could "
                "load, promote and unload versions")
        require_valid(check_token, self.token, "token")


def check_token(token: str) -> None:
    """Raises ValueError unless ``token`` can be sent as gRPC metadata, which carries printable ASCII only: another
    (a line break from `echo`, a non-ASCII letter) could never be sent, and the admin plane would refuse every call;
    a tool given one failed inside gRPC ("INTERNAL: Invalid metadata", with its trace). The message holds no part
    of the token."""
    if not (token.isascii() and token.isprintable() and " " not in token):
        raise ValueError(f"must be printable ASCII without spaces (what a gRPC header carries); this one has "
                         f"{len(token)} characters, some of them not")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """What every serving process has: what to serve, where, and how to log.
    Each service's config extends it (and gives its own default ports)."""

    registry: str = option(help="model registry root directory")
    model: str = option(help="model name under the registry")
    version: int = option(0, "hold this version (0: what the registry says: a query replica follows its pointers, an "
                             "index slot its slot record; a slot whose record holds the live version takes no other)")
    manifest_public_key: str = option("", "PEM file of the publisher's Ed25519 public key: only versions whose "
                                          "manifest it signed load (recsys-train --signing-key-file), and only "
                                          "catalogue deltas it signed apply (recsys-catalogue --signing-key-file); "
                                          "empty: any")
    host: str = option("127.0.0.1", "address to bind (0.0.0.0 for all interfaces)")
    port: int = option(0, "gRPC data-plane port (0 picks a free one)")
    admin: AdminConfig = option(AdminConfig(), "admin plane", prefix="admin-")
    tls: ServerTls = option(ServerTls(), "TLS of the data and admin planes", prefix="tls-")
    drain_s: float = option(2.0, "on SIGTERM, report NOT_SERVING but keep answering this long, then stop taking "
                                 "calls (balancers move off a query replica meanwhile; the query tier stops "
                                 "searching an index slot at once, so misses fail if no other slot holds its "
                                 "version)", flag="shutdown-drain-s")
    metrics_host: str = option("127.0.0.1", "Prometheus /metrics bind address (0.0.0.0 for all interfaces)")
    metrics_port: int = option(0, "Prometheus /metrics port, 0 to disable")
    max_concurrent_rpcs: int = option(1000, "RPCs the data plane runs at once (status streams included, health "
                                            "checks not); more are refused RESOURCE_EXHAUSTED at once, never queued")
    max_message_bytes: int = option(DEFAULT_MAX_MESSAGE_BYTES, "largest message the data plane receives or sends")
    log_level: str = option("info", "logging level", choices=("debug", "info", "warning", "error"))
    log_format: str = option("text", "log lines as text, or as one JSON object each (timestamp, level, logger, "
                                     "message, request_id)", choices=LOG_FORMATS)
    echo_request_id: bool = option(False, "return x-request-id in the trailers of every call, not only of failed "
                                          "ones (costs grpc.aio 20-40 us of CPU per call)")
    tracing: TracingConfig = option(TracingConfig(), "OpenTelemetry tracing (off unless an endpoint or the console "
                                                     "is given)", prefix="otel-")

    def __post_init__(self) -> None:
        require_valid(check_model_name, self.model, "model")
        require(self.version >= 0, "version", "must be >= 0")
        try:
            self.public_key()
        except ValueError as e:
            raise ConfigError("manifest_public_key", str(e)) from None
        require(0 <= self.port < 65536, "port", "must be a TCP port (0 picks a free one)")
        require(0 <= self.metrics_port < 65536, "metrics_port", "must be a TCP port (0: no /metrics)")
        # inf, or 1e300: a SIGTERM never stops it.
        require(0 <= self.drain_s <= MAX_DEADLINE_S, "drain_s", f"must be >= 0 and at most {MAX_DEADLINE_S:g}")
        require(self.max_concurrent_rpcs >= 1, "max_concurrent_rpcs", "must be >= 1")
        # gRPC's channel arguments are C ints: past them, an OverflowError's traceback once the service had loaded.
        require(1 << 16 <= self.max_message_bytes <= MAX_INT32, "max_message_bytes", f"must be from 65536 to "
                f"{MAX_INT32} (2 GiB)")

    def public_key(self) -> Ed25519PublicKey | None:
        """The key versions must be signed with, if one is configured."""
        return signing.public_key(self.manifest_public_key) if self.manifest_public_key else None
