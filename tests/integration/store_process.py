"""A real store process (`python -m gateway.storage.server`) for tests, and its clients.

`StoreProcess` starts one on a socket in a fresh short temp directory, with a
token in its secret fd as the supervisor gives it, waits (bounded) until it
accepts connections, and stops it by pid: SIGTERM, then SIGKILL of its
process group.  `client()` is a RemoteStorage with that token.  `hammer_main`
is the client-process side of the cross-process tests: `python -m
integration.store_process hammer ...` counts its own allowed hits and prints
them as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from integration.harness import poll

from gateway.storage import RemoteStorage
from ipc.contract import SECRET_FD_ENV
from ipc.control import secret_fd

__all__ = ["StoreProcess"]

REPO = Path(__file__).resolve().parents[2]


def _accepts(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


class StoreProcess:
    def __init__(self, directory: Path | None = None) -> None:
        self._own_dir = directory is None
        self.dir = directory or Path(tempfile.mkdtemp(prefix="cps-"))  # short: sun_path
        self.socket = self.dir / "store.sock"
        self.log = self.dir / "store.log"
        self.token = os.urandom(16).hex()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> StoreProcess:
        secret = secret_fd(self.token.encode())
        try:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "gateway.storage.server", "--socket",
                     str(self.socket)],
                    cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    env={**os.environ, SECRET_FD_ENV: str(secret)}, pass_fds=(secret,),
                    start_new_session=True)
        finally:
            os.close(secret)
        poll("the store process to accept connections", self._up, timeout)
        return self

    def client(self, timeout_s: float = 2.0, token: str = "") -> RemoteStorage:
        return RemoteStorage(str(self.socket), timeout_s, token or self.token)

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"the store process exited {self.proc.returncode}:\n"
                               f"{self.logs()}")
        return _accepts(self.socket)

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL (a crash), and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait; SIGKILL its group if it will not stop.  Its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return proc.returncode

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


async def _hammer(path: str, token: str, op: str, key: str, limit: int, calls: int
                  ) -> dict[str, Any]:
    from gateway.storage import StorageUnavailable

    store = RemoteStorage(path, 5.0, token)
    try:
        if op == "rate":
            hits = await asyncio.gather(*(store.rate_hit(key, limit, 60) for _ in range(calls)),
                                        return_exceptions=True)
        else:
            hits = await asyncio.gather(*(store.quota_hit(key, limit, 3600)
                                          for _ in range(calls)), return_exceptions=True)
    finally:
        await store.close()
    errors = [h for h in hits if isinstance(h, BaseException)]
    if any(not isinstance(e, StorageUnavailable) for e in errors):
        raise next(e for e in errors if not isinstance(e, StorageUnavailable))
    return {"allowed": sum(1 for h in hits if not isinstance(h, BaseException) and h.allowed),
            "errors": len(errors), "pid": os.getpid()}


def hammer_main(argv: list[str]) -> int:
    """hammer SOCKET TOKEN rate|quota KEY LIMIT CALLS: prints {"allowed": n, "errors": n}."""
    path, token, op, key, limit, calls = argv
    print(json.dumps(asyncio.run(_hammer(path, token, op, key, int(limit), int(calls)))))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["hammer"]:
        sys.exit(hammer_main(sys.argv[2:]))
    sys.exit("usage: python -m integration.store_process hammer SOCKET TOKEN OP KEY LIMIT "
             "CALLS")
