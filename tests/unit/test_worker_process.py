"""`python -m worker` as a real process; the test plays supervisor and gateway.

The test binds a real ZeroMQ ROUTER on ipc:// in a short temporary directory,
hands the worker one end of a real control socketpair, and sets the
supervisor's environment (COPROC_SUPERVISOR_PID is the test's own pid, since
the test is the parent).  Every wait has a deadline; the process is killed by
pid in teardown whatever happens.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from unit.worker_launch import launch_worker, write_one_api

from ipc import exitcodes
from ipc.control import decode_control
from ipc.protocol import Message, MsgType, decode, encode
from ipc.tokens import worker_token

REPO_ROOT = Path(__file__).resolve().parents[2]
KEY = b"k" * 32
GENERATION = 7
STEP_S = 20.0  # generous: a loaded CI machine starts interpreters slowly

PLUGIN = """
    import os
    import re
    import threading

    from tyk.decorators import *
    from gateway import TykGateway as tyk

    @Hook
    def AddGreeting(request, session, spec):
        greeting = tyk.get_data("greeting")  # a HOST_CALL the test answers
        tyk.log("AddGreeting ran", "info")
        request.add_header("X-Greeting", greeting.decode())
        # The token is 64 hex digits: neither the environment nor an open fd has it.
        with open("/proc/self/environ", "rb") as f:
            environ = f.read()
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:
                pass  # the directory listing's own fd, closed by now
        visible = (re.search(rb"=[0-9a-f]{64}\\x00", environ) is not None
                   or any("coproc-secret" in link for link in fds))
        request.add_header("X-Token-Visible", str(visible))
        return request, session

    @Hook
    def Hang(request, session, spec):
        threading.Event().wait()  # never returns
"""


class Gateway:
    """The test's side of the hooks socket and of the control socketpair."""

    def __init__(self, endpoint: str, control: socket.socket) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.control = control
        self.peer: bytes | None = None
        self.heartbeats = 0
        self.backlog: list[Message] = []  # the rest of the last batch received

    def recv(self, skip: tuple[MsgType, ...] = (MsgType.HEARTBEAT,)) -> Message:
        deadline = time.monotonic() + STEP_S
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no message from the worker in time")
            if not self.backlog:
                if not self.sock.poll(int(remaining * 1000) + 1):
                    continue
                frames = self.sock.recv_multipart()
                self.peer = frames[0]
                self.backlog = [decode([frame]) for frame in frames[1:]]  # a batch
            message = self.backlog.pop(0)
            if message.type is MsgType.HEARTBEAT:
                self.heartbeats += 1
            if message.type not in skip:
                return message

    def send(self, mtype: MsgType, call_id: int, payload: dict[str, Any]) -> None:
        assert self.peer is not None
        self.sock.send_multipart([self.peer, encode(mtype, call_id, payload)])

    def send_raw(self, *frames: bytes) -> None:
        assert self.peer is not None
        self.sock.send_multipart([self.peer, *frames])

    def control_message(self, wanted: str) -> dict[str, Any]:
        deadline = time.monotonic() + STEP_S
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.control], [], [], remaining)
            if readable:
                message = decode_control(self.control.recv(1 << 20))
                if message["type"] == wanted:
                    return message
        raise AssertionError(f"no {wanted!r} control datagram in time")

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()
        self.control.close()


class WorkerProcess:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "worker.log"

    def start(self, token: str) -> Gateway:
        endpoint = f"ipc://{self.base}/h.sock"
        config = write_one_api(self.base, PLUGIN, "AddGreeting", {
            "ipc": {"endpoint": endpoint},
            "worker": {"heartbeat_interval_ms": 50, "threads": 4, "drain_grace_ms": 5000}})
        self.proc, parent = launch_worker(config, self.log, GENERATION, token)
        return Gateway(endpoint, parent)

    def wait(self) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=STEP_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker did not exit; log:\n{self.output()}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STEP_S)


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    base = Path(tempfile.mkdtemp(prefix="cpw-"))  # short: ipc:// paths must fit sun_path
    assert len(f"ipc://{base}/h.sock") < 100
    process = WorkerProcess(base)
    try:
        yield process
    finally:
        process.kill()
        shutil.rmtree(base, ignore_errors=True)


def admit(gateway: Gateway) -> Message:
    hello = gateway.recv()
    assert hello.type is MsgType.HELLO
    gateway.send(MsgType.WELCOME, 0, {"generation": GENERATION, "active": True})
    return hello


def call(gateway: Gateway, call_id: int, name: str = "AddGreeting") -> None:
    gateway.send(MsgType.CALL, call_id, {
        "api_id": "api1", "hook_type": "pre", "hook_name": name, "timeout_ms": 10_000,
        "object": {"hook_type": "pre", "hook_name": name,
                   "request": {"headers": {"Host": "example"}, "raw_body": b"x" * 100_000,
                               "return_overrides": {"response_code": -1}},
                   "spec": {"APIID": "api1"}}})


def answer_get_data(gateway: Gateway, value: bytes) -> None:
    host_call = gateway.recv()
    assert host_call.type is MsgType.HOST_CALL and host_call.call_id != 0
    assert host_call.payload == {"op": "get_data", "key": "greeting"}
    gateway.send(MsgType.HOST_REPLY, host_call.call_id, {"value": value, "found": True})


def reply_after_log(gateway: Gateway) -> Message:
    log = gateway.recv()
    assert log.type is MsgType.HOST_CALL and log.call_id == 0
    # the API and hook that logged (no request id: the test's request has none)
    assert log.payload == {"op": "log", "level": "info", "message": "AddGreeting ran",
                           "api_id": "api1", "hook": "AddGreeting"}
    return gateway.recv()


GREETED = {"request": {"set_headers": {"X-Greeting": "hello", "X-Token-Visible": "False"}}}


def test_admission_call_host_call_and_drain(worker: WorkerProcess) -> None:
    """
    1. the worker says HELLO with its token, generation, pid and load report;
    2. WELCOME makes it send `ready` on the control socket, then heartbeats;
    3. RESYNC makes it say HELLO again;
    4. invalid frames are dropped; a CALL is still served: the hook's get_data
       is a HOST_CALL the test answers, and the REPLY carries only set_headers
       (no 100 kB raw_body back), and the plugin never saw the token;
    5. an unknown hook answers no_such_hook;
    6. DRAIN gets DRAIN_ACK and exit code 0.
    """
    token = worker_token(KEY, GENERATION)
    gateway = worker.start(token)
    try:
        hello = admit(gateway)
        assert hello.payload["token"] == token
        assert hello.payload["generation"] == GENERATION
        assert worker.proc is not None and hello.payload["pid"] == worker.proc.pid
        assert hello.payload["threads"] == 4
        report = hello.payload["plugins"]
        assert report["api1"]["ok"] is True and report["api1"]["hooks"] == ["AddGreeting", "Hang"]
        ready = gateway.control_message("ready")
        assert ready == {"type": "ready", "role": "worker", "pid": hello.payload["pid"],
                         "generation": GENERATION, "plugins": report,
                         "sandbox": hello.payload["sandbox"]}  # the layers, as in HELLO
        beat = gateway.control_message("heartbeat")
        assert beat["generation"] == GENERATION and beat["inflight"] == 0
        heartbeat = gateway.recv(skip=(MsgType.HELLO,))
        assert heartbeat.type is MsgType.HEARTBEAT and heartbeat.payload["rss"] > 0

        gateway.send(MsgType.RESYNC, 0, {})
        admit(gateway)  # HELLO again, admitted again

        gateway.send_raw(b"\x01", b"junk")  # wrong frame count
        gateway.send_raw(encode(MsgType.CALL, 5, {"bogus": True}))  # wrong payload shape
        call(gateway, 42)
        answer_get_data(gateway, b"hello")
        reply = reply_after_log(gateway)
        assert reply.type is MsgType.REPLY and reply.call_id == 42
        assert reply.payload == {"object": GREETED, "run_ns": reply.payload["run_ns"]}
        assert reply.payload["run_ns"] > 0  # the hook's own run time

        call(gateway, 43, name="NoSuchHook")
        error = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
        assert error.type is MsgType.ERROR and error.call_id == 43
        assert error.payload["code"] == "no_such_hook"

        gateway.send(MsgType.DRAIN, 0, {"grace_ms": 2000})
        ack = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
        assert ack.type is MsgType.DRAIN_ACK and ack.payload == {"inflight": 0}
        assert worker.wait() == 0, worker.output()
        assert gateway.heartbeats > 0
    except AssertionError:
        print(worker.output())
        raise
    finally:
        gateway.close()


def test_sigterm_drains_in_flight_calls_and_refuses_new_ones(worker: WorkerProcess) -> None:
    """
    1. a CALL is in flight (its hook waits for a HOST_REPLY);
    2. SIGTERM: a new CALL is refused with `draining`;
    3. the in-flight call completes; then DRAIN_ACK and exit code 0.
    """
    gateway = worker.start(worker_token(KEY, GENERATION))
    try:
        admit(gateway)
        call(gateway, 1)
        host_call = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
        assert host_call.type is MsgType.HOST_CALL
        assert worker.proc is not None
        os.kill(worker.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STEP_S
        while True:  # until the worker has seen the signal, a CALL may still be served
            assert time.monotonic() < deadline, "SIGTERM never took effect"
            call(gateway, 2, name="NoSuchHook")
            refused = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
            assert refused.type is MsgType.ERROR and refused.call_id == 2
            if refused.payload["code"] == "draining":
                break
        gateway.send(MsgType.HOST_REPLY, host_call.call_id, {"value": b"hello", "found": True})
        reply = reply_after_log(gateway)
        assert reply.type is MsgType.REPLY and reply.call_id == 1
        assert reply.payload == {"object": GREETED, "run_ns": reply.payload["run_ns"]}
        assert reply.payload["run_ns"] > 0  # the hook's own run time
        ack = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
        assert ack.type is MsgType.DRAIN_ACK and ack.payload == {"inflight": 0}
        assert worker.wait() == 0, worker.output()
    except AssertionError:
        print(worker.output())
        raise
    finally:
        gateway.close()


def test_hung_hook_times_out_and_does_not_keep_the_worker_alive(
        worker: WorkerProcess) -> None:
    """
    1. a CALL whose hook never returns is answered at its deadline;
    2. the worker keeps serving and heartbeating;
    3. after DRAIN it exits 0 although the hook's thread is still blocked.
    """
    gateway = worker.start(worker_token(KEY, GENERATION))
    try:
        admit(gateway)
        gateway.send(MsgType.CALL, 9, {"api_id": "api1", "hook_type": "pre",
                                       "hook_name": "Hang", "timeout_ms": 200, "object": {}})
        error = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
        assert error.type is MsgType.ERROR and error.call_id == 9
        assert error.payload["code"] == "deadline"
        assert "did not finish within" in error.payload["message"]
        beats = gateway.heartbeats
        gateway.recv(skip=(MsgType.HELLO,))  # the next heartbeat
        assert gateway.heartbeats == beats + 1
        gateway.send(MsgType.DRAIN, 0, {"grace_ms": 100})
        ack = gateway.recv(skip=(MsgType.HEARTBEAT, MsgType.HELLO))
        assert ack.type is MsgType.DRAIN_ACK and ack.payload == {"inflight": 0}
        assert worker.wait() == 0, worker.output()
        assert "still inside a hook at exit (coproc-call-1)" in worker.output()
    except AssertionError:
        print(worker.output())
        raise
    finally:
        gateway.close()


def test_reject_exits_with_code_5(worker: WorkerProcess) -> None:
    gateway = worker.start("0" * 64)  # a token the gateway will not accept
    try:
        hello = gateway.recv()
        assert hello.type is MsgType.HELLO
        gateway.send(MsgType.REJECT, 0, {"reason": "bad token"})
        assert worker.wait() == exitcodes.REJECTED, worker.output()
    finally:
        gateway.close()


def run_once(config: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COPROC_")}
    return subprocess.run(
        [sys.executable, "-m", "worker", "--config", str(config)], cwd=REPO_ROOT,
        env={**clean, "PYTHONPATH": str(REPO_ROOT), **env},
        capture_output=True, text=True, timeout=STEP_S)


def test_bad_config_exits_78_and_missing_environment_exits_3(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    proc = run_once(tmp_path / "bad.json")
    assert proc.returncode == exitcodes.CONFIG
    assert "invalid JSON" in proc.stderr
    (tmp_path / "apps").mkdir()
    (tmp_path / "good.json").write_text(json.dumps({"coproc": {"run_dir": str(tmp_path)}}))
    proc = run_once(tmp_path / "good.json", COPROC_GENERATION="1")  # no token
    assert proc.returncode == exitcodes.BOOT_FAILED
    assert "COPROC_SECRET_FD" in proc.stderr


def test_worker_never_imports_the_gateway_package() -> None:
    probe = ("import sys, worker.main, worker.tyk_api\n"
             "print(sorted(m for m in sys.modules if m == 'gateway' or m.startswith('gateway.')"
             " or m.startswith('aiohttp')))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=STEP_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
