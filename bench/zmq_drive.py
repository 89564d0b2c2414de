"""`python -m bench.zmq_drive`: the worker's DEALER driven by zmq.asyncio vs by Channel.

An echo ROUTER runs in a subprocess; this process sends one small protocol
message, waits for it to come back, and repeats.  Printed per round trip:
wall time and this process's CPU (its ZeroMQ I/O thread included), first
with `zmq.asyncio` (a future per send and per receive), then with
`worker.channel.Channel` (ZMQ_FD under `add_reader`, non-blocking drains),
on asyncio's loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

import zmq
import zmq.asyncio

from ipc.protocol import Message, MsgType, decode, encode
from worker.channel import Channel

ROUND_TRIPS = 5000
WARMUP = 200
PAYLOAD = {"object": {"request": {"headers": {"A": "b"}}}}
ECHO = """
import sys, zmq
sock = zmq.Context().socket(zmq.ROUTER)
sock.bind(sys.argv[1])
while True:
    sock.send_multipart(sock.recv_multipart())
"""


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _print(name: str, wall: float, cpu: float) -> None:
    print(f"  {name:<22} {wall / ROUND_TRIPS * 1e6:7.1f} µs wall "
          f"{cpu / ROUND_TRIPS * 1e6:7.1f} µs CPU per round trip")


async def _with_zmq_asyncio(endpoint: str) -> None:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    for i in range(WARMUP + ROUND_TRIPS):
        if i == WARMUP:
            cpu, wall = _cpu(), time.perf_counter()
        await sock.send_multipart(encode(MsgType.REPLY, i, PAYLOAD))
        decode(await asyncio.wait_for(sock.recv_multipart(), 5))
    _print("zmq.asyncio", time.perf_counter() - wall, _cpu() - cpu)
    sock.close()
    ctx.term()


async def _with_channel(endpoint: str) -> None:
    channel = Channel(endpoint)
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen = 0
    start = [0.0, 0.0]

    def on_message(message: Message) -> None:
        nonlocal seen
        seen += 1
        if seen == WARMUP:
            start[:] = [_cpu(), time.perf_counter()]
        if seen == WARMUP + ROUND_TRIPS:
            done.set_result(None)
        else:
            channel.send(MsgType.REPLY, seen, PAYLOAD)

    channel.listen(on_message)
    for _ in range(500):  # bounded: until the connection is up (IMMEDIATE drops sends)
        if channel.send(MsgType.REPLY, 0, PAYLOAD):
            break
        await asyncio.sleep(0.01)
    await asyncio.wait_for(done, 60)
    _print("Channel (add_reader)", time.perf_counter() - start[1], _cpu() - start[0])
    channel.close()


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="cp-")
    endpoint = f"ipc://{tmp}/echo.sock"
    echo = subprocess.Popen([sys.executable, "-c", ECHO, endpoint])
    runners: list[tuple[str, Callable[[Coroutine[Any, Any, None]], None]]] = [
        ("asyncio", asyncio.run)]
    try:
        import uvloop
        runners.append(("uvloop", uvloop.run))
    except ImportError:
        pass
    try:
        for name, run in runners:
            print(f"{name} event loop:")
            run(_with_zmq_asyncio(endpoint))
            run(_with_channel(endpoint))
    finally:
        echo.kill()
        echo.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
