"""Issue 13 item 9 (APIs): Tyk's /tyk/apis for file-based setups.

Definitions written through the admin API are validated with the loader's
messages, stored atomically as `<app_path>/<api_id>.json`, and served after
`/tyk/reload`.
"""

from __future__ import annotations

import json
from typing import Any

from integration.harness import api_def, poll

SECRET = "apis-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}


def test_apis_written_through_the_admin_api_are_served_after_reload(
        coproc_factory: Any, echo_upstream: Any) -> None:
    """1. POST a new definition: Tyk's answer; the file is app_path/<api_id>.json.
    2. It is not served before /tyk/reload, and is after.
    3. An invalid body is refused with the loader's message, a clashing listen path too;
       a PUT whose body names another api_id is refused; nothing is written.
    4. PUT changes it (served after reload); DELETE removes the file and, after reload,
       the route.
    """
    gw = coproc_factory({"base": api_def("base", "/base/", echo_upstream.url)}, {},
                        {"secret": SECRET})
    # Tyk's /tyk/health as Tyk answers with its health counters off (Coproc keeps none).
    health = gw.expect(gw.request("GET", "/tyk/health?api_id=base", ADMIN), 400)
    assert health.json() == {"status": "error",
                             "message": "Health checks are not enabled for this node"}
    gw.expect(gw.request("GET", "/tyk/health?api_id=base"), 403)
    apps = gw.base / "apps"
    new = api_def("added", "/added/", echo_upstream.url)
    reply = gw.expect(gw.request("POST", "/tyk/apis", ADMIN, json.dumps(new).encode()), 200)
    assert reply.json() == {"key": "added", "status": "ok", "action": "added"}
    assert json.loads((apps / "added.json").read_text())["proxy"]["listen_path"] == "/added/"
    assert gw.get("/added/x").status == 404
    gw.expect(gw.request("GET", "/tyk/reload", ADMIN), 200)
    poll("the added API is served", lambda: gw.get("/added/x").status == 200, 30)

    bad = api_def("bad", "no-slash", echo_upstream.url)
    resp = gw.expect(gw.request("POST", "/tyk/apis", ADMIN, json.dumps(bad).encode()), 400)
    message = resp.json()["message"]
    assert "bad.json" in message and "proxy.listen_path" in message and "Fix:" in message
    clash = api_def("clash", "/added/", echo_upstream.url)
    resp = gw.expect(gw.request("POST", "/tyk/apis", ADMIN, json.dumps(clash).encode()), 400)
    assert "listen_path" in resp.json()["message"]
    resp = gw.expect(gw.request("PUT", "/tyk/apis/added", ADMIN, json.dumps(clash).encode()),
                     400)
    assert "does not match" in resp.json()["message"]
    assert not (apps / "bad.json").exists() and not (apps / "clash.json").exists()
    assert sorted(a["api_id"] for a in gw.expect(gw.request("GET", "/tyk/apis", ADMIN),
                                                 200).json()) == ["added", "base"]

    moved = api_def("added", "/moved/", echo_upstream.url)
    reply = gw.expect(gw.request("PUT", "/tyk/apis/added", ADMIN, json.dumps(moved).encode()),
                      200)
    assert reply.json()["action"] == "modified"
    got = gw.expect(gw.request("GET", "/tyk/apis/added", ADMIN), 200).json()
    assert got["proxy"]["listen_path"] == "/moved/"
    gw.expect(gw.request("GET", "/tyk/reload", ADMIN), 200)
    poll("the moved API is served", lambda: gw.get("/moved/x").status == 200, 30)

    reply = gw.expect(gw.request("DELETE", "/tyk/apis/added", ADMIN), 200)
    assert reply.json() == {"key": "added", "status": "ok", "action": "deleted"}
    assert not (apps / "added.json").exists() and not list(apps.glob(".*tmp"))
    gw.expect(gw.request("DELETE", "/tyk/apis/added", ADMIN), 404)
    gw.expect(gw.request("GET", "/tyk/reload", ADMIN), 200)
    poll("the deleted API is gone", lambda: gw.get("/moved/x").status == 404, 30)
    gw.expect(gw.get("/base/x"), 200)
    gw.expect(gw.request("GET", "/tyk/apis", {"X-Tyk-Authorization": "wrong"}), 403)
