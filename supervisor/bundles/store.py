"""The instance's one bundle store: which bundle each API loads, or why not.

One `BundleStore` per instance, in the supervisor (never per gateway
process); the worker is sandboxed and only loads what `refs.json` names.
The store runs one `BundleInstaller.obtain` per bundle name (`installer.py`:
fetch, extract, verify, cache), in parallel and again in the background
after a failure; it turns their results into each API's `Outcome`, writes
`refs.json`, and removes cache objects no generation can use any more.

* `prepare(apis, wait_s)` at start: every bundle name is obtained in
  parallel; after `wait_s` the report says which are ready, and downloads
  still running finish in the background (`on_change` is called when one
  becomes usable, so the supervisor can reload onto it).
* `refresh(apis, wait_s)` on reload: conditional GETs; a new version is
  verified completely before `refs.json` points at it.  A new version that
  fails verification keeps the current one and puts the reason in
  `report.refused`: the supervisor refuses the reload.  An unreachable server
  keeps the cached version (not a refusal).
* A bundle that cannot be obtained fails only its APIs: one log line names
  the bundle, the masked URL and why; `status()` carries it for `coproc
  status`; `refs.json` carries the reason without any URL, for `/hello`.
* Without a usable copy of its own, the store verifies and uses a directory
  in one of Tyk's layouts (`config.bundles.tyk_layouts`); those are
  read-only: never revalidated against the server, never deleted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from config.bundles import bundle_names, tyk_layouts
from config.gateway import GatewayConfig
from supervisor.bundles.cache import BundleCache
from supervisor.bundles.installer import BundleInstaller, Obtained
from supervisor.bundles.verify import VerifyError

__all__ = ["BundleReport", "BundleStore", "Outcome"]

log = logging.getLogger("supervisor.bundles")


class ApiLike(Protocol):
    @property
    def api_id(self) -> str: ...
    @property
    def active(self) -> bool: ...
    @property
    def custom_middleware_bundle(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """One bundle of one API after prepare/refresh."""

    api_id: str
    bundle: str
    state: str  # "ready", "pending" (still downloading) or "failed"
    source: str = ""  # "download", "cache", "tyk5", "tyk3", "tyk2"
    directory: Path | None = None
    reason: str = ""  # for the log and `coproc status` (URL masked)
    short: str = ""  # for /hello (no URL)

    def as_dict(self) -> dict[str, Any]:
        return {"api_id": self.api_id, "bundle": self.bundle, "state": self.state,
                "source": self.source, "reason": self.reason}


@dataclass(slots=True)
class BundleReport:
    outcomes: list[Outcome] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # a reload must be refused

    @property
    def ok(self) -> bool:
        return not self.refused

    def unserved(self) -> list[str]:
        return sorted({o.api_id for o in self.outcomes if o.state != "ready"})


def _outcome_of(name: str, task: asyncio.Task[Obtained]) -> Obtained:
    """A finished task's result; an unexpected error (disk full, a bug) fails the bundle."""
    try:
        return task.result()
    except Exception as exc:
        log.exception("bundle %r: could not be obtained", name)
        return Obtained(reason=f"bundle {name!r}: internal error ({type(exc).__name__}: {exc})",
                        short=f"internal error ({type(exc).__name__})")


class BundleStore:
    """Bundles of one instance; see the module docstring."""

    def __init__(self, cfg: GatewayConfig,
                 on_change: Callable[[str], None] | None = None) -> None:
        self._options = cfg.bundles
        self._middleware = cfg.middleware_path
        self._cache = BundleCache(cfg.middleware_path)
        self._installer = BundleInstaller(cfg, self._cache)
        self._on_change = on_change
        self._apis: dict[str, tuple[str, list[str]]] = {}  # api_id -> (value, names)
        self._results: dict[str, Obtained] = {}
        self._tasks: dict[str, asyncio.Task[Obtained]] = {}
        self._retries: dict[str, asyncio.Task[Obtained]] = {}
        self._claimed: set[asyncio.Task[Obtained]] = set()
        self._previous: set[str] = set()  # objects the previous generation may use
        self._outcomes: list[Outcome] = []

    # -- the seam the supervisor calls -----------------------------------------------

    async def prepare(self, apis: Iterable[ApiLike], wait_s: float | None = None) -> BundleReport:
        """Start-up: obtain every bundle, waiting at most `wait_s` (start_wait_ms)."""
        return await self._run(apis, self._wait(wait_s), reload=False)

    async def refresh(self, apis: Iterable[ApiLike], wait_s: float | None = None) -> BundleReport:
        """Reload: revalidate every bundle; `report.refused` when a new version fails."""
        return await self._run(apis, self._wait(wait_s), reload=True)

    def release(self) -> list[str]:
        """After a hot restart completed: drop objects no worker uses any more."""
        keep = self._current_digests()
        self._previous = keep
        return self._cache.collect(keep) if self._cache.objects.is_dir() else []

    def status(self) -> list[dict[str, Any]]:
        """Every API's bundles for `coproc status` (URLs masked)."""
        return [o.as_dict() for o in self._outcomes]

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *self._retries.values()]
        self._tasks.clear()
        self._retries.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._installer.close()

    # -- one prepare/refresh pass -----------------------------------------------------

    def _wait(self, wait_s: float | None) -> float:
        return self._options.start_wait_ms / 1000 if wait_s is None else wait_s

    async def _run(self, apis: Iterable[ApiLike], wait_s: float, reload: bool) -> BundleReport:
        self._apis = {api.api_id: (api.custom_middleware_bundle,
                                   bundle_names(api.custom_middleware_bundle))
                      for api in apis if api.active and api.custom_middleware_bundle}
        wanted = sorted({name for _v, names in self._apis.values() for name in names})
        if not wanted and not self._cache.root.exists():
            return BundleReport()
        if wanted:
            self._installer.warn_once()
        self._cache.ensure()
        state = self._cache.read_state()
        for name in wanted:
            retry = self._retries.pop(name, None)
            if retry is not None:  # obtained now instead
                retry.cancel()
            if name not in self._tasks:
                self._tasks[name] = asyncio.ensure_future(
                    self._installer.obtain(name, state.get(name)))
        running = {name: self._tasks[name] for name in wanted}
        self._claimed.update(running.values())  # this pass settles them, not the callback
        try:
            if running:
                await asyncio.wait(running.values(), timeout=wait_s)
        finally:
            self._claimed.difference_update(running.values())
        report = BundleReport()
        for name, task in running.items():
            if not task.done():
                task.add_done_callback(functools.partial(self._finished_late, name))
                continue
            if self._tasks.get(name) is task:
                del self._tasks[name]
            result = _outcome_of(name, task)
            if result.refused:
                report.refused.append(result.refused)
            self._results[name] = result
            self._installer.remember(name, result)
            if result.directory is None:
                self._retry_later(name)
        report.outcomes = self._outcome_list(pending=set(self._tasks))
        if reload and report.refused:
            self._outcomes = report.outcomes
            for reason in report.refused:
                log.error("reload refused: %s", reason)
            return report  # refs.json keeps naming what serves now
        self._publish(report.outcomes)
        keep = self._current_digests() | self._previous
        self._cache.collect(keep)
        self._previous = self._current_digests()
        return report

    def _finished_late(self, name: str, task: asyncio.Task[Obtained]) -> None:
        """A download that outlived the wait (unless a later pass already took it)."""
        if self._tasks.get(name) is not task or task in self._claimed:
            return
        del self._tasks[name]
        if task.cancelled():
            return
        self._settle(name, _outcome_of(name, task))

    def _settle(self, name: str, result: Obtained) -> None:
        """Publish a background result; ask for a reload when it made a bundle usable."""
        self._results[name] = result
        self._installer.remember(name, result)
        if result.directory is None or result.refused:
            log.error("bundle %r: %s", name, result.refused or result.reason)
            if result.directory is None:
                self._retry_later(name)
            return
        self._publish(self._outcome_list(pending=set(self._tasks)))
        log.info("bundle %r is ready (%s)", name, result.source)
        if self._on_change is not None:
            self._on_change(name)

    def _publish(self, outcomes: list[Outcome]) -> None:
        self._outcomes = outcomes
        refs: dict[str, Any] = {"apis": {}}
        for o in outcomes:
            refs["apis"].setdefault(o.api_id, {})[o.bundle] = {
                "dir": str(o.directory) if o.directory else "", "source": o.source,
                "error": o.short}
            if o.state == "failed":
                log.error("API %s is not served: %s", o.api_id, o.reason)
            elif o.state == "pending":
                log.warning("API %s waits for bundle %r (still downloading); it is served "
                            "once the bundle is ready", o.api_id, o.bundle)
            elif o.reason:
                log.warning("API %s: bundle %r: %s; using the %s copy", o.api_id, o.bundle,
                            o.reason, o.source)
        self._cache.write_refs(refs)

    def _outcome_list(self, pending: set[str]) -> list[Outcome]:
        outcomes = []
        for api_id, (value, names) in sorted(self._apis.items()):
            for name in names:
                if name in pending and name not in self._results:
                    outcomes.append(Outcome(api_id, name, "pending", reason=f"bundle {name!r} "
                                            "is still downloading", short="still downloading"))
                    continue
                outcomes.append(self._outcome(api_id, value, name))
        return outcomes

    def _outcome(self, api_id: str, value: str, name: str) -> Outcome:
        result = self._results.get(name, Obtained(reason=f"bundle {name!r}: not obtained",
                                                 short="not obtained"))
        if result.directory is not None:
            return Outcome(api_id, name, "ready", result.source, result.directory,
                           result.refused or result.reason)
        problems = [result.reason]
        for source, directory in tyk_layouts(self._middleware, api_id, value, name):
            if not (directory / "manifest.json").is_file():
                continue
            try:
                self._installer.verify_cached(directory, name)
            except VerifyError as exc:
                problems.append(f"{source} copy in {directory}: {exc}")
                return Outcome(api_id, name, "failed", reason="; ".join(problems),
                               short=f"{result.short}; cached copy: {exc}")
            return Outcome(api_id, name, "ready", source, directory,
                           result.reason if self._options.active else "")
        return Outcome(api_id, name, "failed", reason=result.reason, short=result.short)

    def _current_digests(self) -> set[str]:
        return {r.digest for r in self._results.values() if r.digest}

    # -- trying again in the background ------------------------------------------

    def _retry_later(self, name: str) -> None:
        """After every attempt failed: try again every retry_interval_s, in the background."""
        if not self._options.active or name in self._retries:
            return

        async def retry() -> Obtained:
            await asyncio.sleep(self._options.retry_interval_s)
            return await self._installer.obtain(name, self._cache.read_state().get(name))

        task = asyncio.ensure_future(retry())
        self._retries[name] = task
        task.add_done_callback(functools.partial(self._retried, name))

    def _retried(self, name: str, task: asyncio.Task[Obtained]) -> None:
        if self._retries.get(name) is not task:
            return
        del self._retries[name]
        if task.cancelled():
            return
        self._settle(name, _outcome_of(name, task))
