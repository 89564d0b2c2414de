"""The client side of the control socket: `coproc status|reload|restart-worker|stop`.

Each command finds the instance the way `serve` does (the config file names
the run directory), sends one JSON line and prints the answer.  Exit codes:
0 done; 1 the command failed (e.g. the new worker generation did not load);
69 (EX_UNAVAILABLE) no instance runs for that config; 78 invalid config.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any, Final

import psutil

from supervisor.control_server import CONTROL_SOCKET_NAME
from supervisor.reload import unserved

__all__ = ["NOT_RUNNING", "ControlError", "format_status", "send_command", "wait_exit"]

#: sysexits EX_UNAVAILABLE: nothing to talk to.
NOT_RUNNING: Final = 69
CONNECT_TIMEOUT_S: Final = 5.0
MAX_ANSWER_BYTES: Final = 1 << 20


class ControlError(Exception):
    """No answer from an instance; `code` is the exit code to use."""

    def __init__(self, message: str, code: int = NOT_RUNNING) -> None:
        super().__init__(message)
        self.code = code


def send_command(run_dir: Path, command: str, timeout_s: float) -> dict[str, Any]:
    """One request/response on `<run_dir>/control.sock`, within `timeout_s`."""
    path = run_dir / CONTROL_SOCKET_NAME
    hint = f"no coproc instance is running with this config (no control socket at {path})"
    if not path.exists():
        raise ControlError(hint)
    deadline = time.monotonic() + timeout_s
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            raise ControlError(f"{hint.split(' (')[0]} (stale control socket {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run as the instance's user",
                               1) from None
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n") and len(data) < MAX_ANSWER_BYTES:  # bounded
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ControlError(f"no answer from the instance within {timeout_s:.0f} s", 1)
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            data += chunk
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError("the instance closed the connection without an answer", 1) from None
    if not isinstance(answer, dict):
        raise ControlError("the instance sent an invalid answer", 1)
    return answer


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Wait (polling, bounded) until process `pid` is gone; False at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True  # exited; its parent (a shell, a test) has not reaped it yet
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            pass
        time.sleep(0.05)  # a CLI waiting for another process: nothing to await
    return False


def format_status(status: dict[str, Any]) -> str:
    """`coproc status` for humans."""
    gw, wk = status.get("gateway", {}), status.get("worker", {})
    rss = wk.get("rss_bytes")
    lines = [
        f"supervisor  {_pid(status.get('pid'))}  {_dash(status.get('phase'))}  "
        f"up {_duration(status.get('uptime_s'))}",
        *_gateway_lines(gw, status.get("gateways") or []),
        f"worker      {_pid(wk.get('pid'))}  generation {_dash(wk.get('generation'))}  "
        f"{str(wk.get('state')).upper()}  up {_duration(wk.get('uptime_s'))}",
        f"            rss {f'{rss / 1048576:.1f} MiB' if rss else '-'}  "
        f"in flight {_dash(wk.get('inflight'))}  calls {_dash(wk.get('calls'))}  "
        f"heartbeat {_dash(wk.get('heartbeat_age_s'))} s ago",
        f"            restarts {_dash(wk.get('restarts'))}  "
        f"hot restarts {_dash(wk.get('hot_restarts'))}"
        + (f"  next try in {_duration(wk['retry_in_s'])}" if wk.get("retry_in_s") is not None
           else ""),
    ]
    sandbox = wk.get("sandbox")
    if sandbox:
        lines.append(f"            sandbox {_layers(sandbox)}")
    grpc = status.get("grpc_server")
    if grpc:  # the supervised gRPC plugin server: the instance's coprocess
        lines.append(f"gRPC server {_pid(grpc.get('pid'))}  generation "
                     f"{_dash(grpc.get('generation'))}  {str(grpc.get('state')).upper()}  "
                     f"at {_dash(grpc.get('address'))}  up {_duration(grpc.get('uptime_s'))}  "
                     f"restarts {_dash(grpc.get('restarts'))}  "
                     f"hot restarts {_dash(grpc.get('hot_restarts'))}")
    store = status.get("store")
    if store:  # memory storage for several gateway processes (supervisor/store_role.py)
        lines.append(f"store       {_pid(store.get('pid'))}  {store.get('state')}  "
                     f"restarts {_dash(store.get('restarts'))}  {store.get('socket')}")
    last = (status.get("reload") or {}).get("last")
    if last:
        outcome = "ok" if last.get("ok") else f"FAILED (nothing changed): {last.get('error')}"
        lines.append(f"last reload generation {last.get('generation')} ({last.get('reason')}): "
                     f"{outcome}")
    # APIs the active generation does not serve: their plugins failed to load (500).
    lines += [f"{name}: plugin failed to load, answers 500"
              for name in unserved(wk.get("plugins") or {})]
    for bundle in status.get("bundles") or []:  # supervisor/bundles: which, where, why
        if bundle.get("state") != "ready" or bundle.get("reason"):
            lines.append(f"bundle {bundle.get('bundle')} (API {bundle.get('api_id')}): "
                         f"{bundle.get('state')}: {bundle.get('reason')}")
    for broken in (status.get("definitions") or {}).get("broken") or []:
        lines.append(f"API definition {broken.get('component')} not served: "
                     f"{broken.get('error')}")
    exits = status.get("last_exits") or []
    if exits:
        lines.append("last exits:")
        for ex in exits[-5:]:
            when = time.strftime("%H:%M:%S", time.localtime(ex.get("time", 0)))
            lines.append(f"  {when} {ex.get('child')} generation {_dash(ex.get('generation'))} "
                         f"({_pid(ex.get('pid'))}): {ex.get('reason')}")
    return "\n".join(lines)


def _gateway_lines(first: dict[str, Any], processes: list[dict[str, Any]]) -> list[str]:
    """One line for a single gateway process; one per process when there are several."""
    if len(processes) <= 1:
        return [f"gateway     {_pid(first.get('pid'))}  {first.get('state')}"]
    lines = []
    for gw in processes:
        requests = (gw.get("stats") or {}).get("requests")
        retry = gw.get("retry_in_s")
        lines.append(
            f"gateway {gw.get('index'):<3} {_pid(gw.get('pid'))}  {gw.get('state')}  "
            f"up {_duration(gw.get('uptime_s'))}  requests {_dash(requests)}  "
            f"restarts {_dash(gw.get('restarts'))}"
            + (f"  next try in {_duration(retry)}" if retry is not None else ""))
    return lines


def _layers(sandbox: dict[str, str]) -> str:
    """Active layers first (issue 6: the operator asks which ones protect them)."""
    def named(state: str) -> list[str]:
        return [layer for layer, v in sandbox.items() if str(v).split(":")[0] == state]
    active, skipped = named("active"), named("skipped")
    return (f"active [{', '.join(active) or 'none'}]"
            + (f"  skipped [{', '.join(skipped)}]" if skipped else ""))


def _pid(value: Any) -> str:
    # No process (not started yet, exited, FATAL) reads as such, never "pid None".
    return f"pid {value}" if isinstance(value, int) else "no process"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
