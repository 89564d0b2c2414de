"""Built-in key auth as Tyk's AuthConfig places the key, `strip_auth_data`, and the
`disable_rate_limit`/`disable_quota` switches, through a real instance.

Tyk's getAuthToken (gateway/middleware.go): the header unless `disable_header`,
then a query parameter (`use_param`) and a cookie (`use_cookie`) replace the key
when they hold one, named by `param_name`/`cookie_name` or like the header;
`auth_configs.authToken` wins over the older `auth`.  StripAuth runs after the
post_key_auth hooks, before the post hooks and the upstream.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import pytest
from integration.harness import Instance, api_def, echo_header, hook

SECRET = "key-location-secret"
ADMIN = {"X-Tyk-Authorization": SECRET}
KEY = "location-key-1"  # generous: for where the key is
TIGHT = "location-key-2"  # 1 request a minute, 2 in all
RATE_ONLY = "location-key-3"  # 1 request a minute, no quota

SAW = textwrap.dedent('''
    from tyk.decorators import *

    def _seen(request):
        return ",".join(request.get_header(n) or "-" for n in ("X-Api-Key", "Cookie")) + \\
            "|" + (request.object.params.get("X-Api-Key") or "-")

    @Hook
    def SawBeforeStrip(request, session, spec):
        request.add_header("X-Pka-Saw", _seen(request))
        return request, session

    @Hook
    def SawAfterStrip(request, session, spec):
        request.add_header("X-Post-Saw", _seen(request))
        return request, session
''')


def _api(api_id: str, **fields: Any) -> dict[str, Any]:
    return api_def(api_id, f"/{api_id}/", "", use_keyless=False, **fields)


APIS: dict[str, dict[str, Any]] = {
    "param": _api("param", auth={"auth_header_name": "x-api-key", "use_param": True}),
    "pname": _api("pname", auth={"use_param": True, "param_name": "api_key"}),
    "cookie": _api("cookie", auth={"use_cookie": True, "cookie_name": "tok"}),
    "nohdr": _api("nohdr", auth={"disable_header": True, "use_param": True}),
    "configs": _api("configs", auth={"auth_header_name": "X-Old"},
                    auth_configs={"authToken": {"auth_header_name": "X-Key"}}),
    "strip": _api("strip", strip_auth_data=True,
                  auth={"auth_header_name": "X-Api-Key", "use_param": True, "use_cookie": True},
                  post_key_auth=[hook("SawBeforeStrip", "saw/middleware.py")],
                  post=[hook("SawAfterStrip", "saw/middleware.py")]),
    "nolimit": _api("nolimit", disable_rate_limit=True, disable_quota=True),
    "norate": _api("norate", disable_rate_limit=True),
    "limited": _api("limited"),
}


@pytest.fixture(scope="module")
def gw(module_coproc_factory: Any, echo_upstream: Any) -> Instance:
    apis = {name: {**api, "proxy": {**api["proxy"], "target_url": echo_upstream.url}}
            for name, api in APIS.items()}
    instance: Instance = module_coproc_factory(apis, {"saw/middleware.py": SAW},
                                               {"secret": SECRET})
    rights = {name: {"api_id": name, "api_name": name, "versions": ["Default"]}
              for name in APIS}
    for key, rate, quota in ((KEY, 1000, -1), (TIGHT, 1, 2), (RATE_ONLY, 1, -1)):
        session = {"org_id": "default", "rate": rate, "per": 60, "quota_max": quota,
                   "quota_renewal_rate": 3600, "access_rights": rights}
        instance.expect(instance.request("POST", f"/tyk/keys/{key}", ADMIN,
                                         json.dumps(session).encode()), 200)
    return instance


def test_a_key_in_a_query_parameter_named_like_the_header(gw: Instance) -> None:
    gw.expect(gw.get(f"/param/x?x-api-key={KEY}"), 200)
    gw.expect(gw.get("/param/x", {"x-api-key": KEY}), 200)
    gw.expect(gw.get("/param/x?x-api-key="), 401)  # an empty parameter is no key


def test_a_key_in_a_named_parameter_or_cookie(gw: Instance) -> None:
    gw.expect(gw.get(f"/pname/x?api_key={KEY}"), 200)
    gw.expect(gw.get(f"/pname/x?Authorization={KEY}"), 401)  # not that parameter
    gw.expect(gw.get("/cookie/x", {"Cookie": f"a=1; tok={KEY}; b=2"}), 200)
    gw.expect(gw.get("/cookie/x", {"Cookie": f"tokx={KEY}"}), 401)


def test_header_switched_off_and_auth_configs_first(gw: Instance) -> None:
    gw.expect(gw.get("/nohdr/x", {"Authorization": KEY}), 401)
    gw.expect(gw.get(f"/nohdr/x?Authorization={KEY}"), 200)  # unnamed: "Authorization"
    gw.expect(gw.get("/configs/x", {"X-Key": KEY}), 200)
    gw.expect(gw.get("/configs/x", {"X-Old": KEY}), 401)


def test_strip_auth_data_after_the_post_key_auth_hooks(gw: Instance) -> None:
    """post_key_auth still sees the credential; post hooks and the upstream do not."""
    # Parameter names are case-sensitive (Go's url.Values): this one is the header's.
    resp = gw.get(f"/strip/x?X-Api-Key={KEY}&keep=1",
                  {"X-Api-Key": KEY, "Cookie": f"X-Api-Key={KEY}; other=2"})
    echo = gw.expect(resp, 200).json()
    assert echo_header(echo, "X-Pka-Saw") == f"{KEY},X-Api-Key={KEY}; other=2|{KEY}"
    assert echo_header(echo, "X-Post-Saw") == "-,other=2|-"
    assert echo_header(echo, "X-Api-Key") is None
    assert echo_header(echo, "Cookie") == "other=2"
    assert echo["query"] == {"keep": ["1"]}


def test_disabled_rate_limit_and_quota_are_not_counted(gw: Instance) -> None:
    """Each switch lifts its own limit, and what it lifts is not counted either."""
    for _ in range(3):
        gw.expect(gw.get("/nolimit/x", {"Authorization": TIGHT}), 200)
    gw.expect(gw.get("/norate/x", {"Authorization": TIGHT}), 200)
    gw.expect(gw.get("/norate/x", {"Authorization": TIGHT}), 200)
    resp = gw.expect(gw.get("/norate/x", {"Authorization": TIGHT}), 403)
    assert resp.json() == {"error": "Quota exceeded"}
    for _ in range(3):
        gw.expect(gw.get("/norate/x", {"Authorization": RATE_ONLY}), 200)
    gw.expect(gw.get("/limited/x", {"Authorization": RATE_ONLY}), 200)
    gw.expect(gw.get("/limited/x", {"Authorization": RATE_ONLY}), 429)
