import asyncio

import prometheus_client
import pytest

from query_service.batching import BatchingConfig, MicroBatcher
from serving.errors import ResourceExhausted


async def test_concurrent_submissions_share_batches():
    batches = []

    async def process(items):
        batches.append(list(items))
        await asyncio.sleep(0.001)
        return [item * 10 for item in items]

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=8, max_wait_ms=20, max_in_flight=1))
    results = await asyncio.gather(*(batcher.submit(i) for i in range(20)))
    await batcher.close()
    assert results == [i * 10 for i in range(20)]
    assert max(len(b) for b in batches) == 8
    assert len(batches) < 20
    assert sorted(x for b in batches for x in b) == list(range(20))


@pytest.mark.parametrize("overlap_ms, overlaps", [(10, True), (1000, False)])
async def test_a_batch_starts_beside_one_in_flight_only_after_the_overlap_wait(overlap_ms, overlaps):
    loop = asyncio.get_running_loop()
    spans = []  # (size, start, end) of each batch

    async def process(items):
        start = loop.time()
        await asyncio.sleep(0.2)
        spans.append((len(items), start, loop.time()))
        return items

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=8, max_in_flight=4, overlap_after_ms=overlap_ms))
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first batch is in flight; these three gather behind it
    assert await asyncio.gather(first, *(batcher.submit(i) for i in (1, 2, 3))) == [0, 1, 2, 3]
    await batcher.close()
    (one, start1, end1), (three, start2, _) = sorted(spans, key=lambda s: s[1])
    assert (one, three) == (1, 3)
    assert (start2 < end1) == overlaps


async def test_lone_request_waits_at_most_max_wait():
    async def process(items):
        return items

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=64, max_wait_ms=5))
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await batcher.submit("x") == "x"
    assert loop.time() - start < 0.5
    await batcher.close()


async def test_per_item_exception_reaches_only_its_caller():
    async def process(items):
        return [ValueError(f"bad {i}") if i == 2 else i for i in items]

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=4, max_wait_ms=10))
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    await batcher.close()
    assert outcomes[0] == 0 and outcomes[1] == 1 and outcomes[3] == 3
    assert isinstance(outcomes[2], ValueError) and "bad 2" in str(outcomes[2])


async def test_batch_failure_reaches_every_caller_and_batcher_keeps_working():
    calls = 0

    async def process(items):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("tower exploded")
        return items

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=4, max_wait_ms=10))
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert await batcher.submit(7) == 7
    await batcher.close()


async def test_a_full_queue_refuses_at_once_instead_of_growing():
    release = asyncio.Event()

    async def process(items):
        await release.wait()
        return items

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=1, max_in_flight=1, max_queued=2))
    accepted = []
    for i in range(2):  # item 0 holds the only batch slot, item 1 waits for it in the collector's hand
        accepted.append(asyncio.ensure_future(batcher.submit(i)))
        await asyncio.sleep(0.01)
    accepted += [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]  # the queue's two places
    await asyncio.sleep(0.01)
    with pytest.raises(ResourceExhausted, match="2 requests are already waiting"):
        await asyncio.wait_for(batcher.submit(4), 1)
    release.set()
    assert await asyncio.gather(*accepted) == [0, 1, 2, 3]
    assert await batcher.submit(5) == 5  # room again
    await batcher.close()


def test_invalid_config_is_refused():
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, BatchingConfig(max_batch_size=0))


async def test_callers_that_left_before_their_batch_ran_are_neither_processed_nor_counted_in_its_size():
    processed = []

    async def process(items):
        processed.append(list(items))
        await asyncio.sleep(0.05)
        return items

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=8, max_in_flight=1), name="test_left")
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # the first batch is in flight; the next three queue behind it
    waiting = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
    await asyncio.sleep(0.01)
    waiting[1].cancel()  # a caller whose deadline passed, or who went away
    assert await asyncio.gather(first, waiting[0], waiting[2]) == [0, 1, 3]
    await batcher.close()
    assert processed == [[0], [1, 3]]
    assert prometheus_client.REGISTRY.get_sample_value("recsys_batch_size_sum", {"batcher": "test_left"}) == 3


async def test_a_batch_whose_callers_all_left_runs_nothing_and_gives_its_slot_back():
    processed = []
    release = asyncio.Event()

    async def process(items):
        processed.append(list(items))
        if items == [0]:
            await release.wait()
        return items

    batcher = MicroBatcher(process, BatchingConfig(max_batch_size=8, max_in_flight=1), name="test_all_left")
    first = asyncio.ensure_future(batcher.submit(0))
    await asyncio.sleep(0.01)  # its batch holds the one slot
    gone = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)  # the next batch begins with it, waiting for the slot
    gone.cancel()
    release.set()
    assert await first == 0
    assert await asyncio.wait_for(batcher.submit(2), 5) == 2  # the emptied batch's slot is free again
    await batcher.close()
    assert processed == [[0], [2]]
