"""The gateway's side of the hooks socket: admit workers, route calls, match replies.

One ZeroMQ ROUTER is bound on the hooks endpoint.  Workers connect with a
DEALER and are admitted by HELLO (token checked against the instance key).
Exactly one admitted generation is *active*: every new call goes to it.  A
newer generation that is admitted takes over and the previous one is told to
DRAIN, which is how a hot restart keeps every request.

The socket is driven from the event loop directly (`add_reader` on ZMQ_FD,
non-blocking receives drained in a loop) instead of `zmq.asyncio`: one future
per call and nothing else, which measured markedly cheaper per round trip.

Every call has a deadline; a worker's death fails its calls at once (the
supervisor tells us, see `on_worker_exited`), not at their deadline.

Bodies of `shm_threshold_bytes` and more travel through the shared-memory
arena (ipc/shm.py): `call` swaps them for references before sending and turns
reply references back into bytes, so callers never see the arena.  A call's
slots are freed once the worker answered it or is gone; until then (a timed
out or cancelled call) they stay quarantined with the peer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from config.apidef import HookDef
from config.gateway import GatewayConfig
from gateway.bodies import Bodies, Slots
from gateway.latency import Histogram
from gateway.sandbox_access import share_with_worker
from gateway.storage.base import StorageUnavailable
from ipc.loop_reader import LoopReader
from ipc.memtune import tune_for_large_buffers
from ipc.protocol import ErrorCode, Limits, Message, MsgType, ProtocolError, decode, encode
from ipc.shm import Arena
from ipc.tokens import verify_worker_token
from ipc.zmqio import send_frames

__all__ = [
    "BackendUnavailable",
    "HookCallError",
    "HookClient",
    "HookFailed",
    "HookTimeout",
    "HostCallHandler",
    "NoWorker",
    "WorkerLost",
    "merge_reply",
]

log = logging.getLogger("coproc.hooks")

#: Fields of these records are merged one by one from a REPLY (absent = unchanged).
_MERGED_RECORDS = frozenset({"request", "session", "response"})
#: An admitted peer that sends this many invalid messages is dropped.
_MAX_PROTOCOL_STRIKES = 10
#: After the supervisor reports a worker's exit, how long its answers already on
#: their way through the socket may still arrive before its calls fail.
EXIT_GRACE_S = 0.05


class HookCallError(Exception):
    """A hook call did not produce an object; `status` is the fail-closed answer."""

    status = 500


class HookTimeout(HookCallError):
    status = 504


class WorkerLost(HookCallError):
    status = 500


class NoWorker(HookCallError):
    status = 503


class BackendUnavailable(HookCallError):
    """The hook needed the storage (a host call) while it was down."""

    status = 503


class HookFailed(HookCallError):
    status = 500

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class HostCallHandler(Protocol):
    async def host_call(self, api_id: str, payload: dict[str, Any]) -> dict[str, Any] | None: ...


@dataclass(slots=True, eq=False)
class _Peer:
    """One admitted worker generation."""

    identity: bytes
    generation: int
    pid: int
    plugins: dict[str, Any]
    inflight: set[int] = field(default_factory=set)
    draining: bool = False
    strikes: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    # Arena slots of calls it has not answered yet although the caller gave up.
    quarantine: dict[int, Slots] = field(default_factory=dict)
    #: Its sandbox layers, as its HELLO reported them (docs/SECURITY.md).
    sandbox: dict[str, str] = field(default_factory=dict)
    #: Its call threads' counters, as its last HEARTBEAT reported them.
    call_threads: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[dict[str, Any]]  # resolves to the REPLY payload
    peer: _Peer
    answered: bool = False  # the worker sent REPLY or ERROR: it no longer touches the slots


def merge_reply(sent: Mapping[str, Any], reply: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a REPLY object to the object that was sent (docs/PROTOCOL.md)."""
    merged = dict(sent)
    for key, value in reply.items():
        if key in _MERGED_RECORDS:
            record = dict(sent.get(key) or {})
            record.update(value)
            merged[key] = record
        else:
            merged[key] = value
    return merged


class HookClient:
    def __init__(self, cfg: GatewayConfig, instance_key: bytes, host: HostCallHandler) -> None:
        self._cfg = cfg
        self._key = instance_key
        self._host = host
        self._limits = Limits(max_message_bytes=cfg.ipc.max_message_bytes)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._peers: dict[bytes, _Peer] = {}
        self._active: _Peer | None = None
        self._routable = asyncio.Event()
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._reader: LoopReader | None = None
        self._state, self._state_detail = "starting", ""
        self._tasks: set[asyncio.Task[None]] = set()
        #: Called with the generation that just became active (hot restart: the
        #: gateway switches to reloaded API definitions at that moment).
        self.on_activate: Callable[[int], None] | None = None
        self._bodies: Bodies | None = None
        #: CALLs of this loop turn, sent together by `_flush_calls` (see `_queue_call`).
        self._outbox: list[tuple[bytes, bytes, int]] = []
        self._flush_scheduled = False
        self.latency = Histogram()
        self.stats: dict[str, int] = dict.fromkeys(
            ("calls", "replies", "errors", "timeouts", "worker_lost", "no_worker",
             "protocol_errors", "late_replies", "admitted", "rejected", "host_calls",
             "shm_bodies", "shm_reply_bodies", "shm_fallback"), 0)

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Unroutable sends raise instead of vanishing: a call to a gone peer fails now.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self._cfg.ipc.max_message_bytes + 65536)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
        endpoint = self._cfg.hooks_endpoint
        if endpoint.startswith("ipc://"):
            _remove_stale(endpoint[len("ipc://"):])
        sock.bind(endpoint)
        if endpoint.startswith("ipc://"):
            os.chmod(endpoint[len("ipc://"):], 0o600)
        self._sock = sock
        self._reader = LoopReader(sock, self._handle_frames)
        self._reader.attach(self._loop)
        log.info("hooks socket bound on %s", endpoint)
        self._bodies = Bodies.create(self._cfg, self.stats)
        tune_for_large_buffers()  # bodies: see ipc/memtune.py
        share_with_worker(self._cfg, self.arena)  # a sandboxed worker runs as another uid

    @property
    def arena(self) -> Arena | None:
        """The body arena (None: disabled); `arena.chown` hands it to a sandbox uid."""
        return self._bodies.arena if self._bodies is not None else None

    async def close(self) -> None:
        for pending in list(self._pending.values()):
            _fail(pending.future, WorkerLost("the gateway is shutting down"))
        self._pending.clear()
        for task in list(self._tasks):
            task.cancel()
        if self._sock is not None:
            if self._reader is not None:
                self._reader.detach()
            self._sock.close(linger=0)
            self._sock = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._bodies is not None:
            self._bodies.close()
            self._bodies = None

    # -- calls -------------------------------------------------------------

    async def call(self, api_id: str, hook_type: str, hook: HookDef,
                   obj: dict[str, Any]) -> dict[str, Any]:
        """Run one hook in the active worker; return the object after the hook."""
        peer = self._active if self._active is not None else await self._wait_for_worker()
        assert self._loop is not None  # start() ran: a programming error otherwise
        call_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        pending = self._pending[call_id] = _Pending(future, peer)
        peer.inflight.add(call_id)
        timer = self._loop.call_later(hook.timeout_ms / 1000, _expire, future, hook)
        self.stats["calls"] += 1
        payload: dict[str, Any] = {
            "api_id": api_id, "hook_type": hook_type, "hook_name": hook.name,
            "timeout_ms": hook.timeout_ms, "object": obj,
        }
        slots = self._bodies.send_side(payload) if self._bodies is not None else None
        started = time.perf_counter_ns()
        try:
            self._queue_call(peer, call_id, payload)
            reply = await future
            got = reply["object"]
            if "bodies" in reply:
                got = self._bodies_in(got, reply["bodies"], slots)
            self.latency.record_ns(time.perf_counter_ns() - started)
        except HookTimeout:
            self.stats["timeouts"] += 1
            raise
        finally:
            timer.cancel()
            self._pending.pop(call_id, None)
            peer.inflight.discard(call_id)
            if slots:
                self._release(peer, call_id, slots, pending.answered)
        return merge_reply(obj, got)

    # -- shared-memory bodies ----------------------------------------------

    def _bodies_in(self, got: dict[str, Any], refs: dict[str, Any],
                   slots: Slots | None) -> dict[str, Any]:
        if self._bodies is None:
            raise HookFailed(ErrorCode.PROTOCOL, "the reply references shared memory, but "
                                                 "this gateway has no arena")
        try:
            return self._bodies.reply_side(got, refs, slots)
        except ProtocolError as exc:
            self.stats["protocol_errors"] += 1
            raise HookFailed(ErrorCode.PROTOCOL, str(exc)) from None

    def _release(self, peer: _Peer, call_id: int, slots: Slots, answered: bool) -> None:
        if answered or self._peers.get(peer.identity) is not peer:
            self._free(slots)
        else:
            # The worker may still write its answer into these slots: keep them
            # until it answers this call (see _resolve) or is dropped.
            peer.quarantine[call_id] = slots

    def _free(self, slots: Slots) -> None:
        if self._bodies is not None:
            self._bodies.free(slots)

    async def _wait_for_worker(self) -> _Peer:
        wait_s = self._cfg.hooks.worker_wait_ms / 1000
        deadline = time.monotonic() + wait_s
        while self._active is None:
            remaining = deadline - time.monotonic()
            if self._state == "fatal" or remaining <= 0:
                self.stats["no_worker"] += 1
                detail = f" ({self._state_detail})" if self._state_detail else ""
                raise NoWorker(f"no plugin worker is available: {self._state}{detail}")
            try:
                await asyncio.wait_for(self._routable.wait(), remaining)
            except TimeoutError:
                continue
        return self._active

    # -- supervisor notifications -----------------------------------------

    def on_worker_exited(self, generation: int, reason: str) -> None:
        """The supervisor saw the worker exit: route nothing more to it, fail its calls.

        The exit report travels on another channel than the worker's last
        answers, and may overtake them: the socket is read first, and calls still
        unanswered get EXIT_GRACE_S for answers still in transit.
        """
        if self._reader is not None:
            self._reader.drain_now()
        text = f"worker generation {generation} exited: {reason}"
        for peer in [p for p in self._workers() if p.generation == generation]:
            if self._active is peer:
                self._active = None
                self._routable.clear()
            if not peer.inflight or self._loop is None:
                self._drop_peer(peer, text)
            else:
                self._loop.call_later(EXIT_GRACE_S, self._drop_peer, peer, text)
        if self._active is None:
            self._state = "restarting"

    def _workers(self) -> list[_Peer]:
        return list(self._peers.values())

    def on_worker_state(self, state: str, generation: int | None, detail: str) -> None:
        self._state, self._state_detail = state, detail
        if state == "fatal":
            # Waiting callers would only time out: let them fail per policy now.
            self._routable.set()
            self._routable.clear()

    def health(self) -> dict[str, Any]:
        active = self._active
        return {
            "state": "running" if active else self._state,
            "detail": "" if active else self._state_detail,
            "generation": active.generation if active else None,
            "pid": active.pid if active else None,
            "ready": active is not None,
            "draining": sorted(p.generation for p in self._workers() if p.draining),
            "inflight": len(self._pending),
            "plugins": active.plugins if active else {},
            "sandbox": active.sandbox if active else {},
            "call_threads": active.call_threads if active else {},
            "hook_latency_us": self.latency.summary(),
            "shm": self._arena_health(),
        }

    def _arena_health(self) -> dict[str, Any]:
        bodies = self._bodies
        return {"enabled": bodies is not None,
                "size": bodies.arena.size if bodies else 0,
                "in_use": bodies.arena.in_use if bodies else 0,
                "threshold": self._cfg.ipc.shm_threshold_bytes,
                "bodies": self.stats["shm_bodies"], "fallback": self.stats["shm_fallback"],
                "quarantined": sum(len(p.quarantine) for p in self._workers())}

    # -- socket I/O --------------------------------------------------------

    def send_event(self, api_id: str, handler: str, event: Mapping[str, str],
                   spec: Mapping[str, str]) -> bool:
        """Ask the active worker to run an @Event handler; False when none is there."""
        peer = self._active
        if peer is None:
            return False
        try:
            self._send(peer, MsgType.EVENT, 0, {"api_id": api_id, "handler": handler,
                                                "event": dict(event), "spec": dict(spec)})
        except WorkerLost:
            return False
        return True

    def _queue_call(self, peer: _Peer, call_id: int, payload: Mapping[str, Any]) -> None:
        """Send a CALL at the end of this loop turn, with the turn's other CALLs.

        Every send that finds ZeroMQ's I/O thread asleep wakes it, which costs
        more than the rest of the send; the requests one loop turn handles then
        share one wake-up.  Errors reach the call through its future.
        """
        assert self._loop is not None  # start() ran
        self._outbox.append((peer.identity, encode(MsgType.CALL, call_id, payload)[0], call_id))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_calls)

    def _flush_calls(self) -> None:
        self._flush_scheduled = False
        batch, self._outbox = self._outbox, []
        for identity, frame, call_id in batch:
            sock = self._sock
            try:
                if sock is None:
                    raise WorkerLost("the hooks socket is closed")
                send_frames(sock, identity, frame)
            except (zmq.ZMQError, WorkerLost) as exc:
                peer = self._peers.get(identity)
                if (peer is not None and isinstance(exc, zmq.ZMQError)
                        and exc.errno == zmq.EHOSTUNREACH):
                    self._drop_peer(peer, "worker disconnected")  # fails its calls
                pending = self._pending.get(call_id)
                if pending is not None and not pending.future.done():
                    self.stats["worker_lost"] += 1
                    reason = exc.strerror if isinstance(exc, zmq.ZMQError) else str(exc)
                    pending.future.set_exception(WorkerLost(f"cannot reach the worker: "
                                                            f"{reason}"))
        if self._reader is not None:
            self._reader.after_send()

    def _send(self, peer: _Peer, mtype: MsgType, call_id: int, payload: Mapping[str, Any]) -> None:
        self._send_to(peer.identity, mtype, call_id, payload, peer)

    def _send_to(self, identity: bytes, mtype: MsgType, call_id: int,
                 payload: Mapping[str, Any], peer: _Peer | None = None) -> None:
        if self._outbox:
            self._flush_calls()  # messages leave in the order they were made (DRAIN after CALLs)
        sock = self._sock
        if sock is None:
            raise WorkerLost("the hooks socket is closed")
        try:
            send_frames(sock, identity, *encode(mtype, call_id, payload))
        except zmq.ZMQError as exc:
            if peer is not None and exc.errno == zmq.EHOSTUNREACH:
                self._drop_peer(peer, "worker disconnected")
            raise WorkerLost(f"cannot reach the worker: {exc.strerror}") from None
        finally:
            if self._reader is not None:
                self._reader.after_send()

    def _handle_frames(self, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        peer = self._peers.get(identity)
        try:
            message = decode(body, self._limits)
        except ProtocolError as exc:
            self._protocol_error(identity, peer, body, exc)
            return
        if message.type is MsgType.HELLO:
            self._on_hello(identity, message)
        elif peer is None:
            # A worker we do not know (we restarted, or it never said HELLO).
            self._send_quietly(identity, MsgType.RESYNC, 0, {})
        else:
            peer.last_seen = time.monotonic()
            self._dispatch(peer, message)

    def _dispatch(self, peer: _Peer, message: Message) -> None:
        mtype = message.type
        if mtype is MsgType.REPLY:
            self._resolve(peer, message.call_id, message.payload, None)
        elif mtype is MsgType.ERROR:
            payload = message.payload
            error: HookCallError = HookFailed(payload["code"], payload["message"])
            if payload["code"] == ErrorCode.DEADLINE:
                # The worker's clock ran out first: the same outcome as ours running out.
                error = HookTimeout(payload["message"])
            elif payload["code"] == ErrorCode.UNAVAILABLE:
                error = BackendUnavailable(payload["message"])
            self._resolve(peer, message.call_id, None, error)
        elif mtype is MsgType.HOST_CALL:
            self._start_host_call(peer, message)
        elif mtype is MsgType.DRAIN_ACK:
            log.info("worker generation %d drained", peer.generation)
        elif mtype is MsgType.HEARTBEAT:
            peer.call_threads = message.payload.get("calls", peer.call_threads)
        else:
            self._protocol_error(peer.identity, peer, None,
                                 ProtocolError(f"{mtype.name} is not sent by workers"))

    def _resolve(self, peer: _Peer, call_id: int, obj: dict[str, Any] | None,
                 error: HookCallError | None) -> None:
        pending = self._pending.get(call_id)
        if pending is None or pending.peer is not peer:
            # Late (after its deadline) or forged: either way nobody waits for it.
            self.stats["late_replies"] += 1
            slots = peer.quarantine.pop(call_id, None)
            if slots:
                self._free(slots)  # it answered: it no longer touches them
            return
        pending.answered = True
        if pending.future.done():
            return
        if error is None:
            assert obj is not None  # REPLY payloads always carry an object (validated)
            self.stats["replies"] += 1
            pending.future.set_result(obj)
        else:
            if not isinstance(error, HookTimeout):
                self.stats["errors"] += 1
            pending.future.set_exception(error)

    # -- admission ---------------------------------------------------------

    def _on_hello(self, identity: bytes, message: Message) -> None:
        hello = message.payload
        generation, token = hello["generation"], hello["token"]
        reason = ""
        if not verify_worker_token(self._key, generation, token):
            reason = "invalid token"
        elif self._active is not None and generation < self._active.generation:
            reason = f"generation {generation} is older than active {self._active.generation}"
        if reason:
            self.stats["rejected"] += 1
            log.warning("rejected worker pid %s: %s", hello.get("pid"), reason)
            self._send_quietly(identity, MsgType.REJECT, 0, {"reason": reason})
            return
        peer = self._peers.get(identity)
        if peer is None:
            peer = _Peer(identity, generation, hello["pid"], hello.get("plugins", {}))
            peer.sandbox = dict(hello.get("sandbox", {}))
            self._peers[identity] = peer
            self.stats["admitted"] += 1
            log.info("worker generation %d (pid %d) admitted", generation, peer.pid)
        previous = self._active
        if previous is None or generation >= previous.generation:
            self._activate(peer)
        welcome: dict[str, Any] = {"generation": generation, "active": self._active is peer}
        if self._bodies is not None:
            welcome["shm"] = self._bodies.welcome()
        self._send_quietly(identity, MsgType.WELCOME, 0, welcome)

    def _activate(self, peer: _Peer) -> None:
        previous, self._active = self._active, peer
        peer.draining = False
        self._state, self._state_detail = "running", ""
        self._routable.set()
        if self.on_activate is not None:
            self.on_activate(peer.generation)
        if previous is not None and previous is not peer:
            previous.draining = True
            log.info("generation %d active; draining generation %d",
                     peer.generation, previous.generation)
            self._send_quietly(previous.identity, MsgType.DRAIN, 0,
                               {"grace_ms": self._cfg.worker.drain_grace_ms,
                                "calls": sorted(previous.inflight)})

    def _drop_peer(self, peer: _Peer, reason: str) -> None:
        if self._peers.get(peer.identity) is not peer:
            return  # dropped already (the socket and the supervisor both said so)
        self._peers.pop(peer.identity, None)
        for call_id in list(peer.inflight):
            pending = self._pending.get(call_id)
            if pending is not None and not pending.future.done():
                self.stats["worker_lost"] += 1
                pending.future.set_exception(WorkerLost(reason))
        peer.inflight.clear()
        for slots in peer.quarantine.values():
            self._free(slots)  # a dead worker writes nothing more
        peer.quarantine.clear()
        if self._active is peer:
            self._active = None
            self._routable.clear()
        log.warning("%s", reason)

    # -- host calls --------------------------------------------------------

    def _start_host_call(self, peer: _Peer, message: Message) -> None:
        self.stats["host_calls"] += 1
        task = asyncio.ensure_future(self._host_call(peer, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _host_call(self, peer: _Peer, message: Message) -> None:
        payload = message.payload
        try:
            result = await self._host.host_call(payload.get("api_id", ""), payload)
        except StorageUnavailable as exc:
            # Expected while Redis is down: the storage layer already logs it.
            self._answer_host_error(peer, message, ErrorCode.UNAVAILABLE, str(exc))
            return
        except Exception as exc:
            log.exception("host call %s failed", payload["op"])
            self._answer_host_error(peer, message, ErrorCode.HOST_CALL_FAILED, str(exc))
            return
        if message.call_id:
            self._send_quietly(peer.identity, MsgType.HOST_REPLY, message.call_id, result or {})

    def _answer_host_error(self, peer: _Peer, message: Message, code: str, text: str) -> None:
        if message.call_id:
            self._send_quietly(peer.identity, MsgType.ERROR, message.call_id,
                               {"code": code, "message": text or code})

    # -- errors ------------------------------------------------------------

    def _send_quietly(self, identity: bytes, mtype: MsgType, call_id: int,
                      payload: Mapping[str, Any]) -> None:
        try:
            self._send_to(identity, mtype, call_id, payload)
        except WorkerLost as exc:
            log.debug("could not send %s: %s", mtype.name, exc)

    def _protocol_error(self, identity: bytes, peer: _Peer | None, body: list[bytes] | None,
                        exc: ProtocolError) -> None:
        self.stats["protocol_errors"] += 1
        who = f"generation {peer.generation}" if peer else f"unadmitted peer {identity.hex()}"
        log.warning("protocol error from %s: %s", who, exc)
        if peer is None:
            self._send_quietly(identity, MsgType.REJECT, 0, {"reason": f"protocol error: {exc}"})
            return
        # Fail the call the bad message was meant to answer, instead of letting it time out.
        if body is not None and len(body) == 1 and len(body[0]) >= 10:
            call_id = int.from_bytes(body[0][2:10], "big")  # the header's call_id
            self._resolve(peer, call_id, None, HookFailed(ErrorCode.PROTOCOL, str(exc)))
        peer.strikes += 1
        if peer.strikes >= _MAX_PROTOCOL_STRIKES:
            self._drop_peer(peer, f"worker generation {peer.generation} dropped: "
                                  f"{peer.strikes} protocol errors")


def _expire(future: asyncio.Future[Any], hook: HookDef) -> None:
    # The error is built only when a call does time out: not on every call's path.
    _fail(future, HookTimeout(f"hook {hook.name} exceeded {hook.timeout_ms} ms"))


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _remove_stale(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
