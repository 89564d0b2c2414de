"""The supervisor's side of bundles: prepare before the first children, refresh before reloads.

`BundleGate.for_config` returns None when no API uses a bundle, the
downloader is off and there is no bundle cache: the supervisor then runs
exactly as without this module.
Otherwise the supervisor

* awaits `start()` before it starts the gateway and the worker (at most
  `start_wait_ms`; the APIs whose bundles are not ready yet are unserved
  until theirs arrive, which asks for a reload through `on_ready`);
* calls `refresh_then(proceed, refuse)` instead of starting a reload: the
  bundles are revalidated (one refresh at a time), then `proceed()` starts the
  reload, or `refuse(reason)` reports why it must not happen (a new version
  of a serving bundle failed verification; the current one keeps serving);
* adds `status()` to `coproc status`, and awaits `close()` at the end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from config import ConfigError, load_definition_set
from config.apidef import APIDefinition
from config.bundles import store_root
from config.gateway import GatewayConfig
from supervisor.bundles.store import BundleStore

__all__ = ["BundleGate"]

log = logging.getLogger("supervisor.bundles")


class BundleGate:
    def __init__(self, cfg: GatewayConfig, on_ready: Callable[[str], None]) -> None:
        self._cfg = cfg
        self.store = BundleStore(cfg, on_change=on_ready)
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def for_config(cls, cfg: GatewayConfig,
                   on_ready: Callable[[str], None]) -> BundleGate | None:
        if not cfg.enable_coprocess:
            return None
        # A cache from an earlier run counts: its refs.json must follow the definitions.
        if cfg.bundles.active or store_root(cfg.middleware_path).is_dir() or any(
                api.custom_middleware_bundle for api in _apis(cfg)):
            return cls(cfg, on_ready)
        return None

    async def start(self) -> None:
        report = await self.store.prepare(_apis(self._cfg))
        unserved = report.unserved()
        if unserved:
            log.warning("serving without the bundles of API(s) %s for now", ", ".join(unserved))

    def refresh_then(self, proceed: Callable[[], None], refuse: Callable[[str], None]) -> None:
        task = asyncio.ensure_future(self._refresh(proceed, refuse))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh(self, proceed: Callable[[], None], refuse: Callable[[str], None]) -> None:
        async with self._lock:
            try:
                report = await self.store.refresh(_apis(self._cfg))
            except Exception as exc:  # never lose a reload to a bundle bug
                log.exception("bundle refresh failed")
                refuse(f"bundles could not be refreshed: {exc}")
                return
        if report.refused:
            refuse("bundle refused: " + "; ".join(report.refused))
        else:
            proceed()

    def release(self) -> list[str] | None:
        """Remove cached bundle versions no worker uses any more (the generations that
        loaded them have exited); None while a refresh runs (it may be switching
        versions: ask again later)."""
        if self._lock.locked():
            return None
        return self.store.release()

    def status(self) -> list[dict[str, Any]]:
        return self.store.status()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()


def _apis(cfg: GatewayConfig) -> list[APIDefinition]:
    try:
        return list(load_definition_set(cfg).apis)  # a broken file has no bundle to fetch
    except ConfigError:
        return []  # app_path unusable: the reload reports it; bundles of the last set stay
