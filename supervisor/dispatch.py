"""Event dispatch: signals, control datagrams and control-socket commands.

Signal handlers only enqueue (`_install_signals`); the loop drains the queue
in `_handle_events` and each event goes to its `_on_<kind>` here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any, Final

from supervisor.child import ChildProcess, Role
from supervisor.control_server import ControlRequest
from supervisor.core import Phase, SupervisorCore, answer
from supervisor.events import ControlEvent, Event, ReapEvent, SignalEvent
from supervisor.recycle import WorkerWatch
from supervisor.slot import Slot, SlotState

__all__ = ["EventDispatch"]

_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)

#: The loop's modules share one logger name: records read as they always did.
log = logging.getLogger("supervisor.supervisor")


class EventDispatch(SupervisorCore):
    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in _SIGNALS:
            loop.add_signal_handler(signum, self._events.put_nowait, SignalEvent(signum))
        try:
            loop.add_signal_handler(signal.SIGCHLD, self._events.put_nowait, ReapEvent())
        except RuntimeError:
            pass  # uvloop keeps SIGCHLD for itself; pidfds and the tick still reap

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for signum in (*_SIGNALS, signal.SIGCHLD):
            loop.remove_signal_handler(signum)

    async def _handle_events(self, wait_s: float) -> None:
        try:
            event: Event | None = await asyncio.wait_for(self._events.get(), wait_s)
        except TimeoutError:
            return
        while event is not None:
            self._dispatch(event, self._clock())
            event = self._events.get_nowait() if not self._events.empty() else None

    def _dispatch(self, event: Event, now: float) -> None:
        if isinstance(event, SignalEvent):
            self._on_signal(event.signum, now)
        elif isinstance(event, ControlEvent):
            self._on_message(event.child, event.message, now)
        elif isinstance(event, ControlRequest):
            self._on_command(event, now)
        # ReapEvent: nothing to do but let `_reconcile` run.

    def _on_signal(self, signum: int, now: float) -> None:
        name = signal.Signals(signum).name
        log.debug("%s received", name)
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._request_stop(now, f"{name} received")
        elif signum == signal.SIGQUIT:
            self._request_stop(now, f"{name} received", immediate=True)
        elif signum == signal.SIGHUP:
            self._request_reload(now, "SIGHUP")
        elif signum == signal.SIGUSR1:
            # Logs go to stderr (journald): nothing to reopen; say where we are instead.
            log.info("status: %s", json.dumps(self.snapshot(now), sort_keys=True))

    def _on_command(self, request: ControlRequest, now: float) -> None:
        if request.command == "status":
            answer(request.reply, {"ok": True, "status": self.snapshot(now)})
        elif request.command in ("reload", "restart-worker"):
            self._request_reload(now, f"coproc {request.command}", request.reply)
        else:  # stop
            answer(request.reply, {"ok": True, "pid": os.getpid()})
            self._request_stop(now, "coproc stop")

    def _on_message(self, child: ChildProcess, message: dict[str, Any], now: float) -> None:
        kind = message["type"]
        if kind == "heartbeat":
            child.last_heartbeat = now
        if child is self._handover.candidate:
            self._on_candidate_message(child, message, now)
            return
        slot = self._slot_of(child)
        if slot is None:
            return  # retiring, or reaped since it was queued
        if kind in ("loaded", "ready") and "sandbox" in message:
            slot.sandbox = dict(message["sandbox"])
        self._on_slot_message(slot, child, message, now)

    def _on_slot_message(self, slot: Slot, child: ChildProcess, message: dict[str, Any],
                         now: float) -> None:
        kind = message["type"]
        if kind == "ready":
            if message["role"] != child.role.value:
                log.warning("%s claims role %r; ignored", child.name, message["role"])
            elif child.mark_ready(now):
                if slot is self._worker:
                    self._active = WorkerWatch(self._cfg.worker, message.get("plugins", {}), now)
                self._on_ready(slot, child)
        elif kind == "loaded" and slot is self._worker:
            self._admit(child)
        elif kind == "heartbeat":
            if slot is self._worker and self._active is not None:
                self._active.heartbeat = {k: message[k] for k in ("inflight", "calls")
                                          if k in message}
        elif kind == "status" and child.role is Role.GATEWAY:
            self._gateway_stats = dict(message.get("stats", {}))
        elif kind == "reload_request" and child.role is Role.GATEWAY:
            self._request_reload(now, message.get("reason", "the gateway asked"))
        else:
            log.warning("%s sent an unexpected %r message; ignored", child.name, kind)

    def _on_ready(self, slot: Slot, child: ChildProcess) -> None:
        log.info("%s is ready after %.2f s", child.name, (child.ready_at or 0) - child.started_at)
        if self._phase is not Phase.RUNNING:
            return
        slot.ready()
        if slot is self._worker:
            self._send_worker_state()
        if not self._status.ready_sent and all(
                s.state is SlotState.RUNNING for s in self._slots()):
            log.info("coproc is up: %s", self._describe())
            self._status.update(self._describe(), ready=True)
        self._update_status()
