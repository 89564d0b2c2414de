"""The analytics pipeline: a bounded queue, batches, a transform seam, then the sink.

A request only appends a small tuple to a bounded deque (`submit`, no await,
no allocation beyond the tuple); when the queue is full the record is
dropped and counted, never waited for, and one warning per interval says how
many were lost.  A dispatcher task takes batches (`batch_size` records, or
what is there after `flush_interval_ms`), builds the records, runs the
`transform` (analytics plugins in the worker, gateway/analytics/plugins.py: it
may change records or drop them), applies Tyk's finishing touches and hands the batch to
the sink, with at most `pool_size` batches being written at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from config.analytics import AnalyticsConfig
from gateway.analytics.record import Exchange, Record, RecordSpec, build, finish
from gateway.analytics.sinks import Sink

__all__ = ["Pipeline", "Transform"]

log = logging.getLogger("coproc.gateway.analytics")

#: An async callable over one batch; returns the records to keep (changed or not).
Transform = Callable[[list[Record]], Awaitable[list[Record]]]

_LOG_EVERY_S = 10.0
_CLOSE_GRACE_S = 5.0


class Pipeline:
    """One per gateway process; the counters are read by the metrics collector."""

    def __init__(self, cfg: AnalyticsConfig, sink: Sink, transform: Transform | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.sink = sink
        self.transform = transform
        self._queue: collections.deque[tuple[RecordSpec, Exchange, int, float]] = (
            collections.deque())
        self._limit = cfg.records_buffer_size
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.pool_size)
        self._writes: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._dropped_logged = 0
        self._drop_log_at = 0.0
        self._error_log_at = 0.0
        # Counters (read by gateway.metrics at scrape time: nothing to do per request).
        self.submitted = 0
        self.dropped = 0  # queue full
        self.filtered = 0  # dropped by the transform
        self.written = 0
        self.failed = 0  # lost to a sink or transform error

    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, spec: RecordSpec, exchange: Exchange, ended_ns: int) -> None:
        """Queue one exchange's record; never blocks, drops when the queue is full."""
        if len(self._queue) >= self._limit:
            self.dropped += 1
            self._log_drops()
            return
        self.submitted += 1
        self._queue.append((spec, exchange, ended_ns, time.time()))
        if len(self._queue) >= self.cfg.batch_size:
            self._wake.set()

    def _log_drops(self) -> None:
        now = self._clock()
        if now - self._drop_log_at >= _LOG_EVERY_S:
            self._drop_log_at = now
            lost, self._dropped_logged = self.dropped - self._dropped_logged, self.dropped
            log.warning("analytics queue full (%d records): dropped %d record(s) since the "
                        "last report; raise analytics_config.records_buffer_size or check "
                        "the sink", self._limit, lost)

    async def run(self) -> None:
        """Dispatch batches until cancelled; `close()` flushes what is left."""
        interval = self.cfg.flush_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            while self._queue:
                await self._slots.acquire()
                task = asyncio.create_task(self._write(self._take()))
                self._writes.add(task)
                task.add_done_callback(self._writes.discard)

    def _take(self) -> list[tuple[RecordSpec, Exchange, int, float]]:
        size = min(self.cfg.batch_size, len(self._queue))
        return [self._queue.popleft() for _ in range(size)]

    async def _write(self, items: list[tuple[RecordSpec, Exchange, int, float]]) -> None:
        try:
            await self._write_batch(items)
        finally:
            self._slots.release()

    async def _write_batch(self, items: list[tuple[RecordSpec, Exchange, int, float]]) -> None:
        cfg = self.cfg
        records = [build(spec, ex, ended, phases=cfg.phase_latencies, now=wall)
                   for spec, ex, ended, wall in items]
        try:
            if self.transform is not None:
                kept = await self.transform(records)
                self.filtered += len(records) - len(kept)
                records = kept
            for record in records:
                finish(record, cfg.hash_keys)
            if records:
                await self.sink.write(records)
            self.written += len(records)
        except Exception as exc:  # a sink outage loses this batch, never the gateway
            self.failed += len(records)
            self._log_error(exc, len(records))

    def _log_error(self, exc: BaseException, count: int) -> None:
        now = self._clock()
        if now - self._error_log_at >= _LOG_EVERY_S:
            self._error_log_at = now
            log.error("analytics: %d record(s) lost: %s: %s (%d lost in all)", count,
                      type(exc).__name__, exc, self.failed)

    async def close(self) -> None:
        """Write what is queued (bounded by a grace period), then close the sink."""
        try:
            async with asyncio.timeout(_CLOSE_GRACE_S):
                while self._queue:
                    await self._slots.acquire()
                    await self._write(self._take())
                if self._writes:
                    await asyncio.gather(*self._writes, return_exceptions=True)
        except TimeoutError:
            log.warning("analytics: %d record(s) not written at stop", len(self._queue))
        await self.sink.close()

    def stats(self) -> dict[str, Any]:
        return {"depth": self.depth, "submitted": self.submitted, "dropped": self.dropped,
                "filtered": self.filtered, "written": self.written, "failed": self.failed}
