"""The worker's uplinks to every gateway process of its instance, and what is per process.

One plugin worker per instance serves all of the instance's gateway processes
(`coproc.gateway.processes`): it connects one uplink (worker/uplink.py) to
each one's hooks socket (`GatewayConfig.hooks_endpoints`, by index).  This
module builds them and owns what exists once per process:

* the call threads (worker/callthreads.py): one pool reads every uplink's
  socket and runs every gateway's plain hooks, each job carrying its uplink's
  `Lane` (worker/lane.py), over one ZeroMQ context (one I/O thread for every
  socket); both stop once every uplink has finished;
* the supervisor link: the admission gate once, before any uplink says HELLO;
  `ready` once, on the first WELCOME from any gateway (each gateway admits on
  its own, and one in restart backoff must not keep the worker from being
  ready); heartbeats with the uplinks' counters summed, to the supervisor (its
  `max_requests` counts every CALL of every gateway) and to every gateway
  alike (whichever gateway process answers `/hello` or `/metrics` describes
  the one worker the same way);
* signals: SIGTERM/SIGINT drain every uplink; a signal while every uplink is
  draining already stops at once (with one gateway: a second signal);
* host calls (`tyk.store_data`, `get_data`, `log`, `trigger_event`): one
  `HostCalls` for the process, its replies matched by call id whichever
  uplink brings them; a call goes out on the channel of the lane whose CALL
  runs on the calling thread or task (`CURRENT_LANE`, which the call threads
  set before each job and before handing an `async def` hook to the loop with
  `call_soon_threadsafe`, which runs it in a copy of the calling thread's
  context), else (a plugin's own thread) on the first running uplink;
* the exit: when every uplink has finished; 0 if any drained normally (this
  generation was retired or stopped), else the first failure (REJECTED, ...);
  a broken uplink (INTERNAL_ERROR) drains the others and the process exits 1,
  to be respawned.

With one gateway process nothing is routed: host calls go straight to the
one uplink's channel, as before uplinks existed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from collections.abc import Mapping, Sequence
from typing import Any

import zmq

from config.gateway import GatewayConfig
from ipc import exitcodes, gctune
from ipc.memtune import give_back_free_memory, tune_for_large_buffers
from ipc.protocol import Limits, MsgType
from worker.analytics import AnalyticsFunc, AnalyticsRunner
from worker.answers import Answers, CallLedger
from worker.callthreads import CallThreads
from worker.channel import Channel
from worker.dispatch import Dispatcher
from worker.hostcalls import HostCalls
from worker.lane import CURRENT_LANE, Lane
from worker.loader import HookTable
from worker.loopcalls import LoopCalls
from worker.supervisor_link import SupervisorLink
from worker.uplink import INTERNAL_ERROR, Identity, Parts, State, Timing, Uplink

__all__ = ["ADMIT_WAIT_S", "Uplinks", "build_uplinks", "current_rss", "exit_code"]

log = logging.getLogger("worker.uplinks")

#: Backstop for the admission gate; the supervisor's boot timeout normally acts first.
ADMIT_WAIT_S = 300.0


class Uplinks:
    """Runs every uplink to its end; `run` returns the process's exit code."""

    def __init__(self, identity: Identity, link: SupervisorLink, hostcalls: HostCalls,
                 timing: Timing, report: Mapping[str, Any], calls: CallThreads) -> None:
        self.identity = identity
        self.calls = calls
        #: The uplinks' channels' one ZeroMQ context: one I/O thread for every socket.
        tune_for_large_buffers()  # before the I/O thread starts: see ipc/memtune.py
        self.zmq_context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.link = link
        self.hostcalls = hostcalls
        self.timing = timing
        self.report = dict(report)
        self.uplinks: list[Uplink] = []
        self._ready_sent = False
        self._finished: list[int] = []  # uplinks' exit codes, in the order they ended

    def add(self, uplink: Uplink) -> None:
        self.uplinks.append(uplink)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._bind_host_calls(loop)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        runs = [asyncio.create_task(self._run_one(u), name=f"uplink-{u.index}")
                for u in self.uplinks]
        helpers = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                   asyncio.create_task(self._admission(), name="admission"),
                   # Garbage cycles collected on time, and body buffers' memory back
                   # to the kernel once calls stop coming (ipc/gctune.py, memtune.py).
                   asyncio.create_task(gctune.collect_young(), name="collect-young"),
                   asyncio.create_task(give_back_free_memory(
                       lambda: sum(u.counters()["calls"] for u in self.uplinks)),
                       name="idle-trim")]
        for task in helpers:
            task.add_done_callback(self._helper_done)
        try:
            await asyncio.gather(*runs)
            return exit_code(self._finished)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self.hostcalls.fail_all("the worker is stopping")
            for task in (*helpers, *runs):
                task.cancel()
            await asyncio.gather(*helpers, *runs, return_exceptions=True)
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        """Once every uplink has finished (blocks: joins threads, lingers)."""
        self.calls.stop()
        for uplink in self.uplinks:  # closed already, unless its run was cancelled
            uplink.channel.close()
        self.zmq_context.term()

    def on_welcome(self, uplink: Uplink) -> None:
        if not self._ready_sent:
            self._ready_sent = True
            self.link.ready(self.identity.pid, self.identity.generation, self.report)

    # --- per process ---------------------------------------------------------------------

    def _helper_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.critical("worker task %s crashed", task.get_name(), exc_info=task.exception())
            for uplink in self.uplinks:
                uplink.finish(INTERNAL_ERROR)

    async def _run_one(self, uplink: Uplink) -> None:
        code = await uplink.run()
        self._finished.append(code)
        if code == INTERNAL_ERROR:  # this process is broken: hand every gateway over
            for other in self.uplinks:
                other.drain(self.timing.drain_grace_ms, "another uplink broke")

    async def _admission(self) -> None:
        """The supervisor vets the load report first (hot restart: see supervisor_link),
        once for the process; then every uplink says HELLO."""
        if not await self.link.wait_admitted(self.identity.pid, self.identity.generation,
                                             self.report, ADMIT_WAIT_S):
            log.error("the supervisor did not admit this worker within %.0f s", ADMIT_WAIT_S)
            for uplink in self.uplinks:
                uplink.finish(exitcodes.BOOT_FAILED)
            return
        for uplink in self.uplinks:
            uplink.admit()

    async def _heartbeat_loop(self) -> None:
        while True:
            # One payload on every channel: `calls["calls"]` counts every CALL read
            # (the supervisor's max_requests), `rss` is the gateway's /hello figure.
            beat = {"generation": self.identity.generation,
                    "inflight": sum(u.inflight for u in self.uplinks), "rss": current_rss(),
                    "calls": _summed([self.calls.counters(),
                                      *(u.counters() for u in self.uplinks)])}
            self.link.heartbeat(beat)
            for uplink in self.uplinks:
                uplink.heartbeat(beat)
            await asyncio.sleep(self.timing.heartbeat_s)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if all(u.state in (State.DRAINING, State.STOPPED) for u in self.uplinks):
            log.warning("%s while draining: stopping now", name)
            for uplink in self.uplinks:
                uplink.stop_now()
            return
        for uplink in self.uplinks:
            uplink.drain(self.timing.drain_grace_ms, name)

    # --- host calls ----------------------------------------------------------------------

    def _bind_host_calls(self, loop: asyncio.AbstractEventLoop) -> None:
        self.hostcalls.before_blocking = self.calls.before_blocking
        if len(self.uplinks) == 1:  # nothing to choose: no lookup on any host call
            self.hostcalls.bind(loop, self.uplinks[0].channel.send)
            return
        self.hostcalls.bind(loop, self._send_host)

    def _send_host(self, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> bool:
        lane = CURRENT_LANE.get()
        if lane is not None:
            return lane.channel.send(mtype, call_id, payload)
        # A plugin's own thread: any gateway serves it.
        uplink = next((u for u in self.uplinks if u.state is State.RUNNING), None)
        return uplink is not None and uplink.channel.send(mtype, call_id, payload)


def _summed(counters: Sequence[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for one in counters:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total


def exit_code(codes: Sequence[int]) -> int:
    """The process's code from its uplinks' (in the order they ended)."""
    if INTERNAL_ERROR in codes:
        return INTERNAL_ERROR
    if exitcodes.OK in codes or not codes:
        return exitcodes.OK
    return codes[0]


def build_uplinks(cfg: GatewayConfig, identity: Identity, link: SupervisorLink,
                  hostcalls: HostCalls, table: HookTable,
                  analytics: dict[str, AnalyticsFunc]) -> Uplinks:
    """One uplink per gateway process's hooks socket (on the running loop)."""
    timing = Timing(heartbeat_s=cfg.worker.heartbeat_interval_ms / 1000,
                    drain_grace_ms=cfg.worker.drain_grace_ms)
    calls = CallThreads(hostcalls, cfg.worker.threads, cfg.worker.handoff_ms / 1000)
    owner = Uplinks(identity, link, hostcalls, timing, table.report(), calls)
    limits = Limits(max_message_bytes=cfg.ipc.max_message_bytes)
    for index, endpoint in enumerate(cfg.hooks_endpoints):
        channel = Channel(endpoint, limits, calls.waker, owner.zmq_context)
        dispatcher = Dispatcher(table, cfg.hooks.timeout_ms)
        ledger = CallLedger()
        answers = Answers(channel, ledger)
        runner = AnalyticsRunner(channel, analytics)
        lane = Lane(channel, dispatcher, answers, LoopCalls(dispatcher, answers), runner)
        parts = Parts(lane, ledger, runner, calls)
        owner.add(Uplink(index, identity, parts, owner.report, timing, owner.on_welcome))
    return owner


def current_rss() -> int:
    """Resident set size in bytes (procfs; peak RSS where there is no procfs)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
