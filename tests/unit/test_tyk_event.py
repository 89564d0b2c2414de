"""Tyk's event wrapper for handler plugins, from Coproc's event fields."""

from __future__ import annotations

import re

from ipc.tyk_event import tyk_event


def test_a_key_failure_has_tyks_meta_and_a_go_time_stamp() -> None:
    got = tyk_event({"event": "AuthFailure", "api_id": "a", "timestamp": 1764931425,
                     "message": "Forbidden", "key": "k1"}, "OnFail", {"APIID": "a",
                                                                    "OrgID": "o",
                                                                    "config_data": "{}"})
    assert got["handler_name"] == "OnFail" and got["spec"] == {"APIID": "a", "OrgID": "o"}
    message = got["message"]
    assert message["Type"] == "AuthFailure"
    assert message["Meta"] == {"Message": "Forbidden", "OriginatingRequest": "", "Path": "",
                               "Origin": "", "Key": "k1"}
    # Go's Time.String() of the local time, without its monotonic reading.
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} \S+", message["TimeStamp"])


def test_a_plugins_event_has_the_default_meta() -> None:
    got = tyk_event({"event": "MyEvent", "api_id": "a", "message": "payload"}, "h", {})
    assert got["message"]["Meta"] == {"Message": "payload", "OriginatingRequest": ""}
    assert got["spec"] == {"APIID": "a", "OrgID": ""}
