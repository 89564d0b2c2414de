"""Why a hook call produced no object, each with the status it fails closed with.

Raised by the hook client (`gateway.hooks`, which re-exports them) and
handled by the chain per the hook's failure policy.  `error_from_reply` turns
a worker's ERROR payload into one of them; `outcome_of` names a failed call's
outcome for metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from ipc.protocol import ErrorCode

__all__ = [
    "BackendUnavailable",
    "HookCallError",
    "HookFailed",
    "HookTimeout",
    "NoWorker",
    "WorkerLost",
    "error_from_reply",
    "outcome_of",
]


class HookCallError(Exception):
    """A hook call did not produce an object; `status` is the fail-closed answer."""

    status = 500


class HookTimeout(HookCallError):
    status = 504


class WorkerLost(HookCallError):
    status = 500


class NoWorker(HookCallError):
    status = 503


class BackendUnavailable(HookCallError):
    """The hook needed the storage (a host call) while it was down."""

    status = 503


class HookFailed(HookCallError):
    status = 500

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def error_from_reply(payload: Mapping[str, Any]) -> HookCallError:
    """The error a worker's ERROR payload (validated: `code`, `message`) stands for."""
    code, message = payload["code"], payload["message"]
    if code == ErrorCode.DEADLINE:
        # The worker's clock ran out first: the same outcome as ours running out.
        return HookTimeout(message)
    if code == ErrorCode.UNAVAILABLE:
        return BackendUnavailable(message)
    return HookFailed(code, message)


def outcome_of(exc: BaseException) -> str:
    """A failed hook call's outcome label: timeout, unavailable (no worker or no
    storage), cancelled (the client went away) or error."""
    if isinstance(exc, HookTimeout):
        return "timeout"
    if isinstance(exc, (NoWorker, BackendUnavailable)):
        return "unavailable"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"
