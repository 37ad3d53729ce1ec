"""An index slot's status streams survive being cancelled at any moment: a stream cancelled while its keepalive
wait was itself being cancelled for its timeout (a watcher gone, a deadline, a process paused and resumed) left the
condition's lock taken for good ("Lock is not acquired" in the slot's log), and every status stream of the slot hung
from then on: its watchers took it as hung and routed around it."""

from __future__ import annotations

import asyncio
import random

from index_service.core import IndexCore
from serving.lifecycle.versions import VersionManager


async def test_streams_cancelled_at_random_moments_never_leave_the_lock_taken():
    core = IndexCore(VersionManager("m"), search_executor=None, keepalive_s=0.003)
    core.bind(asyncio.get_running_loop())
    rng = random.Random(1)
    errors: list[Exception] = []

    async def stream() -> None:
        try:
            async for _ in core.changes():
                pass
        except RuntimeError as e:  # "Lock is not acquired": the block left a lock another task took
            errors.append(e)

    async def changes() -> None:  # versions changing, as loads and catalogue deltas announce them
        while True:
            await core._notify()
            await asyncio.sleep(rng.uniform(0, 0.004))

    async def admin() -> None:  # another holder of the lock, as a stream's own block is
        while True:
            async with core._changed:
                await asyncio.sleep(rng.uniform(0, 0.003))
            await asyncio.sleep(rng.uniform(0, 0.003))

    background = [asyncio.create_task(changes()), asyncio.create_task(admin())]
    for _ in range(300):
        streams = [asyncio.create_task(stream()) for _ in range(3)]
        await asyncio.sleep(rng.uniform(0, 0.008))
        for task in streams:
            task.cancel()
        # Bounded: a stream whose lock was taken from under it waits for it for ever (Condition.wait takes it back
        # before it lets a cancellation through).
        _, hung = await asyncio.wait(streams, timeout=2.0)
        if errors or hung:
            break
    for task in background:
        task.cancel()
    await asyncio.wait(background, timeout=2.0)
    assert not errors and not hung, errors[:1] or f"{len(hung)} streams hung"
    assert not core._changed.locked()  # a new stream could not start: its first wait would never end
