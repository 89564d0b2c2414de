"""The supervised store process: the instance's memory storage when it runs several
gateway processes.

With `storage: memory` each gateway process would otherwise keep its own
sessions and counters, and `rate: 10, per: 1` would let 10 through per
process.  When `coproc.gateway.processes` > 1 the supervisor runs one store
process (`python -m gateway.storage.server`) that owns the state, and tells
every gateway process its socket, `<run_dir>/store.sock`, in
$COPROC_STORE_SOCKET (gateway/storage/remote.py connects to it).  With one
gateway process nothing changes: the memory storage stays in that process,
at no cost.  With Redis there is no store process: Redis is shared already.

`StoreRole` owns one `Watcher`: the store is started first (before the
gateways, which also wait up to a few seconds for it to answer), restarted
with the usual backoff when it dies (its state starts empty, as a restarted
single-process instance's does; meanwhile calls that need storage get 503),
and stopped last, once the gateways are gone (stopping.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from config.gateway import GatewayConfig
from ipc.contract import STORE_SOCKET_ENV
from supervisor.child import ChildProcess
from supervisor.policy import RestartPolicy
from supervisor.readers import ChildReaders
from supervisor.slot import SlotState
from supervisor.spawner import store_spec
from supervisor.watcher import Watcher

__all__ = ["STORE_SOCKET_NAME", "StoreRole"]

#: The store's socket, in the instance's run directory (0700).
STORE_SOCKET_NAME: Final = "store.sock"

log = logging.getLogger("coproc.supervisor.store")


class _Logged:
    """The watcher's reporter: nobody but the log hears of the store's changes
    (the gateways notice an outage themselves, as with Redis)."""

    def __init__(self) -> None:
        self.watcher: Watcher | None = None

    def started(self, child: ChildProcess) -> None:
        pass

    def changed(self, state: SlotState, generation: int, detail: str) -> None:
        pass

    def exited(self, child: ChildProcess, reason: str) -> None:
        watcher = self.watcher
        if watcher is not None and watcher.state in (SlotState.RESTARTING, SlotState.FATAL):
            log.warning("%s %s: its state is lost (sessions, counters, plugin data); the "
                        "next store starts empty, and storage calls get 503 until it "
                        "listens", child.name, reason)


class StoreRole:
    def __init__(self, cfg: GatewayConfig, instance_key: bytes, readers: ChildReaders,
                 clock: Callable[[], float]) -> None:
        self.socket: Path = cfg.run_dir / STORE_SOCKET_NAME
        spec = store_spec(str(self.socket), cfg.log_level, cfg.log_format, instance_key)
        reporter = _Logged()
        self.watcher = reporter.watcher = Watcher(
            spec, RestartPolicy.from_options(cfg.supervisor, clock), readers, reporter,
            cfg.supervisor.flap_window_s)

    @staticmethod
    def wanted(cfg: GatewayConfig) -> bool:
        """A store process is needed: memory storage shared by several gateway processes."""
        return cfg.storage.type == "memory" and cfg.gateway.processes > 1

    def gateway_env(self) -> dict[str, str]:
        """What each gateway process is told about the store."""
        return {STORE_SOCKET_ENV: str(self.socket)}

    def status(self, now: float) -> dict[str, Any]:
        """The store's part of `coproc status`."""
        own = self.watcher.status(now)
        return {**{k: own[k] for k in ("state", "pid", "uptime_s", "rss_bytes", "restarts",
                                        "retry_in_s", "last_exits")},
                "socket": str(self.socket)}
