"""The worker generations admitted on the hooks socket, and which one is active.

A worker is admitted by its HELLO: the token must be the one the instance key
gives its generation (ipc/tokens.py), and the generation must not be older
than the active one.  The newest admitted generation is *active*: every new
call goes to it.  Admitting a newer one retires the previous one, which the
hook client then tells to DRAIN: that is how a hot restart keeps every
request.  While no generation is active, the supervisor's `worker_state`
says why (starting, restarting, fatal...), and callers wait a bounded time
for one.

`PeerTable` is the only writer of its peers and of the active generation.  It
sends nothing and knows no calls: the hook client (gateway/hooks.py) does.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.hook_errors import NoWorker
from ipc.tokens import verify_worker_token

__all__ = ["MAX_PROTOCOL_STRIKES", "Admission", "Peer", "PeerTable", "WorkerState"]

log = logging.getLogger("coproc.hooks")

#: An admitted peer that sends this many invalid messages is dropped.
MAX_PROTOCOL_STRIKES: Final = 10


class WorkerState(enum.Enum):
    """The worker as the supervisor reports it (`worker_state`, docs/PROTOCOL.md)."""

    STARTING = "starting"  # no generation admitted yet
    RUNNING = "running"  # a generation is active
    RESTARTING = "restarting"  # the active generation exited; the next one is coming
    FATAL = "fatal"  # the supervisor gave up restarting it (flapping)
    STOPPING = "stopping"  # the instance is stopping


@dataclass(slots=True, eq=False)
class Peer:
    """One admitted worker generation (fields written by `PeerTable` only)."""

    identity: bytes
    generation: int
    pid: int
    plugins: dict[str, Any]
    #: Its sandbox layers, as its HELLO reported them (docs/SECURITY.md).
    sandbox: dict[str, str] = field(default_factory=dict)
    #: Its HELLO said it runs merged CALLs (several hooks, ipc/merged.py).
    merges: bool = False
    draining: bool = False
    strikes: int = 0
    #: Its call threads' counters, as its last HEARTBEAT reported them.
    call_threads: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of a HELLO."""

    peer: Peer | None  # None: rejected, for `reason`
    reason: str = ""
    retired: Peer | None = None  # the generation this one took over from: tell it to DRAIN


class PeerTable:
    """Admitted generations by routing id; the active one; the reported state."""

    def __init__(self, instance_key: bytes, stats: dict[str, int],
                 on_activate: Callable[[int], None] | None = None) -> None:
        self._key = instance_key
        self._stats = stats  # counts admitted, rejected, no_worker
        self._on_activate = on_activate
        self._peers: dict[bytes, Peer] = {}
        #: Where new calls go (read on every call: a plain attribute, not a property).
        self.active: Peer | None = None
        self.state = WorkerState.STARTING
        self.detail = ""
        self._routable = asyncio.Event()  # set while a generation is active

    def get(self, identity: bytes) -> Peer | None:
        return self._peers.get(identity)

    def holds(self, peer: Peer) -> bool:
        """Whether `peer` is still admitted (not dropped, not replaced)."""
        return self._peers.get(peer.identity) is peer

    def admit(self, identity: bytes, hello: Mapping[str, Any]) -> Admission:
        """Check a (validated) HELLO; activate its generation if it is the newest."""
        generation = hello["generation"]
        active = self.active
        reason = ""
        if not verify_worker_token(self._key, generation, hello["token"]):
            reason = "invalid token"
        elif active is not None and generation < active.generation:
            reason = f"generation {generation} is older than active {active.generation}"
        elif any(p.generation == generation and p.identity != identity
                 for p in self._peers.values()):
            # One connection per generation: a second HELLO with a live generation's
            # token is someone else holding it (a plugin that found the token).
            reason = f"generation {generation} is already admitted on another connection"
        if reason:
            self._stats["rejected"] += 1
            log.warning("rejected worker pid %s: %s", hello.get("pid"), reason)
            return Admission(None, reason)
        peer = self._peers.get(identity)
        if peer is None:
            peer = Peer(identity, generation, hello["pid"], hello.get("plugins", {}),
                        dict(hello.get("sandbox", {})), merges=hello.get("merge", False))
            self._peers[identity] = peer
            self._stats["admitted"] += 1
            log.info("worker generation %d (pid %d) admitted", generation, peer.pid)
        if active is None or generation >= active.generation:
            return Admission(peer, retired=self._activate(peer))
        return Admission(peer)

    def _activate(self, peer: Peer) -> Peer | None:
        previous, self.active = self.active, peer
        peer.draining = False
        self.state, self.detail = WorkerState.RUNNING, ""
        self._routable.set()
        if self._on_activate is not None:
            self._on_activate(peer.generation)
        if previous is None or previous is peer:
            return None
        previous.draining = True
        log.info("generation %d active; draining generation %d",
                 peer.generation, previous.generation)
        return previous

    def remove(self, peer: Peer) -> bool:
        """Forget `peer`; False if it was gone already (the socket and the supervisor
        may both report one loss)."""
        if not self.holds(peer):
            return False
        del self._peers[peer.identity]
        if self.active is peer:
            self._deactivate()
        return True

    def exited(self, generation: int) -> list[Peer]:
        """The supervisor saw `generation` exit: route nothing more to its peers
        (returned: the caller removes them once their answers in transit are in)."""
        gone = [peer for peer in self._peers.values() if peer.generation == generation]
        if self.active in gone:
            self._deactivate()
        if self.active is None:
            self.state = WorkerState.RESTARTING
        return gone

    def _deactivate(self) -> None:
        self.active = None
        self._routable.clear()

    def set_state(self, state: str, detail: str) -> None:
        """The supervisor's `worker_state`; an unknown state is logged and ignored."""
        try:
            self.state = WorkerState(state)
        except ValueError:
            log.warning("ignored worker_state %r: not a state this gateway knows", state)
            return
        self.detail = detail
        if self.state is WorkerState.FATAL:
            # Waiting callers would only time out: let them fail per policy now.
            self._routable.set()
            self._routable.clear()

    async def wait_for_active(self, wait_s: float) -> Peer:
        """The active peer, once there is one; NoWorker after `wait_s` or when fatal."""
        deadline = time.monotonic() + wait_s
        while self.active is None:
            remaining = deadline - time.monotonic()
            if self.state is WorkerState.FATAL or remaining <= 0:
                self._stats["no_worker"] += 1
                detail = f" ({self.detail})" if self.detail else ""
                raise NoWorker(f"no plugin worker is available: {self.state.value}{detail}")
            try:
                await asyncio.wait_for(self._routable.wait(), remaining)
            except TimeoutError:
                continue
        return self.active

    def strike(self, peer: Peer) -> bool:
        """Count an invalid message from `peer`; True once it has sent too many."""
        peer.strikes += 1
        return peer.strikes >= MAX_PROTOCOL_STRIKES

    def heartbeat(self, peer: Peer, payload: Mapping[str, Any]) -> None:
        peer.call_threads = payload.get("calls", peer.call_threads)

    def report(self) -> dict[str, Any]:
        """The worker part of /hello."""
        active = self.active
        return {
            "state": WorkerState.RUNNING.value if active else self.state.value,
            "detail": "" if active else self.detail,
            "generation": active.generation if active else None,
            "pid": active.pid if active else None,
            "ready": active is not None,
            "draining": sorted(p.generation for p in self._peers.values() if p.draining),
            "plugins": active.plugins if active else {},
            "sandbox": active.sandbox if active else {},
            "call_threads": active.call_threads if active else {},
        }
