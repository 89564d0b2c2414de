"""A lane: one gateway process's share of the call threads (worker/callthreads.py).

The worker runs one pool of call threads for every uplink (worker/uplinks.py);
what stays per gateway process travels with each job as its `Lane`: the
channel it was read from and is answered on, the dispatcher (that gateway's
shared-memory arena), the answers and ledger, the loop calls, the analytics
runner, where control messages go (its `Uplink`, on the loop), whether new
CALLs are accepted (a DRAIN from gateway i refuses gateway i's CALLs only),
its in-flight count (a drain of uplink i waits for uplink i's calls only) and
its counters.  Fields are changed under the call threads' lock, except
`accepting`, which the loop may clear at any time (a bool: atomic).

`CURRENT_LANE` names the lane whose job the current thread or task runs: the
call threads set it before each job, and before handing an `async def` hook
to the loop (`call_soon_threadsafe` copies the calling context), so a host
call goes back to the gateway whose CALL the hook serves.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass

from ipc.protocol import Message
from worker.analytics import AnalyticsRunner
from worker.answers import Answers
from worker.channel import Channel
from worker.dispatch import Dispatcher
from worker.loopcalls import LoopCalls

__all__ = ["CURRENT_LANE", "Deliver", "Lane"]

#: Gets a lane's control messages (WELCOME, DRAIN, ...) on the event loop.
Deliver = Callable[[Message], None]


@dataclass(slots=True, eq=False)
class Lane:
    """One gateway process's parts and counters, as the call threads see them."""

    channel: Channel
    dispatcher: Dispatcher
    answers: Answers
    loop_calls: LoopCalls
    analytics: AnalyticsRunner | None = None
    deliver: Deliver | None = None  # set when attached
    attached: bool = False  # read (polled) by the call threads
    #: False once this lane drains: its CALLs read after that are refused.
    accepting: bool = True
    inflight: int = 0  # its CALLs for the call threads, read and not answered yet
    running: int = 0  # its jobs on a call thread now
    calls: int = 0  # its CALLs read, in total (the loop's too)
    merged: int = 0  # of those, merged CALLs (several hooks each)
    deadlines: int = 0  # its calls the watchdog answered with ERROR `deadline`

    def counters(self) -> dict[str, int]:
        """This gateway's share of HEARTBEAT `calls` (the pool adds `threads`, `handoffs`)."""
        counters = {"calls": self.calls, "merged": self.merged, "inflight": self.inflight,
                    "deadlines": self.deadlines}
        if self.analytics is not None:
            counters.update(self.analytics.counters())
        return counters


#: The lane whose job the current thread or task runs (None: a plugin's own thread).
CURRENT_LANE: contextvars.ContextVar[Lane | None] = contextvars.ContextVar(
    "coproc_lane", default=None)
