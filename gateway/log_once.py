"""Log a repeated condition once, not on every request that meets it.

A plugin that failed to load answers every call with `load_failed`; the
worker logs the import error once per generation when it loads, and the
gateway logs the first failed call per API, hook and error text (a new
generation with a different error is logged again).  Later ones go to debug.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["Once"]


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
