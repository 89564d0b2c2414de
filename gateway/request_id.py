"""The request id: the client's `X-Request-Id` when it is safe to pass on, else a new one.

A client's id is kept when it is 1-200 characters from a conservative set
(letters, digits and `-_.:/+=@`), so it can go into log lines, headers and
analytics records as it is; anything else is replaced by 32 random hex digits.
The id reaches the upstream and the plugins as the `X-Request-Id` request
header, the gateway's log lines about the request as `request_id`, and the
analytics record.
"""

from __future__ import annotations

import contextvars
import os
import re

from multidict import CIMultiDict

from gateway.tyk_object import Headers

__all__ = ["HEADER", "MAX_LENGTH", "REQUEST_INFO", "request_id", "with_request_id"]

HEADER = "X-Request-Id"
MAX_LENGTH = 200
#: (api_id, request_id) of the request being served, set by the chain once it matched
#: an API; the access log and the request's span read it.  Each aiohttp request runs
#: in its own task (its own context), so the value is that request's.
REQUEST_INFO: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "coproc_request_info", default=None)
_SAFE = re.compile(rf"[A-Za-z0-9_.:/+=@-]{{1,{MAX_LENGTH}}}")


def request_id(headers: Headers) -> tuple[str, bool]:
    """(the request's id, whether it is the client's own)."""
    given = headers.get(HEADER)
    if given and _SAFE.fullmatch(given):
        return given, True
    return os.urandom(16).hex(), False


def with_request_id(headers: Headers, rid: str) -> CIMultiDict[str]:
    """A copy of `headers` whose X-Request-Id is `rid` (and no other one)."""
    out: CIMultiDict[str] = CIMultiDict(headers)
    out[HEADER] = rid
    return out
