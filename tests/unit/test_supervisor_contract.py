"""Child environment (docs/PROTOCOL.md, "Process contract") and the listening socket."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from ipc.tokens import new_instance_key, verify_worker_token
from supervisor.contract import (
    ChildCommands,
    gateway_env,
    gateway_secret,
    worker_env,
    worker_secret,
)
from supervisor.listener import BACKLOG, ListenError, bind_listener, bound_port

INHERITED = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1",
             "COPROC_INSTANCE_KEY": "leaked", "COPROC_LISTEN_FD": "9", "LANG": "C.UTF-8"}


def test_gateway_env() -> None:
    key = new_instance_key()
    env = gateway_env(5, INHERITED)
    assert env["COPROC_LISTEN_FD"] == "5"
    assert "COPROC_INSTANCE_KEY" not in env  # an inherited one is never passed on
    assert not any(key.hex() in v for v in env.values())
    assert gateway_secret(key) == key.hex().encode()
    assert env["COPROC_SUPERVISOR_PID"] == str(os.getpid())
    assert env["PATH"] == "/usr/bin" and env["LANG"] == "C.UTF-8"
    assert "NOTIFY_SOCKET" not in env and "WATCHDOG_USEC" not in env


def test_worker_env_has_no_secret_and_its_secret_is_its_token() -> None:
    key = new_instance_key()
    env = worker_env(3, INHERITED)
    assert env["COPROC_GENERATION"] == "3"
    token = worker_secret(key, 3).decode()
    assert verify_worker_token(key, 3, token) and not verify_worker_token(key, 4, token)
    assert not any(token in v or key.hex() in v for v in env.values())
    assert "COPROC_INSTANCE_KEY" not in env and "COPROC_LISTEN_FD" not in env
    assert "NOTIFY_SOCKET" not in env


def test_default_commands_are_fresh_interpreters() -> None:
    commands = ChildCommands.default(Path("/etc/coproc/coproc.json"))
    assert commands.gateway == (sys.executable, "-m", "gateway", "--config",
                                "/etc/coproc/coproc.json")
    assert commands.worker[1:3] == ("-m", "worker")


def test_listener_ephemeral_port_and_backlog() -> None:
    sock = bind_listener("127.0.0.1", 0)
    try:
        port = bound_port(sock)
        assert port > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        assert not sock.get_inheritable()  # only pass_fds hands it to the gateway
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert BACKLOG == 1024
    finally:
        sock.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_listener_ipv6() -> None:
    try:
        sock = bind_listener("[::1]", 0)
    except ListenError as exc:
        pytest.skip(f"::1 unavailable here: {exc}")
    with sock:
        assert sock.family == socket.AF_INET6


def test_listener_in_use_says_how_to_fix() -> None:
    first = bind_listener("127.0.0.1", 0)
    try:
        with pytest.raises(ListenError, match=r"127\.0\.0\.1:\d+.*listen_port"):
            bind_listener("127.0.0.1", bound_port(first))
    finally:
        first.close()
