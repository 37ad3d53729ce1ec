"""Redis CPU per ``RecordInteractions`` append: what the live history's script costs the one thread a Redis has.

A real redis-server; each customer's list full (``--live-history-max``, 100) before the measured calls; each call
appends N ids, every third of them taken from the customer's list as it stands (read before the call, not measured),
so a third are repeats the script drops, by LiveHistory.record, the query service's own path. Redis's
``INFO commandstats`` gives the microseconds per EVALSHA, read after a ``CONFIG RESETSTAT``: the server's own time,
not the client's or the network's. Plain entries and entries sealed with a shared key (``--cache-key-file``) are
measured alike.

    python -m bench.live_history [--quick] [--calls 400] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys

from redis import Redis

from bench.common import git_commit, machine_info, table, write_json
from query_service.storage.live_history import LiveHistory, LiveHistoryConfig
from query_service.storage.redis_link import RedisLink
from tests.processes import RedisProcess

IDS_PER_CALL = (1, 3, 10, 11, 30, 100)
CUSTOMERS = 50
CATALOGUE = 5_000


async def append_cost(port: int, url: str, ids_per_call: int, calls: int, mac_key: bytes) -> float:
    """Microseconds of Redis CPU per append of ``ids_per_call`` ids onto full lists."""
    config = LiveHistoryConfig()
    history = LiveHistory(RedisLink(url, "", 5.0, 5.0), f"bench{ids_per_call}{len(mac_key)}", config, mac_key)
    rng = random.Random(ids_per_call)
    try:
        for customer in range(CUSTOMERS):
            await history.record(f"c{customer}", tuple(f"i{rng.randrange(CATALOGUE)}" for _ in range(config.max_items)))
        with Redis(host="127.0.0.1", port=port) as client:
            client.config_resetstat()
        for call in range(calls):
            customer = f"c{call % CUSTOMERS}"
            listed = await history.get(customer)  # an LRANGE: not in the EVALSHA figures
            ids = tuple(rng.choice(listed) if j % 3 == 2 else f"i{rng.randrange(CATALOGUE)}"
                        for j in range(ids_per_call))
            await history.record(customer, ids)
        with Redis(host="127.0.0.1", port=port) as client:
            return float(client.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
    finally:
        await history.close()
        await history.link.close()


async def run(calls: int) -> dict:
    redis = RedisProcess().start()
    try:
        return {entries: {str(n): round(await append_cost(redis.port, redis.url, n, calls, key), 1)
                          for n in IDS_PER_CALL}
                for entries, key in (("plain", b""), ("sealed", b"k" * 32))}
    finally:
        redis.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=400, help="measured appends per size")
    parser.add_argument("--quick", action="store_true", help="40 appends per size (the smoke test)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args(argv)
    calls = 40 if args.quick else args.calls
    us = asyncio.run(run(calls))
    print(table([[n, us["plain"][str(n)], us["sealed"][str(n)]] for n in IDS_PER_CALL],
                ["ids a call", "plain: Redis us a call", "sealed"]), file=sys.stderr)
    print(write_json({"benchmark": "live_history", "commit": git_commit(), "machine": machine_info(),
                      "calls_per_size": calls, "redis_us_per_append": us}, args.out))


if __name__ == "__main__":
    main()
