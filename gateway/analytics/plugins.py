"""The pipeline's `transform` that runs analytics plugins in the worker.

The records of a batch whose API has an analytics plugin (`analytics_plugin`,
or a bundle's `traffic_logs`) go to the worker as one ANALYTICS message
(`HookClient.analytics`); the answer replaces them (changed, or dropped by
the plugin); the others pass as they are.  This runs in the pipeline's
dispatcher, after the responses were sent: a slow plugin only keeps batches
waiting here, at most `IN_FLIGHT` of them at the worker, so the pipeline's
queue fills and drops (counted) instead of anything reaching a request.

A worker lost before it answered (hot restart, crash) loses no record: the
batch is kept and sent again to the next generation, until `GIVE_UP_S`.  A
batch the worker does not answer in `TIMEOUT_S`, or that cannot be placed by
`GIVE_UP_S`, is stored as it came and counted as failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from typing import Final, Protocol

from gateway.analytics.record import Record
from gateway.hook_errors import HookCallError, NoWorker, WorkerLost

__all__ = ["AnalyticsCaller", "PluginTransform"]

log = logging.getLogger("coproc.gateway.analytics")

#: Batches at the worker at once (its analytics thread works one at a time).
IN_FLIGHT: Final = 2
#: How long the worker has to answer one batch.
TIMEOUT_S: Final = 30.0
#: How long a batch is kept for a worker to come back (restarts, hot restarts).
GIVE_UP_S: Final = 60.0
#: Attempts per batch (each waits for an active worker first).
MAX_ATTEMPTS: Final = 20


class AnalyticsCaller(Protocol):
    """What this needs of `gateway.hooks.HookClient`."""

    async def analytics(self, records: list[Record], timeout_s: float
                        ) -> tuple[list[Record], int]: ...


class PluginTransform:
    """`Pipeline(transform=PluginTransform(...))`; its counters go to /metrics."""

    def __init__(self, caller: Callable[[], AnalyticsCaller | None],
                 plugin_apis: Callable[[], Collection[str]], *,
                 timeout_s: float = TIMEOUT_S, give_up_s: float = GIVE_UP_S) -> None:
        """`caller()`: the hook client (None before it started); `plugin_apis()`: the
        ids of the APIs with an analytics plugin, in the configuration being served."""
        self._caller = caller
        self._plugin_apis = plugin_apis
        self._timeout_s = timeout_s
        self._give_up_s = give_up_s
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self.batches = 0
        self.retries = 0  # a batch sent again after its worker was lost
        self.failures = 0  # records the plugin failed on, or never answered for
        self.timeouts = 0  # batches unanswered in time

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "retries": self.retries, "failures": self.failures,
                "timeouts": self.timeouts}

    async def __call__(self, records: list[Record]) -> list[Record]:
        wanted = self._plugin_apis()
        if not wanted:
            return records
        batch = [r for r in records if r.get("api_id") in wanted]
        if not batch:
            return records
        rest = [r for r in records if r.get("api_id") not in wanted]
        async with self._slots:
            got = await self._send(batch)
        return rest + (batch if got is None else got)

    async def _send(self, batch: list[Record]) -> list[Record] | None:
        """The batch after the plugins; None: store it as it is (counted)."""
        give_up = time.monotonic() + self._give_up_s
        for _ in range(MAX_ATTEMPTS):
            caller = self._caller()
            if caller is None:
                return batch
            try:
                kept, failed = await caller.analytics(batch, self._timeout_s)
            except (WorkerLost, NoWorker) as exc:
                if time.monotonic() >= give_up:
                    break
                self.retries += 1
                log.info("analytics batch of %d record(s) kept for the next worker: %s",
                         len(batch), exc)
                continue
            except HookCallError as exc:  # timeout, or the worker refused it
                self.timeouts += 1
                self.failures += len(batch)
                log.warning("analytics plugins: batch of %d record(s) stored unchanged: %s",
                            len(batch), exc)
                return None
            self.batches += 1
            self.failures += failed
            return kept
        self.failures += len(batch)
        log.warning("analytics plugins: no worker took a batch of %d record(s) in %g s: "
                    "stored unchanged", len(batch), self._give_up_s)
        return None
