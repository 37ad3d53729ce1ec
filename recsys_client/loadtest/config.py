"""What a load run is: its rate, length, customers, mix of RPCs and swap (``LoadConfig``, ``SwapConfig``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from recsys_client.fleet import FleetConfig
from serving.rpc.tls import ClientTls
from settings.flags import MAX_DEADLINE_S, MAX_INT32


DISTRIBUTIONS = ("uniform", "zipf")
# The RPCs a run can mix, by their code in RequestLog.
RPCS = ("recommend", "similar", "batch", "record")
RECOMMEND_ONLY = {"recommend": 1.0}


def parse_rpc_mix(text: str) -> dict[str, float]:
    """``recommend=0.8,similar=0.1,record=0.1`` -> shares summing to 1, in RPCS order."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in RPCS:
            raise ValueError(f"unknown RPC {name!r}; choose from {', '.join(RPCS)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"{part!r} is not NAME=WEIGHT") from None
        if not 0 <= weights[name] < math.inf:  # inf would make every share nan
            raise ValueError(f"the weight of {name} must be >= 0 and finite")
    total = sum(weights.values())
    if not total > 0:
        raise ValueError("give at least one RPC a positive weight")
    return {name: weights[name] / total for name in RPCS if weights.get(name)}




@dataclass
class SwapConfig:
    """Blue-green publish of ``version`` at ``at_s`` seconds into the run, and an
    optional rollback at ``rollback_at_s`` (both relative to the first request)."""

    registry: Path
    model: str
    index_admin: list[str]
    query_admin: list[str]
    version: int
    at_s: float
    rollback_at_s: float | None = None
    admin_token: str = ""
    admin_timeout_s: float = FleetConfig.timeout_s  # recsys-publish's --timeout-s default
    tls: ClientTls = ClientTls()  # to the admin planes

    def __post_init__(self) -> None:
        self.registry = Path(self.registry)
        if not self.index_admin or not self.query_admin:
            raise ValueError("a swap needs at least one index and one query admin address")
        if self.version < 1:
            raise ValueError(f"swap version must be >= 1, got {self.version}")
        if self.at_s < 0:
            raise ValueError(f"swap-at-s must be >= 0, got {self.at_s}")
        if self.rollback_at_s is not None and self.rollback_at_s < self.at_s:
            raise ValueError(f"rollback-at-s ({self.rollback_at_s}) is before swap-at-s ({self.at_s})")


MAX_REQUESTS = 50_000_000  # a run's schedule: ~100 bytes a request drawn up front
MAX_ZIPF_CUSTOMERS = 100_000_000  # a Zipf draw's weights: 8 bytes a customer


@dataclass
class LoadConfig:
    """Everything one load run needs; see the module docstring for the meaning."""

    address: str
    qps: float
    duration_s: float
    concurrency: int = 512
    k: int = 10
    timeout_s: float = 2.0
    channels: int = 2
    num_customers: int = 300
    customer_format: str = "c{:06d}"
    distribution: str = "uniform"
    zipf_s: float = 1.1
    seed: int = 0
    sample_responses: int = 0
    swap: SwapConfig | None = None
    tls: ClientTls = ClientTls()  # to the query service
    rpc_mix: dict[str, float] = field(default_factory=lambda: dict(RECOMMEND_ONLY))  # RPC -> share of requests
    batch_size: int = 8
    num_candidates: int = 200
    candidate_format: str = "i{:06d}"

    def __post_init__(self) -> None:
        for name in ("qps", "duration_s", "timeout_s"):
            # inf: no schedule can be made of it, and no connect timeout (a run that never ends on a server down)
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {getattr(self, name)}")
        if self.timeout_s > MAX_DEADLINE_S:  # every request failed at once past ~1e10 s: gRPC's deadline overflows
            raise ValueError(f"timeout_s must be at most {MAX_DEADLINE_S:g} (a day), got {self.timeout_s}")
        if self.k > MAX_INT32:  # the request's k is an int32: every request failed in the client
            raise ValueError(f"k must be below 2**31, got {self.k}")
        for name in ("concurrency", "k", "channels", "num_customers", "batch_size", "num_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.sample_responses < 0:
            raise ValueError(f"sample_responses must be >= 0, got {self.sample_responses}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}")
        if self.distribution == "zipf" and not self.zipf_s > 0:
            raise ValueError(f"zipf_s must be > 0, got {self.zipf_s}")
        # Drawn up front (a customer id string a request, a probability a Zipf customer): past these the run
        # asked for terabytes and died of a MemoryError's traceback.
        if self.qps * self.duration_s > MAX_REQUESTS:
            raise ValueError(f"qps x duration_s is {self.qps * self.duration_s:.3g} requests, over the "
                             f"{MAX_REQUESTS:,} one run draws up front: split it into several runs")
        if self.distribution == "zipf" and self.num_customers > MAX_ZIPF_CUSTOMERS:
            raise ValueError(f"num_customers must be at most {MAX_ZIPF_CUSTOMERS:,} with the zipf distribution, got "
                             f"{self.num_customers:,} (past the first million, Zipf's weights hardly change)")
        for name in ("customer_format", "candidate_format"):  # fail now, not mid-run, on a bad format
            try:
                getattr(self, name).format(0)
            except (ValueError, LookupError, TypeError, AttributeError) as e:
                raise ValueError(f"{name} {getattr(self, name)!r} cannot format a number: {type(e).__name__}: "
                                 f"{e}") from None
        if set(self.rpc_mix) - set(RPCS) or not math.isclose(sum(self.rpc_mix.values()), 1.0):
            raise ValueError(f"rpc_mix must give shares of {RPCS} summing to 1, got {self.rpc_mix}")
        if self.swap is not None:  # else it changes the live version with no load to measure around it
            for name, at in (("swap-at-s", self.swap.at_s), ("rollback-at-s", self.swap.rollback_at_s)):
                if at is not None and at >= self.duration_s:
                    raise ValueError(f"{name} ({at:g}) must fall within the run (--duration-s {self.duration_s:g})")

    @property
    def total_requests(self) -> int:
        """Requests the schedule holds: one every 1/qps seconds in [0, duration_s)."""
        return max(1, math.ceil(self.qps * self.duration_s - 1e-9))
