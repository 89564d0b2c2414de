"""Processes the bench starts: Coproc instances, the upstream and the baselines.

Every process is started in its own session and stopped by pid (SIGTERM, then
SIGKILL of its process group after a deadline); every wait polls a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

__all__ = ["HOST", "Coproc", "Server", "stop_process"]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
START_DEADLINE_S = 30.0
# The admin secret of bench instances: their worker details are read from /coproc/status.
_SECRET = "bench-secret"  # noqa: S105 (a throwaway bench instance's secret)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def cpu_seconds(*procs: psutil.Process | int) -> float:
    """User + system CPU seconds of these processes (by handle or pid) so far; one that
    is gone counts 0."""
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = (psutil.Process(proc) if isinstance(proc, int) else proc).cpu_times()
            total += times.user + times.system
    return total


class Server:
    """`python -m bench.servers ROLE ...`; the port comes from its `PORT=` line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.servers", *args],
                                     cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout

        def pump() -> None:  # keeps draining stdout so the server never blocks on it
            for line in iter(stdout.readline, b""):
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + START_DEADLINE_S
        self.port = 0
        while not self.port:  # bounded by the deadline
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"bench server {args} did not start")
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                if line.startswith(b"PORT="):
                    self.port = int(line[5:])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self) -> None:
        stop_process(self.proc)


class Coproc:
    """One `coproc serve` with the given APIs, plugins and settings, in a fresh temp dir."""

    def __init__(self, apis: Mapping[str, Any], plugins: Mapping[str, str],
                 settings: Mapping[str, Any]) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cp-"))
        for d in ("apps", "middleware"):
            (self.base / d).mkdir()
        for name, definition in apis.items():
            (self.base / "apps" / f"{name}.json").write_text(json.dumps(definition))
        for rel, source in plugins.items():
            path = self.base / "middleware" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        config = {"listen_address": HOST, "listen_port": 0, "app_path": "apps",
                  "middleware_path": "middleware", "secret": _SECRET,
                  "coproc": {"run_dir": str(self.base / "run"), "log_level": "warning",
                             "worker": {"drain_grace_ms": 2000},
                             "gateway": {"drain_grace_ms": 2000},
                             "supervisor": {"stop_grace_ms": 5000}}}
        _merge(config, settings)
        (self.base / "coproc.json").write_text(json.dumps(config))
        self.log = open(self.base / "coproc.log", "ab")  # closed in stop()
        script = Path(sys.executable).parent / "coproc"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "supervisor.cli"]
        config_path = str(self.base / "coproc.json")
        self.proc = subprocess.Popen([*command, "serve", "--config", config_path],
                                     cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.port = 0
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        port_file = self.base / "run" / "http.port"
        while time.monotonic() < deadline:  # bounded by the deadline
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, ValueError):
                self.port = self.port or int(port_file.read_text().strip())
            if self.port and self.hello().get("status") == "pass":
                return
            time.sleep(0.1)  # polling a readiness condition against a deadline
        tail = (self.base / "coproc.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"coproc serve did not become ready:\n{tail}")

    def hello(self) -> dict[str, Any]:
        """The full health detail (GET /coproc/status): overall status and `worker`."""
        request = urllib.request.Request(f"{self.url}/coproc/status",  # noqa: S310
                                         headers={"X-Tyk-Authorization": _SECRET})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
                return dict(json.loads(resp.read()))
        except Exception:  # 503 while the worker boots, refused before the port is up
            return {}

    def pids(self) -> dict[str, int]:
        """{"gateway": pid, "worker": pid}: one of each (`role_pids` has them all)."""
        return {role: found[-1] for role in ("gateway", "worker")
                if (found := self.role_pids(role))}

    def role_pids(self, role: str) -> list[int]:
        """Every child of `role` ("gateway": one per gateway process), by pid order."""
        found = []
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cmd = child.cmdline()
                    if "-m" in cmd and cmd[cmd.index("-m") + 1:][:1] == [role]:
                        found.append(child.pid)  # not `-m gateway.storage.server`
        return sorted(found)

    def status(self) -> dict[str, Any]:
        """`coproc status --json` (the supervisor's view: every gateway process)."""
        script = Path(sys.executable).parent / "coproc"
        command = [str(script)] if script.exists() else [sys.executable, "-m", "supervisor.cli"]
        out = subprocess.run([*command, "status", "--json", "--config",
                              str(self.base / "coproc.json")],
                             capture_output=True, text=True, timeout=30, check=False)
        try:
            return dict(json.loads(out.stdout))
        except ValueError:
            return {}

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.base, ignore_errors=True)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
