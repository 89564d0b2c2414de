"""Analytics plugins in the worker: Tyk's sixth phase, run over batches of records.

An API's `analytics_plugin` (or its bundle's `traffic_logs`) names a plain
function in a `.py` file; it gets each analytics record of that API as a dict
under Tyk's JSON names (`method`, `path`, `response_code`, `tags`, ...), and:

* changes it in place, or returns a new dict: that record is stored;
* returns `False` (Coproc's drop marker; Tyk's Go plugins cannot drop): the
  record is not stored;
* raises, or returns anything else: the record is stored as it came, and the
  failure is counted (`analytics_failures` in the worker's HEARTBEAT).

Batches arrive as ANALYTICS messages and run on this module's own small
thread pool, never on the call threads that serve request hooks: a slow
analytics function delays only the analytics records (the gateway's queue
absorbs them, and drops when full), never a request.  The answer is one
ANALYTICS_DONE per batch.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, Final

from config.apidef import APIDefinition
from ipc.protocol import Message, MsgType
from worker.channel import Channel

__all__ = ["ANALYTICS_THREADS", "AnalyticsFunc", "AnalyticsRunner", "load_analytics", "run_batch"]

log = logging.getLogger("worker.analytics")

#: Threads that run analytics functions (their own, not the call threads').
ANALYTICS_THREADS: Final = 1

AnalyticsFunc = Callable[[dict[str, Any]], Any]


def load_analytics(apis: Iterable[APIDefinition]) -> dict[str, AnalyticsFunc]:
    """Each API's analytics function; a file that fails to load is logged, and that
    API's records are then stored as they are."""
    funcs: dict[str, AnalyticsFunc] = {}
    for api in apis:
        plugin = api.analytics_plugin
        if plugin is None or not api.active:
            continue
        try:
            funcs[api.api_id] = _load(api.api_id, plugin.path, plugin.func_name)
            log.info("API %s: analytics plugin %s from %s", api.api_id, plugin.func_name,
                     plugin.path)
        except Exception as exc:  # a broken plugin never stops the worker
            log.error("API %s: analytics plugin %s from %s failed to load: %s: %s",
                      api.api_id, plugin.func_name, plugin.path, type(exc).__name__, exc)
    return funcs


def _load(api_id: str, path: str, func_name: str) -> AnalyticsFunc:
    name = f"coproc_analytics_{abs(hash((api_id, path))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    func = getattr(module, func_name, None)
    if not callable(func):
        raise AttributeError(f"{path} has no function {func_name!r}")
    if inspect.iscoroutinefunction(func):
        raise TypeError(f"{func_name} is `async def`: analytics functions are plain functions "
                        "(they run on their own thread)")
    return func  # type: ignore[no-any-return]


class AnalyticsRunner:
    """Runs ANALYTICS batches on its own threads and answers each with ANALYTICS_DONE."""

    def __init__(self, channel: Channel, funcs: dict[str, AnalyticsFunc],
                 threads: int = ANALYTICS_THREADS) -> None:
        self._channel = channel
        self._funcs = funcs
        # Daemon threads: a stuck analytics function never holds the worker's exit
        # (worker/main.py waits for non-daemon threads).
        self._jobs: queue.SimpleQueue[tuple[int, list[dict[str, Any]]] | None] = (
            queue.SimpleQueue())
        self._threads = [threading.Thread(target=self._serve, name=f"analytics-{n + 1}",
                                          daemon=True) for n in range(max(1, threads))]
        self._closed = False
        # Counters (reported in HEARTBEAT; each written by the pool's threads only,
        # and with one thread by one writer).
        self.batches = 0
        self.records = 0
        self.dropped = 0
        self.failures = 0

    def counters(self) -> dict[str, int]:
        return {"analytics_batches": self.batches, "analytics_records": self.records,
                "analytics_dropped": self.dropped, "analytics_failures": self.failures}

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def submit(self, message: Message) -> None:
        """Queue one batch (never blocks the reader that got it)."""
        if not self._closed:  # closed: unanswered, the gateway retries it elsewhere
            self._jobs.put((message.call_id, message.payload["records"]))

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._run(*job)
            except Exception:  # only our own bug gets here: keep serving
                log.exception("analytics batch %d failed", job[0])

    def _run(self, call_id: int, records: list[dict[str, Any]]) -> None:
        kept, failed = run_batch(self._funcs, records)
        self.batches += 1
        self.records += len(records)
        self.dropped += len(records) - len(kept)
        self.failures += failed
        self._channel.send(MsgType.ANALYTICS_DONE, call_id, {"records": kept, "failed": failed})


def run_batch(funcs: dict[str, AnalyticsFunc], records: list[dict[str, Any]]
              ) -> tuple[list[dict[str, Any]], int]:
    """(the records to keep, how many failed) after each record's API's function."""
    kept: list[dict[str, Any]] = []
    failed = 0
    for record in records:
        func = funcs.get(str(record.get("api_id", "")))
        if func is None:
            kept.append(record)
            continue
        original = copy.deepcopy(record)  # a failing function's half-made changes are not kept
        try:
            got = func(record)
        except Exception as exc:
            failed += 1
            _log_failure(record, exc)
            kept.append(original)
            continue
        if got is False:
            continue
        if got is None or got is True:
            kept.append(record)
        elif isinstance(got, dict):
            kept.append(got)
        else:
            failed += 1
            _log_failure(record, TypeError(f"returned {type(got).__name__}, not a dict, "
                                           "None or False"))
            kept.append(original)
    return kept, failed


_failures_logged = 0


def _log_failure(record: dict[str, Any], exc: BaseException) -> None:
    global _failures_logged
    _failures_logged += 1
    if _failures_logged <= 10 or _failures_logged % 1000 == 0:  # not one line per record
        log.error("analytics plugin of API %s failed (%d so far): %s: %s",
                  record.get("api_id", ""), _failures_logged, type(exc).__name__, exc)
