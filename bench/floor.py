"""The machine's floor for one hook round trip: two blocking processes, nothing else.

`python -m bench.floor`; `python -m bench` reports it next to the gateway's
measured round trip.  One process sends a small message over a ZeroMQ DEALER
(ipc://, as Coproc uses) and waits for the echo from a ROUTER in another
process; the same over a Unix socketpair for comparison.  Each ZeroMQ message
crosses two I/O threads besides the two processes, so on machines where waking
a thread on another CPU is expensive (virtual machines) this floor is several
times the socketpair's.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import sys
import tempfile
import time

import zmq

__all__ = ["round_trip_floor_us"]

ROUND_TRIPS = 3000
PAYLOAD = b"x" * 400  # about a no-op hook's CALL


def _zmq_us(endpoint: str) -> float:
    pid = os.fork()
    if pid == 0:  # the echo: exits when told, or with its parent's loop below
        try:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.ROUTER)
            sock.connect(endpoint)
            sock.setsockopt(zmq.RCVTIMEO, 10_000)
            while True:
                peer, body = sock.recv_multipart()
                if body == b"stop":
                    break
                sock.send_multipart([peer, body])
        finally:
            os._exit(0)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.bind(endpoint)
    try:
        samples = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter_ns()
            sock.send(PAYLOAD)
            sock.recv()
            samples.append(time.perf_counter_ns() - started)
        sock.send(b"stop")
    finally:
        os.waitpid(pid, 0)
        sock.close()
        ctx.term()
    return statistics.median(samples) / 1000


def _socketpair_us() -> float:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            theirs.settimeout(10)
            while (data := theirs.recv(4096)) not in (b"", b"stop"):
                theirs.sendall(data)
        finally:
            os._exit(0)
    theirs.close()
    try:
        samples = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter_ns()
            ours.sendall(PAYLOAD)
            ours.recv(4096)
            samples.append(time.perf_counter_ns() - started)
        ours.sendall(b"stop")
    finally:
        os.waitpid(pid, 0)
        ours.close()
    return statistics.median(samples) / 1000


def round_trip_floor_us() -> dict[str, float]:
    """Median round trip in µs: {"zmq_ipc": ..., "unix_socketpair": ...}."""
    tmp = tempfile.mkdtemp(prefix="cp-floor-")
    try:
        return {"zmq_ipc": _zmq_us(f"ipc://{tmp}/floor.sock"),
                "unix_socketpair": _socketpair_us()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    for name, value in round_trip_floor_us().items():
        print(f"{name:<16} p50 {value:7.1f} µs per round trip")
    return 0


if __name__ == "__main__":
    sys.exit(main())
