"""`coproc demo`: the README quick start in one command.

Starts the echo upstream (`python -m gateway.echo_upstream`) as a child, then
serves the shipped default config (`config/coproc.json`: 127.0.0.1:8080 ->
http://127.0.0.1:8081).  Other ports get a retargeted copy of that config in a
temporary directory, so the shipped files are never modified.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import config
from config import ConfigError, load_gateway_config
from config.gateway import default_run_dir

__all__ = ["DEFAULT_PORT", "DEFAULT_UPSTREAM_PORT", "describe", "run_demo", "shipped_config"]

DEFAULT_PORT: Final = 8080
DEFAULT_UPSTREAM_PORT: Final = 8081
_UPSTREAM_START_S: Final = 10.0
_UPSTREAM_STOP_S: Final = 3.0


def shipped_config() -> Path:
    return Path(config.__file__).parent / "coproc.json"


def run_demo(port: int, upstream_port: int, serve: Callable[[Path], int]) -> int:
    with tempfile.TemporaryDirectory(prefix="coproc-demo-") as tmp:
        config_path = shipped_config()
        if (port, upstream_port) != (DEFAULT_PORT, DEFAULT_UPSTREAM_PORT):
            config_path = _retargeted_copy(Path(tmp), port, upstream_port)
        upstream = subprocess.Popen(
            [sys.executable, "-m", "gateway.echo_upstream", "--host", "127.0.0.1",
             "--port", str(upstream_port)], stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            problem = _wait_for_port(upstream, upstream_port)
            if problem:
                print(f"coproc demo: {problem}", file=sys.stderr)
                return 1
            print(f"coproc demo: gateway on http://127.0.0.1:{port} -> echo upstream on "
                  f"http://127.0.0.1:{upstream_port}; Ctrl-C stops both", file=sys.stderr)
            print(describe(config_path), file=sys.stderr)
            return serve(config_path)
        finally:
            _stop(upstream)


def describe(config_path: Path) -> str:
    """Where this demo's config and run directory are, and how to reach it."""
    try:
        run_dir = load_gateway_config(config_path).run_dir
    except ConfigError:  # `serve` names the problem right after
        run_dir = default_run_dir(config_path.resolve())
    return (f"coproc demo: config {config_path}\n"
            f"coproc demo: run dir {run_dir}\n"
            f"coproc demo: try `coproc status --config {config_path}` in another shell")


def _retargeted_copy(tmp: Path, port: int, upstream_port: int) -> Path:
    """Copy the shipped config (and its apps, middleware) with the ports changed."""
    source = shipped_config().parent
    target = tmp / "config"
    target.mkdir()
    for name in ("apps", "middleware"):
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
    settings = json.loads(shipped_config().read_text(encoding="utf-8"))
    settings["listen_port"] = port
    (target / "coproc.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    for app in (target / "apps").glob("*.json"):
        api: dict[str, Any] = json.loads(app.read_text(encoding="utf-8"))
        proxy = api.get("proxy") or {}
        url = urlsplit(str(proxy.get("target_url", "")))
        if url.port == DEFAULT_UPSTREAM_PORT:
            proxy["target_url"] = urlunsplit(url._replace(netloc=f"{url.hostname}:{upstream_port}"))
            app.write_text(json.dumps(api, indent=2), encoding="utf-8")
    return target / "coproc.json"


def _wait_for_port(upstream: subprocess.Popen[bytes], port: int) -> str:
    """"" once the echo upstream accepts connections, else what went wrong."""
    deadline = time.monotonic() + _UPSTREAM_START_S
    while time.monotonic() < deadline:
        if upstream.poll() is not None:
            return (f"the echo upstream exited with code {upstream.returncode} "
                    f"(is port {port} already in use? try --upstream-port)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return ""
        except OSError:
            time.sleep(0.05)
    return f"the echo upstream did not listen on 127.0.0.1:{port} within {_UPSTREAM_START_S} s"


def _stop(upstream: subprocess.Popen[bytes]) -> None:
    """SIGTERM its group, SIGKILL it if it lingers; always reap it."""
    for signum, wait_s in ((signal.SIGTERM, _UPSTREAM_STOP_S), (signal.SIGKILL, None)):
        if upstream.poll() is not None:
            return
        try:
            os.killpg(upstream.pid, signum)
        except ProcessLookupError:
            pass
        try:
            upstream.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
