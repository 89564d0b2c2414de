"""gateway.peers.PeerTable alone: admission, the active generation, drain, exits, state.

No socket: HELLO payloads are given as `decode` would hand them over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from gateway.hook_errors import NoWorker
from gateway.peers import MAX_PROTOCOL_STRIKES, Peer, PeerTable, WorkerState
from ipc.tokens import worker_token

KEY = b"k" * 32
STATS = ("admitted", "rejected", "no_worker")


def hello(generation: int, token: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"generation": generation, "pid": 100 + generation,
            "token": token or worker_token(KEY, generation), **extra}


class Table:
    """A PeerTable with its counters and the generations it reported active."""

    def __init__(self) -> None:
        self.stats = dict.fromkeys(STATS, 0)
        self.activated: list[int] = []
        self.table = PeerTable(KEY, self.stats, self.activated.append)

    def admit(self, identity: bytes, generation: int, **extra: Any) -> Peer:
        admission = self.table.admit(identity, hello(generation, **extra))
        assert admission.peer is not None, admission.reason
        return admission.peer


def test_a_valid_hello_is_admitted_and_becomes_active() -> None:
    t = Table()
    assert t.table.state is WorkerState.STARTING and t.table.active is None
    admission = t.table.admit(b"w1", hello(1, plugins={"api": {"ok": True}},
                                           sandbox={"rlimits": "active"}))
    peer = admission.peer
    assert peer is not None and admission.retired is None
    assert t.table.active is peer and t.table.holds(peer) and t.table.get(b"w1") is peer
    assert (peer.generation, peer.pid, peer.sandbox) == (1, 101, {"rlimits": "active"})
    assert t.table.state is WorkerState.RUNNING and t.activated == [1]
    assert t.stats["admitted"] == 1
    report = t.table.report()
    assert report["ready"] is True and report["generation"] == 1 and report["pid"] == 101
    assert report["plugins"] == {"api": {"ok": True}} and report["state"] == "running"


def test_a_wrong_token_is_rejected() -> None:
    t = Table()
    admission = t.table.admit(b"w1", hello(1, token=worker_token(KEY, 2)))
    assert admission.peer is None and admission.reason == "invalid token"
    assert t.table.active is None and t.table.get(b"w1") is None
    assert t.stats == {"admitted": 0, "rejected": 1, "no_worker": 0}


def test_a_newer_generation_takes_over_and_retires_the_active_one() -> None:
    t = Table()
    old = t.admit(b"w1", 1)
    admission = t.table.admit(b"w2", hello(2))
    assert admission.peer is t.table.active and admission.retired is old
    assert old.draining and t.table.holds(old)  # still admitted: it finishes its calls
    assert t.table.report()["draining"] == [1] and t.activated == [1, 2]
    stale = t.table.admit(b"w3", hello(1))
    assert stale.peer is None and stale.reason == "generation 1 is older than active 2"


def test_a_repeated_hello_keeps_the_peer() -> None:
    t = Table()
    first = t.admit(b"w1", 1)
    again = t.table.admit(b"w1", hello(1))
    assert again.peer is first and again.retired is None
    assert t.stats["admitted"] == 1


def test_remove_forgets_once_and_deactivates() -> None:
    t = Table()
    peer = t.admit(b"w1", 1)
    assert t.table.remove(peer) is True
    assert t.table.remove(peer) is False  # the socket and the supervisor may both say so
    assert t.table.active is None and not t.table.holds(peer)
    assert t.table.report()["ready"] is False


def test_exit_of_the_active_generation_means_restarting() -> None:
    t = Table()
    peer = t.admit(b"w1", 1)
    assert t.table.exited(1) == [peer]
    assert t.table.active is None and t.table.state is WorkerState.RESTARTING
    assert t.table.holds(peer)  # removed by the caller once answers in transit are in


def test_exit_of_a_draining_generation_leaves_the_active_one() -> None:
    t = Table()
    old, new = t.admit(b"w1", 1), t.admit(b"w2", 2)
    assert t.table.exited(1) == [old]
    assert t.table.active is new and t.table.state is WorkerState.RUNNING
    assert t.table.exited(7) == []


def test_supervisor_state_is_reported_while_no_generation_is_active(
        caplog: pytest.LogCaptureFixture) -> None:
    t = Table()
    t.table.set_state("restarting", "exit code 3")
    assert t.table.report()["state"] == "restarting"
    assert t.table.report()["detail"] == "exit code 3"
    with caplog.at_level(logging.WARNING, "coproc.hooks"):
        t.table.set_state("napping", "")
    assert t.table.state is WorkerState.RESTARTING and "napping" in caplog.text
    t.admit(b"w1", 1)
    assert t.table.report()["state"] == "running" and t.table.report()["detail"] == ""


async def test_waiting_callers_get_the_worker_admitted_meanwhile() -> None:
    t = Table()
    waiter = asyncio.ensure_future(t.table.wait_for_active(2.0))
    await asyncio.sleep(0)
    peer = t.admit(b"w1", 1)
    assert await asyncio.wait_for(waiter, 1.0) is peer


async def test_waiting_ends_with_no_worker_at_the_bound() -> None:
    t = Table()
    t.table.set_state("restarting", "killed by SIGKILL")
    started = time.monotonic()
    with pytest.raises(NoWorker, match=r"restarting \(killed by SIGKILL\)"):
        await t.table.wait_for_active(0.05)
    assert 0.04 <= time.monotonic() - started < 1.0
    assert t.stats["no_worker"] == 1


async def test_fatal_fails_waiting_callers_at_once() -> None:
    t = Table()
    waiter = asyncio.ensure_future(t.table.wait_for_active(5.0))
    for _ in range(3):  # the waiter's turns until it waits on the event
        await asyncio.sleep(0)
    t.table.set_state("fatal", "flapping")
    with pytest.raises(NoWorker, match="fatal"):
        await asyncio.wait_for(waiter, 0.5)


def test_strikes_count_up_to_the_limit() -> None:
    t = Table()
    peer = t.admit(b"w1", 1)
    assert [t.table.strike(peer) for _ in range(MAX_PROTOCOL_STRIKES)] == \
        [False] * (MAX_PROTOCOL_STRIKES - 1) + [True]


def test_heartbeat_updates_call_thread_counters() -> None:
    t = Table()
    peer = t.admit(b"w1", 1)
    t.table.heartbeat(peer, {"generation": 1, "calls": {"calls": 3}})
    t.table.heartbeat(peer, {"generation": 1})  # a heartbeat without them changes nothing
    assert t.table.report()["call_threads"] == {"calls": 3}
