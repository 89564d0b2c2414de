"""`async def` hooks and `async def` event handlers, run as tasks on the worker's event loop.

The call thread that reads a CALL or EVENT looks it up (worker/dispatch.py);
when its hook or handler is a coroutine function, the call threads hand it
here with `loop.call_soon_threadsafe` (worker/callthreads.py).  Each runs as
a task bounded by its deadline (`asyncio.wait_for`); a CALL is answered from
the loop.  Everything else runs on the call threads.
"""

from __future__ import annotations

import asyncio
import logging

from ipc.protocol import ErrorCode
from worker.answers import Answers
from worker.dispatch import Call, Dispatcher, EventCall, Outcome, error

__all__ = ["LoopCalls"]

log = logging.getLogger("worker.calls")


class LoopCalls:
    """The loop's share of the calls; every method runs on the loop thread."""

    def __init__(self, dispatcher: Dispatcher, answers: Answers) -> None:
        self._dispatcher = dispatcher
        self._answers = answers
        self._calls: set[asyncio.Task[None]] = set()
        self._events: set[asyncio.Task[None]] = set()

    @property
    def inflight(self) -> int:
        return len(self._calls)

    def start_call(self, call_id: int, call: Call) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(call_id, call))
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def start_event(self, event: EventCall) -> None:
        # run_event_async logs the handler's failures, never raises
        task = asyncio.get_running_loop().create_task(self._dispatcher.run_event_async(event))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def wait(self, timeout_s: float) -> None:
        """Until the calls running now are answered, at most `timeout_s` (a drain)."""
        if self._calls:
            await asyncio.wait(set(self._calls), timeout=timeout_s)

    async def cancel(self) -> None:
        """Cancel everything still running (the worker is stopping)."""
        pending = self._calls | self._events
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, call_id: int, call: Call) -> None:
        outcome: Outcome
        try:
            outcome = await self._dispatcher.run_async(call)
        except Exception as exc:  # the dispatcher turns hook errors into ERRORs already
            log.exception("CALL %d failed inside the worker", call_id)
            outcome = error(ErrorCode.HOOK_FAILED, f"{type(exc).__name__}: {exc}")
        self._answers.answer(call_id, outcome)
