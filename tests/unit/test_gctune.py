"""ipc/gctune.py: start-up objects frozen, young generation collected less often, and
garbage cycles still collected on time."""

from __future__ import annotations

import asyncio
import gc
import weakref

from ipc.gctune import YOUNG_THRESHOLD, collect_young, settle


def test_settle_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    survivor = [object() for _ in range(100)]  # lives through settle(): gets frozen
    try:
        gc.unfreeze()
        settle()
        assert gc.get_freeze_count() >= len(survivor)
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        # Cycles are still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_garbage_cycle_is_collected_within_the_interval_without_allocations() -> None:
    """The gateway's GC settings let a cycle wait for 20,000 allocations; a request cut
    off by its client leaves one holding its body.  collect_young frees it on time."""
    class Holder:
        pass

    was_enabled = gc.isenabled()
    gc.disable()  # only collect_young collects here
    task = asyncio.create_task(collect_young(interval_s=0.05))
    try:
        holder = Holder()
        holder.body = b"x" * (1 << 20)  # type: ignore[attr-defined]
        holder.me = holder  # type: ignore[attr-defined]
        alive = weakref.ref(holder)
        del holder
        assert alive() is not None  # a cycle: reference counting alone keeps it
        for _ in range(100):  # bounded: 2 s
            await asyncio.sleep(0.02)
            if alive() is None:
                break
        assert alive() is None
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if was_enabled:
            gc.enable()
