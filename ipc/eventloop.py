"""Run a process's main coroutine on uvloop when it is installed, else on asyncio's loop.

uvloop is an optional extra (`pip install coproc[fast]`); every Coproc process
(supervisor, gateway, worker) and the benchmark's servers start through `run`.
In the worker it makes handing an `async def` hook to the loop cheaper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    # Typed whether or not uvloop is installed where mypy runs.
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
