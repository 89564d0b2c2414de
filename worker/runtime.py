"""The worker's conversation with the gateway: admission, calls, heartbeats, drain.

States (one at a time, changed only on the event loop):

    CONNECTING --WELCOME--> RUNNING --DRAIN / SIGTERM--> DRAINING --> STOPPED
        ^                      |
        +-------RESYNC---------+          REJECT (any state) --> STOPPED, exit 5

* CONNECTING: HELLO every 200 ms until WELCOME or REJECT.  How long to wait
  is the supervisor's call (`boot_timeout_ms`): a gateway that is restarting
  will answer eventually.
* RUNNING: plain hooks run on the call threads that read them
  (worker/callthreads.py), `async def` hooks on the loop (worker/loopcalls.py);
  the call threads hand this module the control messages.  HEARTBEAT (zmq) and
  `heartbeat` (control) go out from the event loop itself, so a stuck loop
  stops them.
* DRAINING: new CALLs get ERROR `draining`; in-flight ones get `grace_ms`;
  then DRAIN_ACK and exit 0.  SIGTERM/SIGINT drain the same way (the ACK
  tells the gateway to stop routing here); a second signal stops at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import resource
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ipc import exitcodes
from ipc.protocol import Message, MsgType
from worker.answers import CallLedger
from worker.callthreads import CallThreads
from worker.channel import Channel
from worker.dispatch import Dispatcher
from worker.hostcalls import HostCalls
from worker.loopcalls import LoopCalls
from worker.supervisor_link import SupervisorLink

__all__ = ["HELLO_INTERVAL_S", "Identity", "State", "Timing", "Worker", "current_rss"]

log = logging.getLogger("worker.runtime")

HELLO_INTERVAL_S = 0.2
#: Retry delay while no connection to the gateway exists yet.
HELLO_RETRY_S = 0.01
#: How often a drain looks whether the call threads finished their calls.
CALL_DRAIN_POLL_S = 0.01
#: Backstop for the admission gate; the supervisor's boot timeout normally acts first.
ADMIT_WAIT_S = 300.0
#: Exit code when the worker's own machinery breaks (not a reserved code: respawn).
INTERNAL_ERROR = 1


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


class Worker:
    """Runs until drained, rejected or broken; `run` returns the exit code."""

    def __init__(self, identity: Identity, channel: Channel, dispatcher: Dispatcher,
                 hostcalls: HostCalls, link: SupervisorLink, report: Mapping[str, Any],
                 timing: Timing, calls: CallThreads, loop_calls: LoopCalls,
                 ledger: CallLedger) -> None:
        self.identity = identity
        self.channel = channel
        self.dispatcher = dispatcher
        self.hostcalls = hostcalls
        self.link = link
        self.report = dict(report)
        self.timing = timing
        self.calls = calls
        self.loop_calls = loop_calls
        self.ledger = ledger
        self.state = State.CONNECTING
        self._tasks: set[asyncio.Task[None]] = set()
        self._admitted = asyncio.Event()
        self._exit: asyncio.Future[int] | None = None
        self._ready_sent = False
        self._gate_passed = False

    @property
    def inflight(self) -> int:
        return self.loop_calls.inflight + self.calls.inflight

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        self.hostcalls.bind(loop, self.channel.send)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        # The call threads read the socket; the control messages come here, in order.
        self.calls.start(loop, self._on_message)
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._spawn(self._admission(), "admission")
        try:
            return await self._exit
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self.hostcalls.fail_all("the worker is stopping")
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, self.loop_calls.cancel(),
                                 return_exceptions=True)
            self.calls.stop()
            self.dispatcher.close()  # unmap the arena: nothing reads it any more

    # --- tasks ---------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.critical("worker task %s crashed", task.get_name(), exc_info=task.exception())
            self._finish(INTERNAL_ERROR)

    async def _admission(self) -> None:
        """HELLO every HELLO_INTERVAL_S until WELCOME (or REJECT ends the worker)."""
        if not self._gate_passed:
            # The supervisor vets the load report first (hot restart): see supervisor_link.
            if not await self.link.wait_admitted(self.identity.pid, self.identity.generation,
                                                 self.report, ADMIT_WAIT_S):
                log.error("the supervisor did not admit this worker within %.0f s",
                          ADMIT_WAIT_S)
                self._finish(exitcodes.BOOT_FAILED)
                return
            self._gate_passed = True
        attempts, started = 0, asyncio.get_running_loop().time()
        while self.state is State.CONNECTING:
            queued = self.channel.send(MsgType.HELLO, 0, self._hello())
            attempts += queued
            if queued and attempts % 25 == 0:
                log.warning("no answer from the gateway at %s after %d HELLOs in %.0f s",
                            self.channel.endpoint, attempts,
                            asyncio.get_running_loop().time() - started)
            # Not queued: the connection is not up yet (IMMEDIATE); look again soon
            # rather than adding a whole interval to every boot.
            wait = HELLO_INTERVAL_S if queued else HELLO_RETRY_S
            try:
                await asyncio.wait_for(self._admitted.wait(), wait)
            except TimeoutError:
                continue

    async def _heartbeat_loop(self) -> None:
        generation = self.identity.generation
        while True:
            # One payload for both: `calls["calls"]` counts every CALL read (the
            # supervisor's max_requests), `rss` is the gateway's /hello figure.
            beat = {"generation": generation, "inflight": self.inflight, "rss": current_rss(),
                    "calls": self.calls.counters()}
            self.link.heartbeat(beat)
            if self.state in (State.RUNNING, State.DRAINING):
                self.channel.send(MsgType.HEARTBEAT, 0, beat)
            await asyncio.sleep(self.timing.heartbeat_s)

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, message: Message) -> None:
        kind = message.type
        if kind is MsgType.ERROR:  # not one answering a host call: the call threads take those
            log.warning("gateway reported an error for call %d: %s: %s", message.call_id,
                        message.payload["code"], message.payload["message"])
        elif kind is MsgType.WELCOME:
            self._on_welcome(message.payload)
        elif kind is MsgType.REJECT:
            log.error("the gateway rejected this worker: %s", message.payload["reason"])
            self._finish(exitcodes.REJECTED)
        elif kind is MsgType.RESYNC:
            self._on_resync()
        elif kind is MsgType.DRAIN:
            grace = message.payload.get("grace_ms", self.timing.drain_grace_ms)
            self._begin_drain(grace, "the gateway asked", message.payload.get("calls", ()))
        else:
            log.warning("unexpected %s from the gateway, ignored", kind.name)

    def _on_welcome(self, payload: Mapping[str, Any]) -> None:
        if payload["generation"] != self.identity.generation:
            log.warning("WELCOME names generation %s, this is %s", payload["generation"],
                        self.identity.generation)
        # Before the state check: a restarted gateway has a new arena (RESYNC, HELLO).
        self.dispatcher.attach_arena(payload.get("shm"))
        if self.state is not State.CONNECTING:
            return  # a duplicate answer to an earlier HELLO
        self.state = State.RUNNING
        self._admitted.set()
        log.info("admitted by the gateway as generation %d (%s)", self.identity.generation,
                 "active" if payload.get("active", True) else "standby")
        if not self._ready_sent:
            self._ready_sent = True
            self.link.ready(self.identity.pid, self.identity.generation, self.report)

    def _on_resync(self) -> None:
        if self.state is not State.RUNNING:
            return  # already saying HELLO, or on the way out
        log.info("the gateway does not know this worker (it restarted): saying HELLO again")
        self.state = State.CONNECTING
        self._admitted.clear()
        self._spawn(self._admission(), "admission")

    # --- stopping ------------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        if self.state is State.DRAINING:
            log.warning("%s again: stopping now", signal.Signals(signum).name)
            self._ack_and_exit()
            return
        self._begin_drain(self.timing.drain_grace_ms, signal.Signals(signum).name)

    def _begin_drain(self, grace_ms: int, reason: str,
                     awaited: Iterable[int] = ()) -> None:
        if self.state in (State.DRAINING, State.STOPPED):
            return
        log.info("draining (%s): %d call(s) in flight, grace %d ms", reason, self.inflight,
                 grace_ms)
        self.state = State.DRAINING
        self.calls.accepting = False
        self._spawn(self._drain(grace_ms, set(awaited)), "drain")

    async def _drain(self, grace_ms: int, awaited: set[int]) -> None:
        deadline = time.monotonic() + grace_ms / 1000
        await self.loop_calls.wait(grace_ms / 1000)
        # Call threads answer on their own, and a listed call may still be queued
        # for one: poll (bounded) until every listed call is answered here.
        while (self.inflight or self.ledger.missing(awaited)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(CALL_DRAIN_POLL_S)
        self._ack_and_exit()

    def _ack_and_exit(self) -> None:
        if self.inflight:
            log.warning("stopping with %d call(s) still in flight", self.inflight)
        self.channel.send(MsgType.DRAIN_ACK, 0, {"inflight": self.inflight})
        self._finish(exitcodes.OK)

    def _finish(self, code: int) -> None:
        self.state = State.STOPPED
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(code)

    def hello_payload(self) -> dict[str, Any]:
        return self._hello()

    def _hello(self) -> dict[str, Any]:
        return {"generation": self.identity.generation, "pid": self.identity.pid,
                "token": self.identity.token, "plugins": self.report,
                "threads": self.identity.threads, "sandbox": dict(self.identity.sandbox),
                "merge": True}  # runs merged CALLs (worker/merged.py)


def current_rss() -> int:
    """Resident set size in bytes (procfs; peak RSS where there is no procfs)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
