"""Child environment (docs/PROTOCOL.md, "Process contract") and the listening socket."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from config.gateway import load_gateway_config, parse_gateway_config
from ipc.tokens import new_instance_key, verify_worker_token
from supervisor.contract import (
    ChildCommands,
    gateway_env,
    gateway_secret,
    worker_config,
    worker_env,
    worker_secret,
)
from supervisor.listener import BACKLOG, ListenError, bind_listener, bound_port

INHERITED = {"PATH": "/usr/bin", "NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "1",
             "COPROC_INSTANCE_KEY": "leaked", "COPROC_LISTEN_FD": "9", "LANG": "C.UTF-8"}


def test_gateway_env() -> None:
    key = new_instance_key()
    env = gateway_env(5, inherited=INHERITED)
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
    token = json.loads(worker_secret(key, 3))["token"]
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


def test_the_worker_gets_its_part_of_the_config_and_no_secret_of_it(tmp_path: Path) -> None:
    """Item 5: the worker's config document carries no admin secret, storage or
    bundle credentials, and validates as a config on its own."""
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps({
        "secret": "admin-secret", "node_secret": "node-secret",
        "storage": {"type": "redis", "password": "redis-pass"},
        "app_path": "apps", "middleware_path": "mw",
        "bundle_base_url": "https://user:bundle-pass@example.invalid/",
        "coprocess_options": {"enable_coprocess": True},
        "enable_jsvm": True, "jsvm_timeout": 2, "tyk_js_path": "js/lib.js",
        "coproc": {"log_level": "debug", "worker": {"threads": 3},
                   "sandbox": {"profile": "strict"},
                   "jsvm": {"outbound_allow": ["127.0.0.1:9"]},
                   "metrics": {"enabled": False}},
    }))
    cfg = load_gateway_config(path)
    boot = json.loads(worker_secret(new_instance_key(), 1, worker_config(cfg)))
    text = json.dumps(boot["config"])
    for secret in ("admin-secret", "node-secret", "redis-pass", "bundle-pass"):
        assert secret not in text
    parsed = parse_gateway_config(boot["config"], path)
    assert parsed.worker.threads == 3 and parsed.sandbox.profile == "strict"
    assert parsed.app_path == cfg.app_path and parsed.middleware_path == cfg.middleware_path
    assert parsed.run_dir == cfg.run_dir and parsed.log_level == "debug"
    assert parsed.secret == "" and parsed.storage.password == ""
    # The JSVM driver runs in the worker: its settings travel too.
    assert parsed.jsvm == cfg.jsvm and parsed.jsvm.enable and parsed.jsvm.timeout_s == 2
    assert parsed.jsvm.outbound_allow == ("127.0.0.1:9",)
