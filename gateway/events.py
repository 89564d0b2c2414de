"""Events (AuthFailure, RateLimitExceeded, QuotaExceeded, plugins' trigger_event, …)
delivered to each API's `event_handlers`, off the request path.

`emit` only enqueues (a bounded queue: when full, the event is dropped and
counted, never awaited); one background task delivers.  Handlers, by Tyk's
names: `eh_log_handler` (a log line), `eh_web_hook_handler` (an HTTP request
to `handler_meta.target_path` with a timeout and bounded retries) and
`cp_dynamic_handler` (the Python `@Event` handler `handler_meta.name` in the
worker, sent as an EVENT message; see docs/PROTOCOL.md).  `watch_worker`
turns a change of the active worker generation into `WorkerRestarted` for
every API that handles it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp

__all__ = ["EventBus"]

log = logging.getLogger("coproc.gateway.events")

WEBHOOK_TIMEOUT_S: Final = 5.0
WEBHOOK_ATTEMPTS: Final = 3
_Handlers = Mapping[str, Any]
#: (api_id, @Event handler name, event fields, spec) -> sent to a worker?
SendEvent = Callable[[str, str, Mapping[str, str], Mapping[str, str]], bool]


class EventBus:
    """Queue + delivery task; `emit` is safe to call from any coroutine, never blocks."""

    def __init__(self, handlers_of: Callable[[str], _Handlers],
                 http: aiohttp.ClientSession | None = None, max_queued: int = 1000,
                 specs: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._handlers_of = handlers_of
        self._specs = specs or {}
        self.send_event: SendEvent | None = None  # set by the app: the hook client's
        self.http = http  # set by the app once its loop runs
        self._queue: asyncio.Queue[tuple[str, str, dict[str, Any], _Handlers]] = \
            asyncio.Queue(max_queued)
        self.stats = {"events": 0, "dropped": 0, "delivered": 0, "failed": 0}
        self._warned: set[tuple[str, str]] = set()

    def emit(self, api_id: str, name: str, meta: dict[str, Any],
             handlers: _Handlers | None = None) -> None:
        if handlers is None:
            handlers = self._handlers_of(api_id)
        if not handlers.get(name):
            return
        self.stats["events"] += 1
        meta = {"event": name, "api_id": api_id, "timestamp": int(time.time()), **meta}
        try:
            self._queue.put_nowait((api_id, name, meta, handlers))
        except asyncio.QueueFull:
            self.stats["dropped"] += 1
            if self.stats["dropped"] % 100 == 1:
                log.warning("event queue full: dropped %d event(s) so far",
                            self.stats["dropped"])

    async def run(self) -> None:
        """Deliver queued events until cancelled."""
        while True:
            api_id, name, meta, handlers = await self._queue.get()
            for handler in handlers.get(name) or ():
                try:
                    await self._deliver(api_id, name, meta, handler)
                except Exception:  # one broken handler must not stop the others
                    self.stats["failed"] += 1
                    log.exception("event handler %s for %s failed",
                                  handler.get("handler_name"), name)

    async def _deliver(self, api_id: str, name: str, meta: dict[str, Any],
                       handler: Mapping[str, Any]) -> None:
        kind = handler.get("handler_name")
        hmeta = handler.get("handler_meta") or {}
        if kind == "eh_log_handler":
            log.info("%s%s", hmeta.get("prefix", "") and f"{hmeta['prefix']}: ",
                     json.dumps(meta), extra={"fields": {"api_id": api_id, "event": name}})
            self.stats["delivered"] += 1
        elif kind == "eh_web_hook_handler":
            await self._webhook(meta, hmeta)
        elif kind == "cp_dynamic_handler" and self.send_event is not None:
            fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
            if self.send_event(api_id, str(hmeta.get("name", "")), fields,
                               self._specs.get(api_id, {})):
                self.stats["delivered"] += 1
            else:
                self.stats["failed"] += 1
                log.warning("event %s of API %s: no worker to run @Event handler %s", name,
                            api_id, hmeta.get("name"))
        elif (api_id, name) not in self._warned:
            self._warned.add((api_id, name))
            log.warning("event %s of API %s: handler %s is not supported yet (not delivered)",
                        name, api_id, kind)

    async def watch_worker(self, generation: Callable[[], Any], api_ids: list[str],
                           interval: float = 0.5) -> None:
        """Emit WorkerRestarted whenever the active worker generation changes."""
        last = generation()
        while True:
            await asyncio.sleep(interval)
            now = generation()
            if now is not None and now != last:
                if last is not None:
                    for api_id in api_ids:
                        self.emit(api_id, "WorkerRestarted",
                                  {"message": f"worker generation {now} replaced {last}",
                                   "generation": now, "previous": last})
                last = now

    async def _webhook(self, meta: dict[str, Any], hmeta: Mapping[str, Any]) -> None:
        url = hmeta.get("target_path", "")
        if self.http is None or not isinstance(url, str) or not url.startswith("http"):
            log.warning("webhook handler without a usable target_path: %r", url)
            return
        method = str(hmeta.get("method") or "POST").upper()
        headers = {str(k): str(v) for k, v in (hmeta.get("header_map") or {}).items()}
        timeout = aiohttp.ClientTimeout(total=float(hmeta.get("event_timeout") or
                                                    WEBHOOK_TIMEOUT_S))
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                async with self.http.request(method, url, json=meta, headers=headers,
                                              timeout=timeout) as resp:
                    if resp.status < 500:
                        self.stats["delivered"] += 1
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if attempt < WEBHOOK_ATTEMPTS:
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))  # backoff between retries
        self.stats["failed"] += 1
        log.warning("webhook %s %s failed after %d attempts: %s", method, url,
                    WEBHOOK_ATTEMPTS, reason)
