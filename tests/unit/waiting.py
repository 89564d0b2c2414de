"""Waiting on the event loop for a state that has no event of its own to await."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

#: How often a condition is looked at.
POLL_S = 0.01


async def until(condition: Callable[[], Any], limit_s: float = 10.0) -> None:
    """Return once `condition()` is true; TimeoutError after `limit_s`."""
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 (the state is polled, it signals nothing)
            await asyncio.sleep(POLL_S)
