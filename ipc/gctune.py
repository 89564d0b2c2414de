"""Garbage-collector settings for a serving process (gateway, worker).

Everything a process builds while starting (modules, config, routes, loaded
plugins) lives until it exits, yet CPython's full collections walk all of it
again and again; the gateway's profile showed the collector at about a sixth
of its busy time under load.  `settle()` runs once start-up is over: it
collects what start-up left behind, moves the survivors to the permanent
generation (`gc.freeze`), and raises the youngest generation's threshold so
that short-lived per-request objects are collected in fewer, larger batches.
Reference cycles are still collected, but a process whose objects nearly all
die by reference counting may then go minutes without a collection, and a
cycle keeps whatever it holds that long: a request cut off by its client
leaves its body in one (the connection error, the stream that holds it, a
closure).  With 1 MiB bodies and the load generator cutting 8 requests every
10 s, the gateway grew by about 12 MiB each time, for minutes.  So a serving
process also runs `collect_young`: the young generations every few seconds,
a millisecond's work.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Final

__all__ = ["COLLECT_EVERY_S", "YOUNG_THRESHOLD", "collect_young", "settle"]

#: Allocations (minus deallocations) between two young-generation collections
#: (CPython's default: 700).
YOUNG_THRESHOLD: Final = 20_000
#: How long cyclic garbage lives at most (about), whatever the allocations.
COLLECT_EVERY_S: Final = 5.0


def settle() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)


async def collect_young(interval_s: float = COLLECT_EVERY_S) -> None:
    """Run until cancelled: collect the two young generations every `interval_s`."""
    while True:
        await asyncio.sleep(interval_s)
        gc.collect(1)
