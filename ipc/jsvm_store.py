"""The bounds of Tyk's goja storage functions (TykStorageGet, TykStorageSet, …).

Both ends check them: the worker before it sends a `jsvm_store` host call (a
refusal costs no round trip), the gateway before it touches storage (a worker
is not trusted to have checked).  The keys live under their own prefix, so a
plugin never reaches sessions, quotas or other gateway state.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_KEY_BYTES", "MAX_VALUE_BYTES", "PREFIX", "store_problem"]

#: Tyk's prefix for these keys in Redis.
PREFIX: Final = "jsvm-store:"
MAX_KEY_BYTES: Final = 256
MAX_VALUE_BYTES: Final = 64 * 1024


def store_problem(key: str, value: bytes) -> str:
    """Why Tyk's storage functions refuse this key or value ("" when fine)."""
    if not key or len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        return f"storage key must be 1-{MAX_KEY_BYTES} bytes"
    if len(value) > MAX_VALUE_BYTES:
        return f"storage value exceeds {MAX_VALUE_BYTES} bytes"
    return ""
