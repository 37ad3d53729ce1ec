"""The configuration both servers share (each flag also ``$RECSYS_<FLAG>``)."""

from __future__ import annotations

import dataclasses

from model_registry.registry import check_model_name
from settings.flags import ConfigError, option, require


@dataclasses.dataclass(frozen=True)
class AdminConfig:
    """The admin plane: its own server, so it can stay on loopback behind a token."""

    host: str = option("127.0.0.1", "admin plane bind address (keep it private)")
    port: int = option(0, "admin plane port (0 picks a free one)")
    token: str = option("", "bearer token required on admin calls; empty: none")

    def __post_init__(self) -> None:
        require(0 <= self.port < 65536, "port", "must be a TCP port (0 picks a free one)")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """What every serving process has: what to serve, where, and how to log.
    Each service's config extends it (and gives its own default ports)."""

    registry: str = option(help="model registry root directory")
    model: str = option(help="model name under the registry")
    version: int = option(0, "hold this version whatever the registry's pointers say (0: follow them)")
    host: str = option("127.0.0.1", "address to bind (0.0.0.0 for all interfaces)")
    port: int = option(0, "gRPC data-plane port (0 picks a free one)")
    admin: AdminConfig = option(AdminConfig(), "admin plane", prefix="admin-")
    metrics_port: int = option(0, "Prometheus /metrics port, 0 to disable")
    log_level: str = option("info", "logging level", choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model)
        except ValueError as e:
            raise ConfigError("model", str(e)) from None
        require(self.version >= 0, "version", "must be >= 0")
        require(0 <= self.port < 65536, "port", "must be a TCP port (0 picks a free one)")
