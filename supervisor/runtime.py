"""One `coproc serve` run, from taking the run directory to giving it back.

Order matters: the lock comes first (so two instances never touch the same
files), stale sockets go before any child starts, the listening socket lives
as long as the supervisor, and clean-up runs however the loop ended.
"""

from __future__ import annotations

import logging
from pathlib import Path

from config.gateway import GatewayConfig
from ipc import eventloop
from ipc.notify import Notifier
from supervisor.arbiter import Arbiter
from supervisor.contract import ChildCommands
from supervisor.control_server import CONTROL_SOCKET_NAME
from supervisor.listener import bind_listeners, bound_port
from supervisor.lock import RunDirLock
from supervisor.rundir import PORT_NAME, RunDir

__all__ = ["serve"]

log = logging.getLogger("coproc.supervisor.runtime")


def serve(cfg: GatewayConfig, commands: ChildCommands | None = None,
          notifier: Notifier | None = None) -> int:
    """Supervise until stopped; return the exit code.

    Raises `LockedError`, `RunDirError` or `ListenError` before any child
    starts.  `commands` replaces the gateway / worker argv (tests use tiny
    stand-ins); the environment of the children is always the contract's.
    """
    run_dir = RunDir(cfg.run_dir, extra_sockets=_endpoint_socket(cfg))
    run_dir.create()
    lock = RunDirLock.acquire(cfg.run_dir)
    notifier = notifier if notifier is not None else Notifier()
    try:
        run_dir.sweep_previous()  # a SIGKILLed predecessor's cgroups and arenas
        run_dir.write_pid()
        run_dir.remove_sockets()
        listeners = bind_listeners(cfg.listen_address, cfg.listen_port,
                                   cfg.gateway.processes if cfg.gateway.accept == "reuseport"
                                   else 1)
        try:
            port = bound_port(listeners[0])
            run_dir.write_port(port)
            log.info("listening on %s:%d (port also in %s); run dir %s",
                     cfg.listen_address or "*", port, run_dir.path / PORT_NAME, run_dir.path)
            arbiter = Arbiter(cfg, listeners, commands or ChildCommands.default(cfg.path),
                              notifier, control_path=run_dir.path / CONTROL_SOCKET_NAME)
            code = eventloop.run(arbiter.run())
            log.info("stopped (exit code %d)", code)
            return code
        finally:
            for listener in listeners:
                listener.close()
    finally:
        notifier.close()
        run_dir.cleanup()
        lock.release()
        run_dir.remove_if_empty()


def _endpoint_socket(cfg: GatewayConfig) -> tuple[Path, ...]:
    """Configured ipc:// hooks sockets (outside the run dir): one per gateway process."""
    if not cfg.ipc.endpoint.startswith("ipc://"):
        return ()
    return tuple(Path(e.removeprefix("ipc://")) for e in cfg.hooks_endpoints)
