"""Live interaction history: what customers did since their version was trained.

The customer store travels with the version and is fixed at training time;
``RecordInteractions`` appends to a list per customer in Redis (newest first,
capped, expiring), which every query replica reads on the next request:
history-aware towers take it in front of the stored history, and
``exclude_seen`` removes its items too.

It rides on the result cache's Redis link (same server or cluster, timeouts
and outage backoff; on a cluster, a failed node costs only its customers' live
histories). Reads are an optimisation like the cache: concurrent requests'
reads go out as one pipeline, and a failed read is an empty live history (the
stored one still answers). A write is what the caller asked for, so a failed
write fails the call; it is sent even while writes are backed off (the caller
asked for it), and its failure backs off writes only: a Redis that refuses
writes (out of memory, paused) still serves the reads, and ``exclude_seen``
keeps excluding what was recorded before.

With a shared key (``--cache-key-file``, the result cache's), each entry is
sealed with an HMAC over the customer's list key and the id, as cached results
are (``cache.seal``):
whoever can write to Redis but holds no key cannot put items in a customer's
history (steering a history tower, or hiding items from ``exclude_seen``),
nor move one customer's entries to another's list; such entries are dropped.
Without a shared key entries are plain ids (a per-process key would make
every replica blind to the others' histories). Entries that are not ids (not
UTF-8, empty, over 256 bytes) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import NoScriptError, ResponseError

from query_service.batching import MicroBatcher
from query_service.storage.cache import seal, unseal
from query_service.storage.redis_link import MAX_TTL_S, PIPELINED, REDIS_ERRORS, UNREACHED, RedisLink
from serving.errors import ResourceExhausted, Unavailable
from serving.telemetry.tracing import span
from serving.validation import MAX_ID_BYTES
from settings.flags import option, require


@dataclass(frozen=True)
class LiveHistoryConfig:
    max_items: int = option(100, "interactions kept per customer in the live history (the newest)",
                            flag="live-history-max")
    ttl_s: int = option(30 * 86400, "a customer's live history expires this long after their last recorded "
                                    "interaction", flag="live-history-ttl-s")

    def __post_init__(self) -> None:
        require(self.max_items >= 1, "max_items", "must be >= 1")
        require(1 <= self.ttl_s <= MAX_TTL_S, "ttl_s", f"must be from 1 to {MAX_TTL_S:,} (ten years)")


# Up to this many ids a call, each is found by an LPOS scan of the list; more, and one pass over the list with a Lua
# table as the set costs Redis less (a call on full lists of 100: about the same near 10 ids, 135-224 against 64-95
# us at 30, 508-605 against 81-119 us at 100; the pass costs 46-54 us for 1 id, LPOS 19-21; docs/BENCHMARKS.md,
# "The live history's append").
LPOS_UP_TO = 10

# One customer's list pushed, deduplicated, capped and its TTL refreshed at once, after a DEL where ARGV[1] is 1. Each
# value keeps only its copy nearest the head: the cap counts distinct items, so repeats of one item (a retried call, an
# item viewed again) cannot push the customer's other items out of exclude_seen. Entries are sealed deterministically,
# so a sealed copy matches too. LPUSH comes first: under maxmemory Redis refuses it before the script has written
# anything, and a script that has written runs on past the limit. A script, not a MULTI/EXEC: redis-py's cluster client
# queues each command of a MULTI/EXEC by starting a thread and joining it, blocking the event loop ~0.5 ms a command,
# so a burst of 200 appends stalled it past its calls' connect timeout.
# ARGV: the DEL flag, the cap less one, the TTL, LPOS_UP_TO, then the ids.
APPEND = """
if ARGV[1] == '1' then redis.call('DEL', KEYS[1]) end
redis.call('LPUSH', KEYS[1], unpack(ARGV, 5))
local limit = tonumber(ARGV[2]) + 1
if #ARGV - 4 <= tonumber(ARGV[4]) then
  for i = 5, #ARGV do
    local copies = #redis.call('LPOS', KEYS[1], ARGV[i], 'COUNT', 0)
    if copies > 1 then redis.call('LREM', KEYS[1], 1 - copies, ARGV[i]) end
  end
  redis.call('LTRIM', KEYS[1], 0, limit - 1)
else
  local seen, kept, repeats = {}, {}, false
  for _, entry in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
    if #kept == limit then break end
    if seen[entry] then
      repeats = true
    else
      seen[entry] = true
      kept[#kept + 1] = entry
    end
  end
  if repeats then
    redis.call('DEL', KEYS[1])
    redis.call('RPUSH', KEYS[1], unpack(kept))
  else
    redis.call('LTRIM', KEYS[1], 0, limit - 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('LLEN', KEYS[1])
"""


def history_key(model: str, customer_id: str) -> str:
    """``recsys:<model>:hist:<customer id>``: readable, so an operator can inspect or drop one customer's list."""
    return f"recsys:{model}:hist:{customer_id}"


def merged_history(recent: tuple[str, ...], live: tuple[str, ...], stored: tuple[str, ...]) -> tuple[str, ...]:
    """A history-aware tower's input, most recent first: the request's items,
    then the live history, then the stored one, each item once (where it
    appeared most recently)."""
    return tuple(dict.fromkeys((*recent, *live, *stored)))


class LiveHistory:
    """Records and reads customers' live histories. Safe for one event loop."""

    def __init__(self, link: RedisLink, model: str, config: LiveHistoryConfig = LiveHistoryConfig(),
                 mac_key: bytes = b""):
        self.link = link
        link.expect("LRANGE", "RecordInteractions")
        self.model = model
        self.config = config
        self._mac_key = mac_key  # empty: plain entries (see the module docstring)
        self._append_sha = link.client.register_script(APPEND).sha
        self._reads: MicroBatcher[str, tuple[str, ...]] = MicroBatcher(self._read_many, PIPELINED)

    async def record(self, customer_id: str, candidate_ids: tuple[str, ...]) -> int:
        """Appends ``candidate_ids`` (oldest first) to the customer's history in
        one script (push, cap, refresh the TTL, at once), each item once, where it
        was recorded last; returns its length after.
        Raises Unavailable if Redis fails: the caller must know it was not kept (and
        ResourceExhausted when this replica's calls to Redis queue past ``POOL_WAIT_S``)."""
        key = history_key(self.model, customer_id)
        node = ""
        try:
            node = await self.link.node_of(key)
            with span("redis RecordInteractions", keys=1, node=node):
                async with self.link.calling(node):
                    try:
                        length = await self._push(key, candidate_ids)
                    except ResponseError:
                        if await self.link.client.type(key) in (b"list", b"none"):
                            raise
                        # A value of another type (not this service's): replaced, as the cache replaces values it
                        # did not write; kept, it would fail every recording and read of this customer.
                        self.link.skipped_key("RecordInteractions", key)
                        length = await self._push(key, candidate_ids, replace=True)
        except REDIS_ERRORS as e:
            self.link.failed("RecordInteractions", e, node, write=True)
            raise Unavailable(f"the live history's Redis did not take the interactions ({type(e).__name__}): they "
                              "may not be recorded; retry with backoff (a repeated interaction counts once)") from None
        self.link.answered(node, write=True)
        return int(length)

    async def _push(self, key: str, candidate_ids: tuple[str, ...], replace: bool = False) -> int:
        """``APPEND`` for ``record`` (after a DEL of the key with ``replace``); the list's length after.

        By its SHA1, and with its text only where the key's server lacks it (first call, restart, SCRIPT FLUSH):
        EVAL there caches it. Not the Script object's fallback, SCRIPT LOAD, which a cluster client sends to
        every master: one down, it failed every other master's first append."""
        # LPUSH puts each value at the head in turn, so oldest-first ids end up newest first.
        args = (1, key, int(replace), self.config.max_items - 1, self.config.ttl_s, LPOS_UP_TO,
                *(self._seal(key, c.encode()) for c in candidate_ids))
        try:
            return await self.link.client.evalsha(self._append_sha, *args)
        except NoScriptError:
            return await self.link.client.eval(APPEND, *args)

    async def get(self, customer_id: str) -> tuple[str, ...]:
        """The customer's live history, most recent first, each item once; empty
        while Redis is down or backed off, or when more reads queue than it keeps up with."""
        if not self.link.available():
            return ()
        try:
            return await self._reads.submit(customer_id)
        except ResourceExhausted:
            return ()

    async def _read_many(self, customer_ids: list[str]) -> list[tuple[str, ...]]:
        lists = await self.link.pipelined("LRANGE", [history_key(self.model, c) for c in customer_ids],
                                          lambda pipe, key: pipe.lrange(key, 0, self.config.max_items - 1))
        return [() if values is UNREACHED else self._decode(history_key(self.model, c), values)
                for c, values in zip(customer_ids, lists)]

    def _seal(self, key: str, item: bytes) -> bytes:
        return seal(self._mac_key, key, item) if self._mac_key else item

    def _decode(self, key: str, values: list[bytes]) -> tuple[str, ...]:
        """The ids of a list's entries, each once; entries that fail their HMAC or are not ids are dropped."""
        items = []
        for value in values:
            if self._mac_key:
                value = unseal(self._mac_key, key, value)
                if value is None:
                    continue
            if 0 < len(value) <= MAX_ID_BYTES:
                try:
                    items.append(value.decode())
                except UnicodeDecodeError:
                    continue
        return tuple(dict.fromkeys(items))

    async def close(self) -> None:
        await self._reads.close()
