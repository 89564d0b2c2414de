"""One `python -m worker` serving two gateway processes (issue #16 item 1).

The test plays the supervisor (a real control socketpair) and two gateway
processes: a real ZeroMQ ROUTER on `hooks.sock` and one on `hooks-1.sock`
(`coproc.gateway.processes: 2`).  Each gateway answers the plugins' `get_data`
with its own name, so a REPLY shows which gateway served the hook's host
call.  Every wait has a deadline; the worker is killed by pid in teardown.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from unit.worker_launch import launch_worker, write_one_api

from ipc import exitcodes
from ipc.control import decode_control
from ipc.protocol import Message, MsgType, decode, encode
from ipc.tokens import worker_token
from worker.uplink import INTERNAL_ERROR
from worker.uplinks import exit_code

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = b"u" * 32
GENERATION = 3
STEP_S = 20.0  # generous: a loaded machine starts interpreters slowly
CALLS_EACH = 20

PLUGIN = """
    import os
    import threading
    import time

    from tyk.decorators import *
    from gateway import TykGateway as tyk

    @Hook
    def Who(request, session, spec):
        request.add_header("X-Served-By", tyk.get_data("who").decode())
        return request, session

    @Hook
    async def WhoAsync(request, session, spec):
        who = await tyk.get_data_async("who")
        request.add_header("X-Served-By", who.decode())
        return request, session

    @Hook
    def Hold(request, session, spec):
        # In flight until the test creates the file the request names (bounded).
        tyk.log("holding")
        tyk.get_data("who")  # a blocking host call: another call thread reads meanwhile
        release = request.get_header("X-Release")
        for _ in range(2000):
            if os.path.exists(release):
                break
            time.sleep(0.01)
        request.add_header("X-Served-By", "released")
        return request, session

    @Hook
    def Tid(request, session, spec):
        request.add_header("X-Thread", str(threading.get_ident()))
        return request, session

    @Hook
    def Ident(request, session, spec):
        # Which thread ran this hook, and which gateway its host call reached.
        request.add_header("X-Thread", str(threading.get_ident()))
        request.add_header("X-Served-By", tyk.get_data("who").decode())
        return request, session

    @Hook
    def OwnThread(request, session, spec):
        # A plugin's own thread belongs to no call: its host calls go to the
        # first gateway still served.
        thread = threading.Thread(target=tyk.log, args=("from my own thread",))
        thread.start()
        thread.join()
        return request, session
"""


class FakeGateway:
    """One gateway process's ROUTER; answers `get_data("who")` with its name."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, name: str) -> None:
        self.name = name
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.peer: bytes | None = None
        self.received: list[Message] = []  # everything but HEARTBEATs and HELLOs
        self.heartbeats: list[dict[str, Any]] = []
        self.hellos: list[dict[str, Any]] = []

    def pump(self) -> None:
        """Take what is waiting (never blocks)."""
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            self.peer = frames[0]
            for frame in frames[1:]:  # a batch: a message per frame
                self._take(decode([frame]))

    def _take(self, message: Message) -> None:
        if message.type is MsgType.HEARTBEAT:
            self.heartbeats.append(message.payload)
        elif message.type is MsgType.HELLO:
            self.hellos.append(message.payload)
        elif (message.type is MsgType.HOST_CALL and message.call_id
              and message.payload["op"] == "get_data"):
            self.send(MsgType.HOST_REPLY, message.call_id,
                      {"value": self.name.encode(), "found": True})
        else:
            self.received.append(message)

    def send(self, mtype: MsgType, call_id: int, payload: dict[str, Any]) -> None:
        assert self.peer is not None, "the worker never spoke to this gateway"
        self.sock.send_multipart([self.peer, encode(mtype, call_id, payload)])

    def call(self, call_id: int, name: str, headers: dict[str, str] | None = None) -> None:
        self.send(MsgType.CALL, call_id, {
            "api_id": "api1", "hook_type": "pre", "hook_name": name, "timeout_ms": 30_000,
            "object": {"hook_type": "pre", "hook_name": name,
                       "request": {"headers": {"Host": "example", **(headers or {})}},
                       "spec": {"APIID": "api1"}}})

    def taken(self, mtype: MsgType) -> list[Message]:
        """The messages of `mtype` received so far, removed from `received`."""
        found = [m for m in self.received if m.type is mtype]
        self.received = [m for m in self.received if m.type is not mtype]
        return found


class Instance:
    """The worker process, its two gateways and the supervisor's control socket."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.gateways: list[FakeGateway] = []
        self.control: socket.socket | None = None
        self.datagrams: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "worker.log"

    def start(self) -> None:
        config = write_one_api(self.base, PLUGIN, "Who", {
            "gateway": {"processes": 2},
            # Fewer call threads than concurrent plain hooks, each blocking on a host
            # call: with every thread inside such a hook, the stand-in reader reads the
            # replies (worker/callthreads.py).  No hand-off by the watchdog: only a
            # blocking host call's own hand-off lets its reply be read.
            "worker": {"heartbeat_interval_ms": 50, "threads": 2, "drain_grace_ms": 5000,
                       "handoff_ms": 60_000}})
        self.gateways = [FakeGateway(self.ctx, f"ipc://{self.base}/hooks.sock", "gw0"),
                         FakeGateway(self.ctx, f"ipc://{self.base}/hooks-1.sock", "gw1")]
        self.proc, self.control = launch_worker(config, self.log, GENERATION,
                                                worker_token(KEY, GENERATION))

    def pump(self) -> None:
        for gateway in self.gateways:
            gateway.pump()
        assert self.control is not None
        while select.select([self.control], [], [], 0)[0]:
            self.datagrams.append(decode_control(self.control.recv(1 << 20)))

    def until(self, what: str, done: Callable[[], bool]) -> None:
        """Pump both gateways and the control socket until `done()`, or fail."""
        deadline = time.monotonic() + STEP_S
        while True:
            self.pump()
            if done():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not in time: {what}\n{self.output()}")
            zmq.select([g.sock for g in self.gateways], [], [], 0.01)

    def control_of(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.datagrams if d["type"] == kind]

    def admit_both(self) -> None:
        self.until("HELLO on both sockets", lambda: all(g.hellos for g in self.gateways))
        for gateway in reversed(self.gateways):  # the second gateway admits first
            gateway.send(MsgType.WELCOME, 0, {"generation": GENERATION, "active": True})
        self.until("heartbeats on both sockets (admitted)",
                   lambda: all(g.heartbeats for g in self.gateways))

    def hold(self, gateway: FakeGateway, call_id: int, release: Path) -> None:
        """A `Hold` hook in flight on `gateway` (until `release` exists), once it logged."""
        gateway.call(call_id, "Hold", {"X-Release": str(release)})
        self.until("the held hook's log", lambda: any(
            m.type is MsgType.HOST_CALL for m in gateway.received))

    def replies(self, gateway: FakeGateway, count: int) -> dict[int, Message]:
        self.until(f"{count} answer(s) from {gateway.name}",
                   lambda: sum(m.type in (MsgType.REPLY, MsgType.ERROR)
                               for m in gateway.received) >= count)
        answers = gateway.taken(MsgType.REPLY) + gateway.taken(MsgType.ERROR)
        return {m.call_id: m for m in answers}

    def wait(self) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + STEP_S
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the worker did not exit\n{self.output()}")
            self.pump()  # keep reading: a DRAIN_ACK must not wait on us
            zmq.select([g.sock for g in self.gateways], [], [], 0.01)
        self.pump()
        return self.proc.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STEP_S)
        for gateway in self.gateways:
            gateway.sock.close(linger=0)
        self.ctx.term()
        if self.control is not None:
            self.control.close()


@pytest.fixture
def instance() -> Iterator[Instance]:
    base = Path(tempfile.mkdtemp(prefix="cpu-"))  # short: ipc:// paths must fit sun_path
    assert len(f"ipc://{base}/hooks-1.sock") < 100
    inst = Instance(base)
    try:
        inst.start()
        yield inst
    finally:
        inst.close()
        shutil.rmtree(base, ignore_errors=True)


def served_by(reply: Message) -> str:
    assert reply.type is MsgType.REPLY, reply
    return str(reply.payload["object"]["request"]["set_headers"]["X-Served-By"])


def own_thread_log(instance: Instance, via: FakeGateway, call_id: int) -> FakeGateway:
    """Which gateway a log from a plugin's own thread reaches (the hook ran via `via`)."""
    via.call(call_id, "OwnThread")
    assert instance.replies(via, 1)[call_id].type is MsgType.REPLY
    found = []

    def logged() -> bool:
        for gateway in instance.gateways:
            for message in gateway.taken(MsgType.HOST_CALL):
                assert message.payload["op"] == "log"
                assert message.payload["message"] == "from my own thread"
                found.append(gateway)
        return bool(found)

    instance.until("the own thread's log", logged)
    assert len(found) == 1
    return found[0]


def test_one_worker_serves_two_gateways(instance: Instance) -> None:
    """
    1. the worker says HELLO on both hooks sockets, with the same identity;
    2. the second gateway admits it first: `ready` goes to the supervisor once,
       and stays once after the first gateway admits it too;
    3. interleaved CALLs on both sockets, with the same call ids, plain and
       `async def` hooks: each is answered on its own socket with its own id,
       and each hook's host call went to the gateway that sent its CALL;
    4. a plugin's own thread's host call goes to the first gateway;
    5. the heartbeats, to the supervisor and to each gateway alike, count the
       calls of both gateways.
    """
    instance.admit_both()
    gw0, gw1 = instance.gateways
    assert gw0.hellos[0] == gw1.hellos[0]  # one worker: one generation, pid, token
    assert instance.proc is not None and gw0.hellos[0]["pid"] == instance.proc.pid
    instance.until("ready", lambda: bool(instance.control_of("ready")))

    for call_id in range(1, CALLS_EACH + 1):
        for gateway in instance.gateways:
            gateway.call(call_id, "Who" if call_id % 2 else "WhoAsync")
    for gateway in instance.gateways:
        answers = instance.replies(gateway, CALLS_EACH)
        assert sorted(answers) == list(range(1, CALLS_EACH + 1))
        assert {served_by(reply) for reply in answers.values()} == {gateway.name}

    assert own_thread_log(instance, gw1, 100) is gw0

    total = 2 * CALLS_EACH + 1
    instance.until("heartbeats with every call counted", lambda: (
        instance.control_of("heartbeat")[-1]["calls"]["calls"] == total
        and all(g.heartbeats[-1]["calls"]["calls"] == total for g in instance.gateways)))
    assert len(instance.control_of("ready")) == 1
    assert instance.alive()


def test_one_reading_thread_serves_both_gateways(instance: Instance) -> None:
    """
    1. both gateways admit the worker;
    2. a burst of CALLs on both sockets, of a hook that never blocks (and no
       hand-off by the watchdog here): one thread ran them all, whichever
       gateway sent them (one reader per uplink would show two threads);
    3. CALLs on both sockets, one at a time in turns, each hook making a
       blocking host call (a hand-off each): every hook's host call reaches
       its own gateway;
    4. the heartbeat counts the one pool's threads once: at most `threads` x 2,
       and every thread that ran a hook is one of them.
    """
    instance.admit_both()
    for call_id in range(1, CALLS_EACH + 1):
        for gateway in instance.gateways:
            gateway.call(call_id, "Tid")
    threads_seen = {reply.payload["object"]["request"]["set_headers"]["X-Thread"]
                    for gateway in instance.gateways
                    for reply in instance.replies(gateway, CALLS_EACH).values()}
    assert len(threads_seen) == 1, threads_seen
    seen: dict[str, set[str]] = {"gw0": set(), "gw1": set()}
    for call_id in range(100, 100 + CALLS_EACH):
        for gateway in instance.gateways:
            gateway.call(call_id, "Ident")
            reply = instance.replies(gateway, 1)[call_id]
            assert served_by(reply) == gateway.name
            seen[gateway.name].add(reply.payload["object"]["request"]["set_headers"]["X-Thread"])
    total = 4 * CALLS_EACH
    instance.until("heartbeats with every call counted", lambda: (
        instance.gateways[1].heartbeats[-1]["calls"]["calls"] == total))
    threads = instance.gateways[1].heartbeats[-1]["calls"]["threads"]
    assert 1 <= threads <= 4, threads
    assert len(seen["gw0"] | seen["gw1"]) <= threads


def test_hooks_held_on_one_gateway_leave_the_other_served(instance: Instance) -> None:
    """
    1. gateway 0 sends twice as many held hooks as it has call threads (2 of
       4 in the pool): two run (each has made a blocking host call), the other
       two wait for gateway 0's share of the threads;
    2. gateway 1's CALLs are still served meanwhile, by call threads, with
       their host calls to gateway 1;
    3. gateway 0's hooks are all answered once released.
    """
    instance.admit_both()
    gw0, gw1 = instance.gateways
    release = instance.base / "release-gw0"
    for call_id in (1, 2, 3, 4):
        gw0.call(call_id, "Hold", {"X-Release": str(release)})

    def holding() -> int:
        return sum(m.type is MsgType.HOST_CALL and m.payload.get("message") == "holding"
                   for m in gw0.received)

    instance.until("two held hooks' logs", lambda: holding() >= 2)
    for call_id in (11, 12, 13):
        gw1.call(call_id, "Ident")
    assert {served_by(r) for r in instance.replies(gw1, 3).values()} == {"gw1"}
    assert holding() == 2  # the others wait for gateway 0's share of the threads
    assert not gw0.taken(MsgType.REPLY)  # still held
    release.touch()
    assert {served_by(reply) for reply in instance.replies(gw0, 4).values()} == {"released"}


def test_a_drain_refuses_its_own_gateways_calls_only(instance: Instance) -> None:
    """
    1. both gateways admit the worker; gateway 0 holds one hook in flight;
    2. gateway 0 says DRAIN: its uplink waits for the held hook, and refuses
       gateway 0's new CALLs with `draining`;
    3. gateway 1's CALLs are served meanwhile;
    4. the held hook is released: answered, then gateway 0's DRAIN_ACK; the
       worker keeps serving gateway 1.
    """
    instance.admit_both()
    gw0, gw1 = instance.gateways
    release = instance.base / "release-drain"
    instance.hold(gw0, 1, release)
    gw0.send(MsgType.DRAIN, 0, {"grace_ms": 10_000})
    gw0.call(2, "Who")
    refused = instance.replies(gw0, 1)[2]
    assert refused.type is MsgType.ERROR and refused.payload["code"] == "draining", refused
    gw1.call(3, "Who")
    assert served_by(instance.replies(gw1, 1)[3]) == "gw1"
    assert not gw0.taken(MsgType.DRAIN_ACK)
    release.touch()
    assert served_by(instance.replies(gw0, 1)[1]) == "released"
    instance.until("DRAIN_ACK from gateway 0", lambda: bool(gw0.taken(MsgType.DRAIN_ACK)))
    gw1.call(4, "Ident")
    assert served_by(instance.replies(gw1, 1)[4]) == "gw1"
    assert instance.alive()


def test_calls_the_stand_in_reads_keep_their_gateway(instance: Instance) -> None:
    """Both call threads of gateway 1's uplink inside held hooks: the stand-in reader
    reads the next CALL, an `async def` hook's, and hands it to the loop; that hook's
    host call still goes to gateway 1 (the stand-in runs in the uplink's context)."""
    instance.admit_both()
    gw1 = instance.gateways[1]
    release = instance.base / "release-all"
    for call_id in (1, 2):  # as many as the uplink has call threads (2)
        gw1.call(call_id, "Hold", {"X-Release": str(release)})
    instance.until("both held hooks' logs", lambda: sum(
        m.type is MsgType.HOST_CALL and m.payload.get("message") == "holding"
        for m in gw1.received) >= 2)
    gw1.call(3, "WhoAsync")
    assert served_by(instance.replies(gw1, 1)[3]) == "gw1"
    release.touch()
    assert {served_by(reply) for reply in instance.replies(gw1, 2).values()} == {"released"}


def test_a_drain_from_one_gateway_leaves_the_other_serving(instance: Instance) -> None:
    """
    1. both gateways admit the worker;
    2. gateway 0 says DRAIN: it gets DRAIN_ACK; the worker keeps running;
    3. gateway 1 is still served, and a plugin's own thread now reaches it;
    4. gateway 1 says DRAIN: DRAIN_ACK, and the worker exits 0.
    """
    instance.admit_both()
    gw0, gw1 = instance.gateways
    gw0.send(MsgType.DRAIN, 0, {"grace_ms": 2000})
    instance.until("DRAIN_ACK from gateway 0", lambda: bool(gw0.taken(MsgType.DRAIN_ACK)))
    gw1.call(7, "Who")
    assert served_by(instance.replies(gw1, 1)[7]) == "gw1"
    assert instance.alive()
    assert own_thread_log(instance, gw1, 8) is gw1
    gw1.send(MsgType.DRAIN, 0, {"grace_ms": 2000})
    assert instance.wait() == exitcodes.OK, instance.output()
    assert gw1.taken(MsgType.DRAIN_ACK)


def test_sigterm_drains_every_gateway(instance: Instance) -> None:
    """
    1. both gateways admit the worker; a CALL on gateway 1 is in flight (its
       hook waits for a file the test creates later);
    2. SIGTERM: new CALLs on gateway 1's socket are refused with `draining`;
       gateway 0's too, unless its uplink (nothing in flight) has drained and
       said DRAIN_ACK already, after which nothing answers there;
    3. gateway 0 gets its DRAIN_ACK; the in-flight call on gateway 1 is
       answered once released, then DRAIN_ACK, and the worker exits 0.
    """
    instance.admit_both()
    gw0, gw1 = instance.gateways
    release = instance.base / "release"
    instance.hold(gw1, 1, release)
    assert gw1.taken(MsgType.HOST_CALL)[0].payload["message"] == "holding"
    assert instance.proc is not None
    os.kill(instance.proc.pid, signal.SIGTERM)
    for gateway, call_id in ((gw0, 2), (gw1, 3)):
        deadline = time.monotonic() + STEP_S
        while True:  # until the worker has seen the signal, a CALL may still be served
            assert time.monotonic() < deadline, "SIGTERM never took effect"
            gateway.call(call_id, "NoSuchHook")
            instance.until(f"an answer or DRAIN_ACK from {gateway.name}", lambda g=gateway: any(
                m.type in (MsgType.REPLY, MsgType.ERROR, MsgType.DRAIN_ACK) for m in g.received))
            if gateway is gw0 and any(m.type is MsgType.DRAIN_ACK for m in gw0.received):
                break  # drained already: it reads no more CALLs
            refused = instance.replies(gateway, 1)[call_id]
            assert refused.type is MsgType.ERROR
            if refused.payload["code"] == "draining":
                break
    instance.until("DRAIN_ACK from gateway 0", lambda: bool(gw0.taken(MsgType.DRAIN_ACK)))
    assert instance.alive()  # gateway 1's call is still in flight
    assert not gw1.taken(MsgType.DRAIN_ACK)
    release.touch()
    assert served_by(instance.replies(gw1, 1)[1]) == "released"
    assert instance.wait() == exitcodes.OK, instance.output()
    assert gw1.taken(MsgType.DRAIN_ACK)


def test_rejected_by_one_gateway_and_drained_by_the_other_exits_0(
        instance: Instance) -> None:
    """One gateway's REJECT ends that uplink only; the process's code is 0 since
    the other uplink drained normally."""
    instance.until("HELLO on both sockets", lambda: all(g.hellos for g in instance.gateways))
    gw0, gw1 = instance.gateways
    gw0.send(MsgType.REJECT, 0, {"reason": "not you"})
    gw1.send(MsgType.WELCOME, 0, {"generation": GENERATION, "active": True})
    gw1.call(1, "Who")
    assert served_by(instance.replies(gw1, 1)[1]) == "gw1"
    gw1.send(MsgType.DRAIN, 0, {"grace_ms": 1000})
    assert instance.wait() == exitcodes.OK, instance.output()
    assert "rejected this worker: not you" in instance.output()


def test_rejected_by_both_exits_5(instance: Instance) -> None:
    instance.until("HELLO on both sockets", lambda: all(g.hellos for g in instance.gateways))
    for gateway in instance.gateways:
        gateway.send(MsgType.REJECT, 0, {"reason": "bad token"})
    assert instance.wait() == exitcodes.REJECTED, instance.output()


@pytest.mark.parametrize(("codes", "expected"), [
    ([exitcodes.OK], exitcodes.OK),
    ([exitcodes.REJECTED, exitcodes.OK], exitcodes.OK),  # one generation retired normally
    ([exitcodes.REJECTED, exitcodes.BOOT_FAILED], exitcodes.REJECTED),  # the first failure
    ([exitcodes.OK, INTERNAL_ERROR], INTERNAL_ERROR),  # broken: to be respawned
])
def test_the_process_exit_code_from_its_uplinks(codes: list[int], expected: int) -> None:
    assert exit_code(codes) == expected
