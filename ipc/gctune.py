"""Garbage-collector settings for a serving process (gateway, worker).

Everything a process builds while starting (modules, config, routes, loaded
plugins) lives until it exits, yet CPython's full collections walk all of it
again and again; the gateway's profile showed the collector at about a sixth
of its busy time under load.  `settle()` runs once start-up is over: it
collects what start-up left behind, moves the survivors to the permanent
generation (`gc.freeze`), and raises the youngest generation's threshold so
that short-lived per-request objects are collected in fewer, larger batches.
Reference cycles are still collected; memory held by garbage may grow by at
most the larger young generation.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "settle"]

#: Allocations (minus deallocations) between two young-generation collections
#: (CPython's default: 700).
YOUNG_THRESHOLD: Final = 20_000


def settle() -> None:
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
