"""One gateway process's conversation with this worker: admission, calls, drain.

An instance may run several gateway processes; the one worker holds an
*uplink* to each (worker/uplinks.py owns them and what is per process: the
supervisor link, signals, host-call routing, the call threads, the exit
code).  An uplink has its own `Lane` (worker/lane.py): its DEALER
(worker/channel.py), loop calls, answers and ledger, analytics runner,
dispatcher (its gateway's shared-memory arena), in-flight count and
counters.  The process's one pool of call threads (worker/callthreads.py)
reads every uplink's socket; an uplink attaches its lane when it starts
running and detaches it when it stops.  The plugins (`HookTable`) are shared
by all.

States (one at a time, changed only on the event loop):

    CONNECTING --WELCOME--> RUNNING --DRAIN / drain()--> DRAINING --> STOPPED
        ^                      |
        +-------RESYNC---------+          REJECT (any state) --> STOPPED, exit 5

* CONNECTING: once `admit` is called, HELLO every 200 ms until WELCOME or
  REJECT.  How long to wait is the supervisor's call (`boot_timeout_ms`): a
  gateway that is restarting will answer eventually.
* RUNNING: plain hooks run on the call threads that read them, `async def`
  hooks on the loop (worker/loopcalls.py); the call threads hand this uplink
  its lane's control messages.
* DRAINING: new CALLs get ERROR `draining`; in-flight ones get `grace_ms`;
  then DRAIN_ACK and STOPPED with exit code 0.  A DRAIN from this uplink's
  gateway drains this uplink only (its lane refuses, and the drain waits for
  its lane's calls only): each gateway hands over to a new worker generation
  on its own.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipc import exitcodes
from ipc.protocol import Message, MsgType
from worker.analytics import AnalyticsRunner
from worker.answers import CallLedger
from worker.callthreads import CallThreads
from worker.channel import Channel
from worker.lane import Lane

__all__ = ["HELLO_INTERVAL_S", "INTERNAL_ERROR", "Identity", "Parts", "State", "Timing",
           "Uplink"]

log = logging.getLogger("worker.uplink")

HELLO_INTERVAL_S = 0.2
#: Retry delay while no connection to the gateway exists yet ...
HELLO_RETRY_S = 0.01
#: ... for this long (a booting gateway binds soon); then HELLO_INTERVAL_S, so that a
#: gateway process in restart backoff does not keep the worker polling at 100 Hz.
HELLO_FAST_S = 5.0
#: How often a drain looks whether the call threads finished their calls.
CALL_DRAIN_POLL_S = 0.01
#: Exit code when the worker's own machinery breaks (not a reserved code: respawn).
INTERNAL_ERROR = 1
#: How long closing waits for queued messages (DRAIN_ACK) to leave.
CLOSE_LINGER_MS = 1000


class State(enum.Enum):
    CONNECTING = "connecting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this worker is to the gateway (from the supervisor's environment)."""

    generation: int
    token: str
    pid: int
    threads: int
    #: The sandbox's layers as reported in HELLO (worker.sandbox.SandboxReport.summary).
    sandbox: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timing:
    heartbeat_s: float
    drain_grace_ms: int


@dataclass(frozen=True, slots=True)
class Parts:
    """What serves one gateway's calls (built by worker/uplinks.py); `calls` is shared."""

    lane: Lane
    ledger: CallLedger
    analytics: AnalyticsRunner
    calls: CallThreads


class Uplink:
    """One gateway's conversation; `run` returns this uplink's exit code."""

    def __init__(self, index: int, identity: Identity, parts: Parts,
                 report: Mapping[str, Any], timing: Timing,
                 on_welcome: Callable[[Uplink], None]) -> None:
        self.index = index
        self.identity = identity
        self.parts = parts
        self.lane = parts.lane
        self.channel: Channel = parts.lane.channel
        self.calls = parts.calls
        self.report = dict(report)
        self.timing = timing
        self._on_welcome_cb = on_welcome
        self.state = State.CONNECTING
        self._tasks: set[asyncio.Task[None]] = set()
        self._admitted = asyncio.Event()
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def inflight(self) -> int:
        return self.lane.loop_calls.inflight + self.lane.inflight

    def counters(self) -> dict[str, int]:
        """This gateway's calls and analytics counters (HEARTBEAT `calls`)."""
        return self.lane.counters()

    async def run(self) -> int:
        """Serve until drained, rejected or broken (`admit` starts the HELLOs)."""
        loop = asyncio.get_running_loop()
        self.parts.analytics.start()
        # The call threads read the socket; the control messages come here, in order.
        self.calls.attach(self.lane, loop, self._on_message)
        try:
            return await self._exit
        finally:
            self.state = State.STOPPED
            await self._close()

    def admit(self) -> None:
        """Start saying HELLO (the supervisor's admission gate passed)."""
        if self.state is State.CONNECTING:
            self._spawn(self._admission(), "admission")

    def heartbeat(self, beat: Mapping[str, Any]) -> None:
        """Send the worker's HEARTBEAT (worker/uplinks.py) to this gateway, once admitted."""
        if self.state in (State.RUNNING, State.DRAINING):
            self.channel.send(MsgType.HEARTBEAT, 0, beat)

    def drain(self, grace_ms: int, reason: str, awaited: Iterable[int] = ()) -> None:
        """Refuse new CALLs, give those in flight `grace_ms`, then DRAIN_ACK and stop."""
        if self.state in (State.DRAINING, State.STOPPED):
            return
        log.info("%s: draining (%s): %d call(s) in flight, grace %d ms", self.channel.endpoint,
                 reason, self.inflight, grace_ms)
        self.state = State.DRAINING
        self.lane.accepting = False
        self._spawn(self._drain(grace_ms, set(awaited)), "drain")

    def stop_now(self) -> None:
        """DRAIN_ACK and stop without waiting for the calls in flight."""
        if self.state is not State.STOPPED:
            self._ack_and_exit()

    def finish(self, code: int) -> None:
        self.state = State.STOPPED
        if not self._exit.done():
            self._exit.set_result(code)

    # --- tasks ---------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{self.index}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.critical("worker task %s crashed", task.get_name(), exc_info=task.exception())
            self.finish(INTERNAL_ERROR)

    async def _admission(self) -> None:
        """HELLO every HELLO_INTERVAL_S until WELCOME (or REJECT ends the uplink)."""
        loop = asyncio.get_running_loop()
        attempts, started = 0, loop.time()
        while self.state is State.CONNECTING:
            queued = self.channel.send(MsgType.HELLO, 0, self.hello_payload())
            attempts += queued
            if queued and attempts % 25 == 0:
                log.warning("no answer from the gateway at %s after %d HELLOs in %.0f s",
                            self.channel.endpoint, attempts, loop.time() - started)
            # Not queued: the connection is not up yet (IMMEDIATE); look again soon
            # rather than adding a whole interval to every boot (for a while).
            fast = not queued and loop.time() - started < HELLO_FAST_S
            wait = HELLO_RETRY_S if fast else HELLO_INTERVAL_S
            try:
                await asyncio.wait_for(self._admitted.wait(), wait)
            except TimeoutError:
                continue

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, self.lane.loop_calls.cancel(),
                             return_exceptions=True)
        # Off the loop: waiting for a hook of this lane, or a DRAIN_ACK lingering for
        # a gateway that does not read, must not stall the other uplinks' heartbeats.
        await asyncio.to_thread(self.calls.detach, self.lane)
        self.lane.dispatcher.close()  # unmap the arena: nothing reads it any more
        self.parts.analytics.close()
        await asyncio.to_thread(self.channel.close, CLOSE_LINGER_MS)

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        kind = message.type
        if kind is MsgType.ERROR:  # not one answering a host call: the call threads take those
            log.warning("gateway reported an error for call %d: %s: %s", message.call_id,
                        message.payload["code"], message.payload["message"])
        elif kind is MsgType.WELCOME:
            self._on_welcome(message.payload)
        elif kind is MsgType.REJECT:
            log.error("the gateway at %s rejected this worker: %s", self.channel.endpoint,
                      message.payload["reason"])
            self.finish(exitcodes.REJECTED)
        elif kind is MsgType.RESYNC:
            self._on_resync()
        elif kind is MsgType.DRAIN:
            grace = message.payload.get("grace_ms", self.timing.drain_grace_ms)
            self.drain(grace, "the gateway asked", message.payload.get("calls", ()))
        else:
            log.warning("unexpected %s from the gateway, ignored", kind.name)

    def _on_welcome(self, payload: Mapping[str, Any]) -> None:
        if payload["generation"] != self.identity.generation:
            log.warning("WELCOME names generation %s, this is %s", payload["generation"],
                        self.identity.generation)
        # Before the state check: a restarted gateway has a new arena (RESYNC, HELLO).
        self.lane.dispatcher.attach_arena(payload.get("shm"))
        if self.state is not State.CONNECTING:
            return  # a duplicate answer to an earlier HELLO
        self.state = State.RUNNING
        self._admitted.set()
        log.info("admitted by the gateway at %s as generation %d (%s)", self.channel.endpoint,
                 self.identity.generation, "active" if payload.get("active", True) else "standby")
        self._on_welcome_cb(self)

    def _on_resync(self) -> None:
        if self.state is not State.RUNNING:
            return  # already saying HELLO, or on the way out
        log.info("the gateway at %s does not know this worker (it restarted): saying HELLO "
                 "again", self.channel.endpoint)
        self.state = State.CONNECTING
        self._admitted.clear()
        self._spawn(self._admission(), "admission")

    # --- stopping ------------------------------------------------------------------------

    async def _drain(self, grace_ms: int, awaited: set[int]) -> None:
        deadline = time.monotonic() + grace_ms / 1000
        await self.lane.loop_calls.wait(grace_ms / 1000)
        # Call threads answer on their own, and a listed call may still be queued
        # for one: poll (bounded) until every listed call is answered here.
        while ((self.inflight or self.parts.ledger.missing(awaited))  # noqa: ASYNC110
               and time.monotonic() < deadline):
            await asyncio.sleep(CALL_DRAIN_POLL_S)
        self._ack_and_exit()

    def _ack_and_exit(self) -> None:
        if self.inflight:
            log.warning("%s: stopping with %d call(s) still in flight", self.channel.endpoint,
                        self.inflight)
        self.channel.send(MsgType.DRAIN_ACK, 0, {"inflight": self.inflight})
        self.finish(exitcodes.OK)

    def hello_payload(self) -> dict[str, Any]:
        return {"generation": self.identity.generation, "pid": self.identity.pid,
                "token": self.identity.token, "plugins": self.report,
                "threads": self.identity.threads, "sandbox": dict(self.identity.sandbox),
                "merge": True}  # runs merged CALLs (worker/merged.py)
