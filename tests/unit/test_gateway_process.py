"""`python -m gateway` and `python -m gateway.echo_upstream` as real processes.

The gateway gets what `coproc serve` would give it: an inherited listening
socket, one end of a control socketpair and an instance key.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ipc import exitcodes
from ipc.control import decode_control, make_control_pair, secret_fd

ROOT = Path(__file__).resolve().parents[2]
DEADLINE = 10.0


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COPROC_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.fixture
def echo_port() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.echo_upstream", "--port", "0"],
                            cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
        assert ready, "echo upstream did not print its port"
        line = proc.stdout.readline().strip()
        assert line.startswith("ECHO_PORT=")
        yield int(line.split("=", 1)[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        if proc.stdout is not None:
            proc.stdout.close()


def _recv_control(sock: socket.socket, kind: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], remaining)
        if ready:
            message = decode_control(sock.recv(1 << 20))
            if message["type"] == kind:
                return message
    raise AssertionError(f"no {kind!r} control message within {DEADLINE}s")


def _get(port: int, path: str, **headers: str) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=DEADLINE) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def _write_config(tmp_path: Path, echo_port: int) -> Path:
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "echo.json").write_text(json.dumps({
        "api_id": "echo", "use_keyless": True,
        "proxy": {"listen_path": "/echo/", "target_url": f"http://127.0.0.1:{echo_port}",
                  "strip_listen_path": True}}))
    config = tmp_path / "coproc.json"
    config.write_text(json.dumps({"app_path": "apps", "coproc": {"run_dir": "run"}}))
    (tmp_path / "run").mkdir()
    return config


def test_gateway_process_contract(tmp_path: Path, echo_port: int) -> None:
    """1. start with inherited socket/control fds; 2. `ready` arrives; 3. requests proxy;
    4. `status` arrives; 5. malformed HTTP gets 400; 6. SIGTERM exits 0."""
    config = _write_config(tmp_path, echo_port)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    parent, child = make_control_pair()
    secret = secret_fd(os.urandom(32).hex().encode())
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--config", str(config)], cwd=ROOT,
        pass_fds=(listener.fileno(), child.fileno(), secret),
        env=_env(COPROC_LISTEN_FD=str(listener.fileno()), COPROC_CONTROL_FD=str(child.fileno()),
                 COPROC_SECRET_FD=str(secret), COPROC_SUPERVISOR_PID=str(os.getpid())))
    child.close()
    os.close(secret)
    try:
        ready = _recv_control(parent, "ready")
        assert ready == {"type": "ready", "role": "gateway", "pid": proc.pid}
        status, got = _get(port, "/echo/x?a=1")
        assert status == 200 and got["path_qs"] == "/x?a=1"
        assert _get(port, "/nope") == (404, {"error": "No API is listening on this path"})
        status, health = _get(port, "/hello")
        # No worker in this test: alive (200), the worker named as failing, not ready.
        assert status == 200 and health["details"]["worker"]["status"] == "fail"
        assert _get(port, "/ready")[0] == 503
        stats = _recv_control(parent, "status")["stats"]
        assert stats["requests"] >= 2
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw:
            raw.sendall(b"GET /echo/x HTTP/1.1\r\nHost: x\r\nBroken header line\r\n\r\n")
            assert raw.recv(100).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == exitcodes.OK
        parent.close()
        listener.close()


def test_bad_config_exits_with_the_config_code(tmp_path: Path) -> None:
    config = tmp_path / "coproc.json"
    config.write_text('{"app_path": 5}')
    proc = subprocess.run([sys.executable, "-m", "gateway", "--config", str(config)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=DEADLINE, check=False)
    assert proc.returncode == exitcodes.CONFIG
    assert "app_path" in proc.stderr


def test_echo_upstream_describes_requests(echo_port: int) -> None:
    status, got = _get(echo_port, "/some/path?x=1&x=2", **{"X-Test": "t"})
    assert status == 200
    assert got["method"] == "GET" and got["path"] == "/some/path"
    assert got["query"] == {"x": ["1", "2"]} and got["headers"]["X-Test"] == "t"
    assert got["body_len"] == 0
    assert _get(echo_port, "/status/418")[0] == 418
    with urllib.request.urlopen(f"http://127.0.0.1:{echo_port}/bytes/1000",
                                timeout=DEADLINE) as resp:
        assert len(resp.read()) == 1000
