"""ipc/gctune.py: start-up objects frozen, young generation collected less often."""

from __future__ import annotations

import gc

from ipc.gctune import YOUNG_THRESHOLD, settle


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
