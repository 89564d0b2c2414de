"""The gateway's hook client: run hooks in the plugin worker, send it events, report health.

A facade over one object per job: `HookSocket` (the ROUTER, batching, one send
path), `PeerTable` (admission, active generation, drain, exits, state),
`PendingCalls` (call ids, deadlines, matching answers), `Bodies` (the
shared-memory arena, its quarantine), `HostCallServer` (plugin API calls).
It hands each message read to its owner; a worker's loss reaches them all in
`_drop`, at once (not at the calls' deadlines).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from config.apidef import HookDef
from config.gateway import GatewayConfig
from gateway.bodies import Bodies, arena_health, reply_bodies
from gateway.hook_errors import (
    BackendUnavailable,
    HookCallError,
    HookFailed,
    HookTimeout,
    NoWorker,
    WorkerLost,
    error_from_reply,
)
from gateway.hook_groups import GroupReply, HookGroup, group_reply, then
from gateway.hook_socket import HookSocket
from gateway.host_calls import HostCallHandler, HostCallServer
from gateway.latency import Histogram
from gateway.metrics import WorkerWatch
from gateway.peers import Peer, PeerTable
from gateway.pending import PendingCalls
from gateway.sandbox_access import share_with_worker
from ipc.coprocess import RUN_NS, merge_reply
from ipc.memtune import tune_for_large_buffers
from ipc.protocol import ErrorCode, Message, MsgType, ProtocolError, peek_call_id
from ipc.shm import Arena

__all__ = ["BackendUnavailable", "HookCallError", "HookClient", "HookFailed", "HookTimeout",
           "HostCallHandler", "NoWorker", "WorkerLost"]

log = logging.getLogger("coproc.hooks")

#: How long a worker's answers still in transit may arrive after its exit report.
EXIT_GRACE_S = 0.05
_REPLY = MsgType.REPLY  # a module constant: compared on every message read

#: The counters in `HookClient.stats`; each is written by one of its objects.
_STATS = ("calls", "replies", "errors", "timeouts", "worker_lost", "no_worker",
          "protocol_errors", "late_replies", "admitted", "rejected", "host_calls",
          "shm_bodies", "shm_reply_bodies", "shm_fallback", "merged_calls")


class HookClient:
    """The `gateway.app.HookService` of a gateway process."""

    def __init__(self, cfg: GatewayConfig, instance_key: bytes, host: HostCallHandler) -> None:
        self._cfg = cfg
        self.stats: dict[str, int] = dict.fromkeys(_STATS, 0)
        self.latency = Histogram()
        #: The worker as /metrics shows it: exits, state, heartbeats (gateway/metrics.py).
        self.watch = WorkerWatch()
        #: Called with the generation that just became active (hot restart: the
        #: gateway switches to reloaded API definitions at that moment).
        self.on_activate: Callable[[int], None] | None = None
        self._peers = PeerTable(instance_key, self.stats, self._activated)
        self._calls = PendingCalls(self.stats)
        self._socket = HookSocket(cfg, on_message=self._on_message, on_invalid=self._on_invalid,
                                  on_unreachable=self._on_unreachable, on_unsent=self._calls.fail)
        self._host = HostCallServer(host, self._socket.send_quietly, self.stats)
        self._bodies: Bodies | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._socket.bind(self._loop)
        self._bodies = Bodies.create(self._cfg, self.stats)
        tune_for_large_buffers()  # bodies: see ipc/memtune.py
        share_with_worker(self._cfg, self.arena)  # a sandboxed worker runs as another uid

    @property
    def arena(self) -> Arena | None:
        """The body arena (None: disabled); `arena.chown` hands it to a sandbox uid."""
        return self._bodies.arena if self._bodies is not None else None

    async def close(self) -> None:
        self._calls.fail_all("the gateway is shutting down")
        self._host.close()
        self._socket.close()
        if self._bodies is not None:
            self._bodies.close()
            self._bodies = None

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        """Run one hook in the active worker; return the object after the hook (`obj`
        itself, with its `RUN_NS`, when the hook changed nothing)."""
        payload: dict[str, Any] = {"api_id": api_id, "hook_type": hook_type, "hook_name": hook.name,
                                   "timeout_ms": hook.timeout_ms, "object": obj}
        peer = self._peers.active or await self._wait_for_peer()
        reply = await self._exchange(peer, hook, payload, hook.timeout_ms)
        if "object" not in reply:
            self.stats["protocol_errors"] += 1
            raise HookFailed(ErrorCode.PROTOCOL, "a merged REPLY answered a single CALL")
        changes = reply["object"]
        # A hook that changed nothing gives back the very object sent: the chain
        # then has nothing to apply (tyk_object.py reads a field by identity anyway).
        merged = merge_reply(obj, changes) if changes else obj
        merged[RUN_NS] = reply.get("run_ns", 0)  # the hook's own time (tracing, metrics)
        return merged

    async def call_group(self, api_id: str, group: HookGroup,
                         obj: dict[str, Any]) -> GroupReply | None:
        """Run a group's hooks in one merged CALL (`obj`: the first hook's object).

        None: the active worker does not run merged calls (its HELLO did not say
        so); the caller then calls them one by one.  The call's deadline is the
        sum of its hooks' (each hook's own is the worker's, docs/PROTOCOL.md).
        """
        peer = self._peers.active or await self._wait_for_peer()
        if not peer.merges:
            return None
        first = group[0]
        payload: dict[str, Any] = {"api_id": api_id, "hook_type": first.hook_type,
                                   "hook_name": first.hook.name,
                                   "timeout_ms": first.hook.timeout_ms, "object": obj,
                                   "then": then(group)}
        self.stats["merged_calls"] += 1
        reply = await self._exchange(peer, first.hook, payload,
                                     sum(step.hook.timeout_ms for step in group))
        return group_reply(reply, len(group))

    async def _wait_for_peer(self) -> Peer:
        """The active worker once there is one (a new generation booting)."""
        return await self._peers.wait_for_active(self._cfg.hooks.worker_wait_ms / 1000)

    async def _exchange(self, peer: Peer, hook: HookDef, payload: dict[str, Any],
                        timeout_ms: int) -> dict[str, Any]:
        """One CALL and its REPLY, with every body reference read back."""
        assert self._loop is not None  # start() ran: a programming error otherwise
        pending = self._calls.open(self._loop, peer, hook, timeout_ms)
        self.stats["calls"] += 1
        bodies = self._bodies
        slots = bodies.send_side(payload) if bodies is not None else None
        started = time.perf_counter_ns()
        try:
            self._socket.queue_call(peer.identity, pending.call_id, payload)
            reply = await pending.future
            if "bodies" in reply and "object" in reply:
                reply["object"] = reply_bodies(bodies, reply["object"], reply["bodies"], slots)
            for result in reply.get("results", ()):
                if "bodies" in result:
                    result["object"] = reply_bodies(bodies, result["object"], result["bodies"],
                                                    slots)
                result["object"][RUN_NS] = result.get("run_ns", 0)
            self.latency.record_ns(time.perf_counter_ns() - started)
        except HookTimeout:
            self.stats["timeouts"] += 1
            raise
        except ProtocolError as exc:  # the reply's body references
            self.stats["protocol_errors"] += 1
            raise HookFailed(ErrorCode.PROTOCOL, str(exc)) from None
        finally:
            self._calls.close(pending)
            if slots and self._bodies is not None:  # None: closed, the arena is gone
                self._bodies.release(peer, pending.call_id, slots,
                                     pending.answered or not self._peers.holds(peer))
        return reply

    async def analytics(self, records: list[dict[str, Any]], timeout_s: float
                        ) -> tuple[list[dict[str, Any]], int]:
        """Run the analytics plugins over one batch in the active worker: (the records
        kept, how many its plugins failed on).  WorkerLost / NoWorker: send it again
        (gateway/analytics/plugins.py); HookTimeout after `timeout_s`."""
        peer = self._peers.active
        if peer is None:
            peer = await self._peers.wait_for_active(timeout_s)
        assert self._loop is not None  # start() ran: a programming error otherwise
        pending = self._calls.open_analytics(self._loop, peer, timeout_s)
        try:
            self._socket.send(peer.identity, MsgType.ANALYTICS, pending.call_id,
                              {"records": records})
            reply = await pending.future
        finally:
            self._calls.close(pending)
        return reply["records"], reply.get("failed", 0)

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool:
        """Ask the active worker to run an @Event handler; False when none is there."""
        peer = self._peers.active
        if peer is None:
            return False
        try:
            self._socket.send(peer.identity, MsgType.EVENT, 0, {
                "api_id": api_id, "handler": handler, "event": dict(event), "spec": dict(spec)})
        except WorkerLost:
            return False
        return True

    def health(self) -> dict[str, Any]:
        return {**self._peers.report(), "inflight": len(self._calls),
                "hook_latency_us": self.latency.summary(),
                "shm": arena_health(self._bodies, self._cfg.ipc.shm_threshold_bytes, self.stats)}

    def on_worker_exited(self, generation: int, reason: str) -> None:
        """The supervisor saw the worker exit: route nothing more to it, fail its calls.

        The report comes on another channel than the worker's last answers and may
        overtake them: the socket is read first, then calls get EXIT_GRACE_S.
        """
        self._socket.read_now()
        self.watch.exited(reason)
        text = f"worker generation {generation} exited: {reason}"
        for peer in self._peers.exited(generation):
            if self._loop is None or not self._calls.has_calls(peer):
                self._drop(peer, text)
            else:
                self._loop.call_later(EXIT_GRACE_S, self._drop, peer, text)

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None:
        self._peers.set_state(state, detail)
        self.watch.state(state, generation)

    def _on_message(self, identity: bytes, message: Message) -> None:
        peer, mtype = self._peers.get(identity), message.type
        if mtype is _REPLY and peer is not None:  # nearly every message: tested first
            self._resolve(peer, message.call_id, message.payload, None)
        elif mtype is MsgType.HELLO:
            self._admit(identity, message.payload)
        elif peer is None:  # a worker we do not know (we restarted, or it never said HELLO)
            self._socket.send_quietly(identity, MsgType.RESYNC, 0, {})
        elif mtype is MsgType.ANALYTICS_DONE:
            self._resolve(peer, message.call_id, message.payload, None)
        elif mtype is MsgType.ERROR:
            self._resolve(peer, message.call_id, None, error_from_reply(message.payload))
        elif mtype is MsgType.HOST_CALL:
            self._host.serve(identity, message)
        elif mtype is MsgType.HEARTBEAT:
            self._peers.heartbeat(peer, message.payload)
            self.watch.heartbeat(peer.generation, message.payload)
        elif mtype is MsgType.DRAIN_ACK:
            log.info("worker generation %d drained", peer.generation)
        else:
            self._on_invalid(identity, None, ProtocolError(f"{mtype.name} is not sent by workers"))

    def _resolve(self, peer: Peer, call_id: int, obj: dict[str, Any] | None,
                 error: HookCallError | None) -> None:
        if not self._calls.resolve(peer, call_id, obj, error) and self._bodies is not None:
            # Late (after its deadline) or forged: nobody waits, but the worker is done.
            self._bodies.quarantine.answered(peer, call_id)

    def _admit(self, identity: bytes, hello: dict[str, Any]) -> None:
        admission = self._peers.admit(identity, hello)
        peer, retired = admission.peer, admission.retired
        if peer is None:
            self._socket.send_quietly(identity, MsgType.REJECT, 0, {"reason": admission.reason})
            return
        if retired is not None:
            self._socket.send_quietly(retired.identity, MsgType.DRAIN, 0, {
                "grace_ms": self._cfg.worker.drain_grace_ms,
                "calls": self._calls.call_ids(retired)})
        welcome: dict[str, Any] = {"generation": hello["generation"],
                                   "active": self._peers.active is peer}
        if self._bodies is not None:
            welcome["shm"] = self._bodies.welcome()
        self._socket.send_quietly(identity, MsgType.WELCOME, 0, welcome)

    def _on_invalid(self, identity: bytes, frame: bytes | None, exc: ProtocolError) -> bool:
        """Count, log and answer an invalid message; whether its sender is still
        admitted (False: the rest of its batch is not read)."""
        self.stats["protocol_errors"] += 1
        peer = self._peers.get(identity)
        who = f"generation {peer.generation}" if peer else f"unadmitted peer {identity.hex()}"
        log.warning("protocol error from %s: %s", who, exc)
        if peer is None:
            self._socket.send_quietly(identity, MsgType.REJECT, 0,
                                      {"reason": f"protocol error: {exc}"})
            return False
        # Fail the call the bad message was meant to answer, instead of letting it time out.
        call_id = None if frame is None else peek_call_id(frame)
        if call_id is not None:
            self._resolve(peer, call_id, None, HookFailed(ErrorCode.PROTOCOL, str(exc)))
        if self._peers.strike(peer):
            self._drop(peer, f"worker generation {peer.generation} dropped: "
                             f"{peer.strikes} protocol errors")
            return False
        return True

    def _on_unreachable(self, identity: bytes) -> None:
        peer = self._peers.get(identity)
        if peer is not None:
            self._drop(peer, "worker disconnected")

    def _drop(self, peer: Peer, reason: str) -> None:
        if not self._peers.remove(peer):
            return  # dropped already (the socket and the supervisor both said so)
        self._calls.fail_peer(peer, reason)
        if self._bodies is not None:
            self._bodies.quarantine.forget(peer)  # a dead worker writes nothing more
        # A drained generation leaving cleanly is a hot restart's normal end.
        expected = peer.draining and reason.endswith("exited 0")
        log.log(logging.INFO if expected else logging.WARNING, "%s", reason)

    def _activated(self, generation: int) -> None:
        if self.on_activate is not None:
            self.on_activate(generation)
