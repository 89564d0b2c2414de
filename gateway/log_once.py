"""Log a repeated condition once, not on every request that meets it.

A plugin that failed to load answers every call with `load_failed`; the
worker logs the import error once per generation when it loads, and the
gateway (`hook_failure_level`) logs the first failed call per API, hook and
error text at warning, later ones at debug (a new generation with a different
error is logged again).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable

from gateway.hook_errors import HookCallError, HookFailed
from ipc.protocol import ErrorCode

__all__ = ["Once", "hook_failure_level"]


class Once:
    """Tells whether a key is new; remembers at most `limit` keys (then starts over)."""

    def __init__(self, limit: int = 1024) -> None:
        self._seen: set[Hashable] = set()
        self._limit = limit

    def first(self, key: Hashable) -> bool:
        if key in self._seen:
            return False
        if len(self._seen) >= self._limit:  # many reloads with new errors: forget the old
            self._seen.clear()
        self._seen.add(key)
        return True


_load_failures = Once()  # one gateway process: one set, whichever part called the hook


def hook_failure_level(api_id: str, hook: str, exc: HookCallError) -> int:
    """The level to log a failed hook call at: warning, or debug for a plugin that
    failed to load once its first failure was logged."""
    if isinstance(exc, HookFailed) and exc.code == ErrorCode.LOAD_FAILED and \
            not _load_failures.first((api_id, hook, str(exc))):
        return logging.DEBUG
    return logging.WARNING
