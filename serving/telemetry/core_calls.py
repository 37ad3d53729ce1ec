"""The calls gRPC's C core counts for each server of this process, exported at scrape time.

A call the core refuses, one past ``--max-pending-calls`` of its method, never
reaches Python: no interceptor, no handler, no status Python could see, so the
services' own metrics (``recsys_rpc_latency_seconds``) miss it, and an overload
refused there left no trace on the replica. The core's channelz counters do see
it: such a call is started but neither succeeds nor fails (measured on grpcio
1.85: a burst of 40 calls at a pending limit of 2 read 40 started, 9 succeeded,
0 failed, and its caller saw 31 refused; a call whose caller left or whose
deadline passed counts as failed).
So ``started - succeeded - failed``, over a window, is the calls refused in the
core plus the change in those in progress (waiting, in a handler, or an open
stream such as a health watch). Streams refused past
``--max-streams-per-connection`` are not started at all and show nowhere.

channelz is on by default in gRPC. It is read here as JSON through
``grpc._cython.cygrpc``, the functions grpcio's own ``grpcio-channelz`` package
calls (that package serves channelz to remote callers over gRPC; it is not
installed here). The unit test of the pending limit reads them from the
Prometheus registry, and the services' integration test from /metrics, so a
grpcio that changed them would fail those tests.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections import Counter
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from serving.telemetry.log_throttle import LogThrottle

log = logging.getLogger(__name__)

# channelz's field for each exported counter.
FIELDS = {"started": "callsStarted", "succeeded": "callsSucceeded", "failed": "callsFailed"}
LISTENER_PREFIX = "chttp2 listener "
UNREADABLE_LOG_S = 3600.0  # a scrape every 15 s must not log every 15 s


def _listen(server: dict) -> str:
    """A server's listening addresses as it was given them (``ipv4:0.0.0.0:50051``), for its label."""
    names = [urllib.parse.unquote(s.get("name", "")).removeprefix(LISTENER_PREFIX)
             for s in server.get("listenSocket", [])]
    return ",".join(sorted(names)) or "(none)"


def read_servers() -> dict[tuple[str, str], Counter]:
    """Each live gRPC server's channelz call counters, by (listening addresses, channelz server id): one series a
    server, so that one stopping (its counts leave channelz with it) ends its own series and lowers no other's (two
    servers on port 0 have the same addresses)."""
    from grpc._cython import cygrpc  # noqa: PLC0415 - grpcio's own channelz reader (see the module docstring)

    counts: dict[tuple[str, str], Counter] = {}
    start = 0
    while True:
        page = json.loads(cygrpc.channelz_get_servers(start))
        for server in page.get("server", []):
            data, server_id = server.get("data", {}), int(server["ref"]["serverId"])
            counts[_listen(server), str(server_id)] = Counter(
                {name: int(data.get(field, 0)) for name, field in FIELDS.items()})
            start = max(start, server_id + 1)
        if page.get("end", False) or not page.get("server"):
            return counts


def unended(total: Callable[[str], float]) -> float:
    """Calls started and neither succeeded nor failed (refused in the core, or in progress), given ``total(name)``:
    the sum of ``recsys_grpc_server_calls_<name>_total`` wherever its caller read them."""
    return total("started") - total("succeeded") - total("failed")


class CoreCallCollector(Collector):
    """``recsys_grpc_server_calls_{started,succeeded,failed}_total`` of every gRPC server in this process, labelled by
    its listening addresses (``listen``) and channelz id (``server_id``), read from channelz when /metrics is
    scraped."""

    def __init__(self) -> None:
        self._unreadable_log = LogThrottle()

    def collect(self) -> Iterator[CounterMetricFamily]:
        families = {name: CounterMetricFamily(
            f"recsys_grpc_server_calls_{name}", f"Calls {name} by this gRPC server as its C core counts them "
            "(channelz): calls it refuses past --max-pending-calls are started and neither succeeded nor failed",
            labels=["listen", "server_id"]) for name in FIELDS}
        try:
            servers = read_servers()
        except Exception as e:  # noqa: BLE001 - a scrape must not fail for the core's counters
            if self._unreadable_log.due("channelz", UNREADABLE_LOG_S) is not None:
                log.warning("gRPC's call counters (channelz) could not be read for /metrics: %s", e)
            servers = {}
        for labels, counts in sorted(servers.items()):
            for name, family in families.items():
                family.add_metric(list(labels), counts[name])
        yield from families.values()

    def describe(self) -> Iterator[CounterMetricFamily]:
        return iter(())
