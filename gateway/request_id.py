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
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from gateway.tyk_object import Headers

__all__ = ["HEADER", "MAX_LENGTH", "REQUEST_INFO", "TRACE_HEADERS", "TraceHeaders", "request_id",
           "with_request_id"]

HEADER = "X-Request-Id"
MAX_LENGTH = 200
#: (api_id, request_id) of the request being served, set by the chain once it matched
#: an API; the access log and the request's span read it.  Each aiohttp request runs
#: in its own task (its own context), so the value is that request's.
REQUEST_INFO: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "coproc_request_info", default=None)


@dataclass(frozen=True, slots=True)
class TraceHeaders:
    """The request span's propagation headers (`gateway.tracing`): `drop` the client's
    (lower-case names), then `set` these."""

    drop: tuple[str, ...]
    set: Mapping[str, str]


#: Set by the tracing handler around the chain (None: tracing is off).  The chain
#: puts them in the request the plugins and the upstream get.
TRACE_HEADERS: contextvars.ContextVar[TraceHeaders | None] = contextvars.ContextVar(
    "coproc_trace_headers", default=None)
_SAFE = re.compile(rf"[A-Za-z0-9_.:/+=@-]{{1,{MAX_LENGTH}}}")


def request_id(headers: Headers) -> tuple[str, bool]:
    """(the request's id, whether it is the client's own)."""
    given = headers.get(HEADER)
    if given and _SAFE.fullmatch(given):
        return given, True
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}", False


# A generated id is a per-process random prefix and a counter: unique across
# processes and restarts, and free per request (os.urandom per request cost 5 %
# of the gateway's CPU samples under load: a getrandom syscall each).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def with_request_id(headers: Headers, rid: str,
                    trace: TraceHeaders | None = None) -> CIMultiDict[str]:
    """A copy of `headers` whose X-Request-Id is `rid` (and no other one), with `trace`'s
    context instead of the client's."""
    out: CIMultiDict[str] = CIMultiDict(headers)
    out[HEADER] = rid
    if trace is not None:
        for name in trace.drop:
            out.popall(name, None)
        out.update(trace.set)
    return out
