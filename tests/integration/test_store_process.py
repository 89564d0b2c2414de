"""The store process (memory storage for several gateway processes), with real processes.

A real `python -m gateway.storage.server` and real clients: several client
processes share one exact rate limit and quota; a killed or frozen store
makes calls fail with StorageUnavailable within their deadline and they
recover once it is back; garbage on the socket closes that connection only;
a peer of another uid is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from integration.harness import poll
from integration.store_process import StoreProcess

from gateway.storage import RemoteStorage, StorageUnavailable
from ipc.store_protocol import HEADER, MAX_FRAME, Op, encode_reply, encode_request

TESTS = Path(__file__).resolve().parents[1]
#: The client's deadline in these tests (storage.timeout_ms).
DEADLINE_S = 0.5
#: Scheduling slack on a loaded 2-core machine, on top of a deadline.
SLACK_S = 1.0


@pytest.fixture
def store() -> Iterator[StoreProcess]:
    process = StoreProcess().start()
    try:
        yield process
    finally:
        process.close()


def hammer(store: StoreProcess, op: str, key: str, limit: int, calls: int
           ) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)])}
    return subprocess.Popen(
        [sys.executable, "-m", "integration.store_process", "hammer", str(store.socket),
         store.token, op, key, str(limit), str(calls)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True)


def results(procs: list[subprocess.Popen[str]]) -> list[dict[str, int]]:
    out = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise
        assert proc.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


@pytest.mark.parametrize("op", ["rate", "quota"])
def test_client_processes_share_one_exact_limit(store: StoreProcess, op: str) -> None:
    """1. three client processes, 400 concurrent hits each, limit 250 (one key);
    2. exactly 250 are allowed in total, and more than one process got some."""
    key = f"{op}-{uuid.uuid4().hex}"
    got = results([hammer(store, op, key, 250, 400) for _ in range(3)])
    assert [g["errors"] for g in got] == [0, 0, 0]
    assert sum(g["allowed"] for g in got) == 250, got
    assert len({g["pid"] for g in got}) == 3


async def _timed_failure(remote: RemoteStorage) -> float:
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        await remote.rate_hit("rate-x", 10, 1)
    return time.monotonic() - started


async def _recovered(remote: RemoteStorage, bound_s: float) -> bool:
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        if await remote.ping():
            return True
        await asyncio.sleep(0.05)
    return False


def test_killed_store_fails_within_the_deadline_then_recovers(store: StoreProcess) -> None:
    """1. a client stores a value; 2. SIGKILL the store: in-flight and new calls raise
    StorageUnavailable, each well within the deadline; 3. a new store on the same
    socket: the client uses it without being restarted, and its state is empty."""

    async def scenario() -> None:
        remote = store.client(DEADLINE_S)
        try:
            await remote.set("k", b"before")
            assert await remote.get("k") == b"before"
            store.kill()
            for _ in range(3):
                assert await _timed_failure(remote) < DEADLINE_S + SLACK_S
            assert await remote.ping() is False
            store.start()
            assert await _recovered(remote, 10.0)
            assert await remote.get("k") is None  # a restarted store starts empty
            assert (await remote.rate_hit("rate-y", 1, 60)).allowed
        finally:
            await remote.close()

    asyncio.run(scenario())


def test_frozen_store_is_unavailable_at_the_deadline(store: StoreProcess) -> None:
    """1. SIGSTOP the store: a call raises StorageUnavailable at its deadline, not
    later; 2. SIGCONT: calls succeed again on the same client."""

    async def scenario() -> None:
        remote = store.client(DEADLINE_S)
        try:
            assert await remote.ping()
            os.kill(store.pid, signal.SIGSTOP)
            try:
                elapsed = await _timed_failure(remote)
                assert DEADLINE_S - 0.05 <= elapsed < DEADLINE_S + SLACK_S
            finally:
                os.kill(store.pid, signal.SIGCONT)
            assert await _recovered(remote, 10.0)
        finally:
            await remote.close()

    asyncio.run(scenario())


def _closed_by_peer(sock: socket.socket, bound_s: float = 10.0) -> bool:
    sock.settimeout(bound_s)
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True


def _raw_hello(store: StoreProcess) -> bytes:
    return encode_request(0, Op.HELLO, store.token)


@pytest.mark.parametrize("garbage", [
    HEADER.pack(5) + b"\xc1\xc1\xc1\xc1\xc1",  # not msgpack
    HEADER.pack(3) + b"\x93\x01\x63",  # [1, 99, ...]: unknown op (and truncated)
    HEADER.pack(MAX_FRAME + 1),  # an oversized frame, refused from its header
    # a valid request, then one whose call id is a boolean
    encode_request(1, Op.GET, "k") + HEADER.pack(5) + msgpack.packb([True, 1, "k"]),
])
def test_garbage_closes_that_connection_only(store: StoreProcess, garbage: bytes) -> None:
    """1. a good client; 2. a raw connection says HELLO with the token, then sends
    garbage: the store closes it; 3. the good client and new clients are served;
    the log has one line, no traceback."""

    async def scenario() -> None:
        good = store.client()
        try:
            await good.set("kept", b"1")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
                raw.connect(str(store.socket))
                raw.sendall(_raw_hello(store) + garbage)
                assert _closed_by_peer(raw)
            assert await good.get("kept") == b"1"
            fresh = store.client()
            assert await fresh.get("kept") == b"1"
            await fresh.close()
        finally:
            await good.close()

    asyncio.run(scenario())
    logs = poll("the store's line about the invalid frame",
                lambda: "invalid frame" in store.logs() and store.logs(), 5.0)
    assert "Traceback" not in logs


def test_random_garbage_connections_leave_the_store_serving(store: StoreProcess) -> None:
    """1. 40 connections each send random bytes (half of them after a good HELLO);
    2. every one is closed or left waiting for a frame's rest; the store answers a
    client afterwards and has logged no traceback."""
    rng = random.Random(16)
    for i in range(40):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.connect(str(store.socket))
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                raw.sendall((_raw_hello(store) if i % 2 else b"") + noise)
    assert store.proc is not None and store.proc.poll() is None

    async def scenario() -> None:
        client = store.client()
        await client.set("after", b"ok")
        assert await client.get("after") == b"ok"
        await client.close()

    asyncio.run(scenario())
    assert "Traceback" not in store.logs()


@pytest.mark.parametrize("first", ["nothing but PING", "a wrong token", "a second HELLO"])
def test_a_connection_is_served_only_after_hello_with_the_token(store: StoreProcess,
                                                                first: str) -> None:
    """1. a raw connection starts with a PING, or HELLO with a wrong token, or says
    HELLO twice: closed, with at most the first HELLO's answer; 2. a client with
    a wrong token gets StorageUnavailable; 3. the right token is served."""
    frames = {"nothing but PING": encode_request(1, Op.PING),
              "a wrong token": encode_request(0, Op.HELLO, "0" * len(store.token)),
              "a second HELLO": _raw_hello(store) + _raw_hello(store)}[first]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(store.socket))
        raw.sendall(frames)
        raw.settimeout(10)
        got = b""
        while chunk := raw.recv(4096):  # bounded: the store closes it, or the timeout
            got += chunk
    # Closed (the loop ended); at most the first HELLO was answered (the replies to a
    # read that ends in an invalid frame may be dropped with the connection).
    assert got in (b"", encode_reply(0, True, True)) if first == "a second HELLO" \
        else got == b""

    async def scenario() -> None:
        impostor = store.client(token="f" * len(store.token))
        with pytest.raises(StorageUnavailable):
            await impostor.get("k")
        assert await impostor.ping() is False
        await impostor.close()
        good = store.client()
        assert await good.ping()
        await good.close()

    asyncio.run(scenario())


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to connect as another uid")
def test_a_peer_of_another_uid_is_refused(store: StoreProcess) -> None:
    """1. the socket made reachable by everyone (the run directory normally forbids it);
    2. a client running as `nobody` is disconnected without an answer."""
    os.chmod(store.dir, 0o755)
    os.chmod(store.socket, 0o666)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, try a PING, report what came back
        code = 1
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(store.socket))
                sock.sendall(encode_request(0, Op.HELLO, store.token))
                sock.settimeout(10)
                answer = sock.recv(100)
            os.write(write_end, b"closed" if answer == b"" else b"answered")
            code = 0
        except (ConnectionResetError, BrokenPipeError):  # closed before or after the send
            os.write(write_end, b"closed")
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        outcome = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert outcome == b"closed"
    assert poll("the refusal in the log", lambda: "refused a connection from uid 65534"
                in store.logs(), 5.0)
