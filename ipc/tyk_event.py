"""Tyk's event wrapper: what an event handler plugin (Python `@Event`, a gRPC
server's DispatchEvent) gets for an event, built from Coproc's event fields.

Tyk sends handlers `{"message": EventMessage, "handler_name", "spec"}`
(gateway/coprocess_events.go), where `EventMessage` is `{"Type", "Meta",
"TimeStamp"}` with Go's field names, `Meta` the event's metadata struct
(`Message` and `OriginatingRequest`, and for key failures `Path`, `Origin`,
`Key`), and `TimeStamp` Go's `Time.String()` of the local time.  Tyk's Python
handler gets that JSON object as attributes (`event.message["Meta"]["Key"]`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

__all__ = ["tyk_event"]

#: Coproc's event fields that Tyk's key-failure metadata has, by Go name.
_KEY_FAILURE = {"Path": "path", "Origin": "origin", "Key": "key"}


def tyk_event(fields: Mapping[str, Any], handler: str,
              spec: Mapping[str, Any]) -> dict[str, Any]:
    """Tyk's wrapper of one event: `fields` are Coproc's (`event`, `api_id`,
    `timestamp`, `message`, and `key`… for key failures)."""
    meta: dict[str, Any] = {"Message": str(fields.get("message", "")),
                            "OriginatingRequest": ""}
    if "key" in fields:
        meta.update({go: str(fields.get(ours, "")) for go, ours in _KEY_FAILURE.items()})
    return {"message": {"Type": str(fields.get("event", "")), "Meta": meta,
                        "TimeStamp": _go_time(fields.get("timestamp"))},
            "handler_name": handler,
            "spec": {"APIID": spec.get("APIID", fields.get("api_id", "")),
                     "OrgID": spec.get("OrgID", "")}}


def _go_time(timestamp: Any) -> str:
    """Go's Time.String() of a local time: "2006-01-02 15:04:05 -0700 MST"."""
    try:
        seconds = float(timestamp)
    except (TypeError, ValueError):
        seconds = time.time()
    moment = datetime.fromtimestamp(seconds).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S %z ") + (moment.tzname() or "")
