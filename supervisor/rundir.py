"""The run directory: lock, pid file, port file and the instance's sockets.

Layout (all owned by the supervisor while it holds `coproc.lock`):

    coproc.lock   flock + holder pid (see lock.py)
    coproc.pid    the supervisor's pid, for scripts and service managers
    http.port     the port actually bound; useful with listen_port 0 (tests)
    hooks.sock    the gateway's hooks endpoint (ipc://)

Because only the lock holder uses the directory, every socket found in it at
start belongs to a dead instance and is removed.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Final

from ipc.shm_names import SHM_DIR, shm_prefix
from supervisor.cgroups import remove_leftovers

__all__ = ["PID_NAME", "PORT_NAME", "RunDir", "RunDirError"]

PID_NAME: Final = "coproc.pid"
PORT_NAME: Final = "http.port"

log = logging.getLogger("coproc.supervisor.rundir")


class RunDirError(Exception):
    """The run directory cannot be used safely."""


class RunDir:
    def __init__(self, path: Path, extra_sockets: tuple[Path, ...] = ()) -> None:
        self.path = path
        # A configured ipc:// endpoint outside the run dir is ours too.
        self._extra_sockets = extra_sockets

    def create(self) -> None:
        """Make the directory (0700) and refuse one that another user controls."""
        try:
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = self.path.lstat()
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {exc.strerror}. "
                              "Fix: set coproc.run_dir to a writable directory") from None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            # Another user could then read our sockets or swap files under us.
            raise RunDirError(f"run directory {self.path} is not a directory owned by uid "
                              f"{os.geteuid()}. Fix: remove it, or set coproc.run_dir")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(self.path, 0o700)

    def sweep_previous(self) -> None:
        """Remove what a SIGKILLed supervisor of this run dir left: its worker
        cgroups (named by its pid, read from the pid file it left) and, by this
        run dir's prefix, its children's shared memory.  Call with the lock held,
        before `write_pid`."""
        try:
            raw = (self.path / PID_NAME).read_text(encoding="ascii").strip()
        except OSError:
            raw = ""
        if raw.isdigit():
            for directory in remove_leftovers(int(raw)):
                log.info("removed worker cgroup %s left by supervisor pid %s", directory, raw)
        self.remove_shared_memory()

    def write_pid(self) -> None:
        _write_atomically(self.path / PID_NAME, f"{os.getpid()}\n")

    def write_port(self, port: int) -> None:
        _write_atomically(self.path / PORT_NAME, f"{port}\n")

    def remove_sockets(self) -> None:
        """Unlink every socket file in the directory (and the configured endpoint)."""
        for entry in (*self._iter_entries(), *self._extra_sockets):
            try:
                if stat.S_ISSOCK(entry.lstat().st_mode):
                    entry.unlink()
                    log.debug("removed socket %s", entry)
            except FileNotFoundError:
                pass

    def remove_shared_memory(self) -> None:
        """Unlink /dev/shm objects named after this run dir, left by dead children."""
        prefix = shm_prefix(self.path)
        try:
            entries = [e for e in SHM_DIR.iterdir() if e.name.startswith(prefix)]
        except OSError:
            return  # no /dev/shm on this system
        for entry in entries:
            try:
                entry.unlink()
                log.info("removed shared memory %s", entry.name)
            except OSError as exc:
                log.warning("cannot remove shared memory %s: %s", entry, exc.strerror)

    def cleanup(self) -> None:
        """Remove what this instance created; the lock file is the lock's job."""
        self.remove_sockets()
        self.remove_shared_memory()
        for name in (PID_NAME, PORT_NAME):
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass

    def remove_if_empty(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass  # not empty (someone's files) or already gone: leave it

    def _iter_entries(self) -> list[Path]:
        try:
            return list(self.path.iterdir())
        except OSError:
            return []


def _write_atomically(path: Path, text: str) -> None:
    # Readers (scripts, tests polling for http.port) never see a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="ascii")
    os.replace(tmp, path)
