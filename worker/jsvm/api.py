"""Tyk's JSVM API functions, as Python callables a QuickJS context exposes as globals.

`TykMakeHttpRequest`, `TykBatchRequest`, `TykGetKeyData`, `TykSetKeyData`
(`log`, `rawlog` and the base64 helpers are JS, in the prelude of
worker/jsvm/engine.py; their log lines come here through `log_sink`).  Every
function takes and returns strings, as Tyk's do (objects are passed as JSON text).  The HTTP and
key functions are host calls: the gateway does the work (the worker may have no
network under the sandbox) and checks the destination against
`coproc.jsvm.outbound_allow` (gateway/outbound.py).  A failure answers what
Tyk's answers (undefined, `TykGetKeyData`: "{}") and is logged, never thrown.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from ipc.jsvm_store import store_problem
from worker import tyk_api
from worker.hostcalls import HostCallError, HostCalls

__all__ = ["BATCH_OP", "HTTP_OP", "KEY_GET_OP", "KEY_SET_OP", "host_functions", "log_sink"]

log = logging.getLogger("worker.jsvm")

#: Host call ops (ipc.protocol.HOST_OPS) that JS functions send.
HTTP_OP = "jsvm_http"
BATCH_OP = "jsvm_batch"
KEY_GET_OP = "jsvm_get_key"
KEY_SET_OP = "jsvm_set_key"
STORE_OP = "jsvm_store"

#: The Python side of the prelude's TykStorage* functions (worker/jsvm/engine.py).
STORAGE_FUNCTION = "__coproc_storage"
#: Tyk's bound on one storage operation.
_STORE_TIMEOUT_S = 2.0

#: The worker's wait for an outbound answer: the gateway's own deadline
#: (`coproc.jsvm.outbound_timeout_ms`) plus a margin for the two hops.
_HOP_MARGIN_S = 1.0


def log_sink(api_id: str) -> Callable[[str, str], None]:
    """Where `log` (with the API's name) and `rawlog` (as given) messages go."""
    def sink(level: str, message: str) -> None:
        tyk_api.TykGateway.log(message if level == "raw" else f"[jsvm {api_id}] {message}")
    return sink


def host_functions(api_id: str, outbound_timeout_s: float) -> dict[str, Callable[..., Any]]:
    """The JS globals of one API's context; host calls carry `api_id`."""

    def host() -> HostCalls:
        current = tyk_api.current_host()
        if current is None:
            raise HostCallError("the worker is not connected to a gateway")
        return current

    def say(message: Any, level: str = "info") -> None:
        tyk_api.TykGateway.log(f"[jsvm {api_id}] {message}", level)

    def request(op: str, fields: dict[str, Any]) -> str | None:
        try:
            reply = host().request(op, {"api_id": api_id, **fields},
                                   timeout_s=outbound_timeout_s + _HOP_MARGIN_S)
        except HostCallError as exc:
            say(f"{op} failed: {exc}", "error")
            return None
        text = bytes(reply.get("value", b"")).decode("utf-8", "replace")
        if op == HTTP_OP and reply.get("found") is False:  # refused or failed: the why
            say(f"TykMakeHttpRequest failed: {text}", "error")
            return None
        return text

    def make_http_request(spec: Any = None) -> str | None:
        if spec is None or str(spec) == "undefined":
            return None
        return request(HTTP_OP, {"value": str(spec).encode()})

    def batch_request(spec: Any = None) -> str | None:
        return request(BATCH_OP, {"value": str(spec).encode()})

    def get_key_data(key: Any = "", target_api: Any = "") -> str:
        got = request(KEY_GET_OP, {"key": str(key), "name": str(target_api or "")})
        return got or "{}"

    def set_key_data(key: Any = "", session: Any = "", suppress_reset: Any = "") -> None:
        try:
            json.loads(str(session))
        except ValueError:
            say("TykSetKeyData: the session is not JSON text (use JSON.stringify)", "error")
            return
        request(KEY_SET_OP, {"key": str(key), "value": str(session).encode(),
                             "level": "1" if str(suppress_reset) == "1" else "0"})

    def storage(action: Any = "", key: Any = "", value: Any = "", ttl: Any = 0) -> str:
        """One TykStorage* call: JSON {"result": …}, or {"error": …} for the prelude
        to throw (Tyk's storage functions throw, so an outage never reads as absent)."""
        data = str(value).encode("utf-8", "surrogateescape")
        problem = store_problem(str(key), data)
        if not problem:
            try:
                reply = host().request(STORE_OP, {
                    "api_id": api_id, "name": str(action), "key": str(key), "value": data,
                    "ttl": _clamp_ttl(ttl)}, timeout_s=_STORE_TIMEOUT_S + _HOP_MARGIN_S)
            except HostCallError as exc:
                problem = f"JSVM storage is not available: {exc}"
            else:
                text = bytes(reply.get("value", b"")).decode("utf-8", "replace")
                if reply.get("found") is not False:
                    return text
                problem = text
        return json.dumps({"error": problem})

    return {
        "TykMakeHttpRequest": make_http_request,
        "TykBatchRequest": batch_request,
        "TykGetKeyData": get_key_data,
        "TykSetKeyData": set_key_data,
        STORAGE_FUNCTION: storage,
    }


def _clamp_ttl(value: Any) -> int:
    """A TTL in seconds as the wire's int64 carries it (the prelude passed an integer)."""
    try:
        return max(0, min(int(value), (1 << 62)))
    except (TypeError, ValueError, OverflowError):
        return 0
