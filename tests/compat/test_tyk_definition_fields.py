"""Issue 13 items 4 and 5: definitions as Tyk's file loader takes them.

* item 4: a definition without `api_id` is served (Tyk's file loader accepts
  it; its id is ""); two such files collide and the error says so;
* item 5: the form id extractor named with Tyk's `extractor_config.param_name`
  (the shape of Tyk's own Python id-extractor test) caches the session the
  auth plugin made, so the plugin runs once for one credential.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from integration.harness import api_def, echo_header, hook

from config.apidef import load_api_definitions
from config.gateway import GatewayConfig
from config.reader import ConfigError

TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"

PRE_PLUGIN = TYK_IMPORTS + textwrap.dedent('''
    @Hook
    def MarkPre(request, session, spec):
        request.add_header("X-Api-Id", "[" + spec.get("APIID", "?") + "]")
        return request, session
''')

# Tyk's coprocess_id_extractor_python_test.go form case, as a plugin file.
FORM_AUTH_PLUGIN = TYK_IMPORTS + textwrap.dedent('''
    import time
    from urllib import parse

    counter = 0

    @Hook
    def MyAuthHook(request, session, metadata, spec):
        global counter
        counter = counter + 1
        auth_param = parse.parse_qs(request.object.body).get("auth")
        if auth_param and auth_param[0] == "valid_token" and counter < 2:
            session.rate = 1000.0
            session.per = 1.0
            session.id_extractor_deadline = int(time.time()) + 60
            metadata["token"] = "valid_token"
        return request, session, metadata
''')


def _without_api_id(definition: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in definition.items() if k != "api_id"}


def test_a_definition_without_api_id_is_served(coproc_factory: Any, echo_upstream: Any) -> None:
    """1. An API definition file has no api_id; its pre hook reports the API id it sees.
    2. The API is served and its hook runs, with the id "" as in Tyk.
    """
    definition = _without_api_id(api_def("x", "/noid/", echo_upstream.url,
                                         pre=[hook("MarkPre", "noid/middleware.py")]))
    gw = coproc_factory({"noid": definition}, {"noid/middleware.py": PRE_PLUGIN})
    echo = gw.expect(gw.get("/noid/a"), 200).json()
    assert echo_header(echo, "X-Api-Id") == "[]"


def test_two_definitions_without_api_id_collide_with_a_clear_error(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    apps.mkdir()
    for name in ("a", "b"):
        definition = _without_api_id(api_def("x", f"/{name}/", "http://127.0.0.1:9/"))
        (apps / f"{name}.json").write_text(json.dumps(definition))
    cfg = GatewayConfig(path=tmp_path / "coproc.json", app_path=apps, middleware_path=tmp_path)
    with pytest.raises(ConfigError, match=r"b\.json.*api_id.*neither file has an api_id"):
        load_api_definitions(cfg)


@pytest.mark.parametrize("field", ["param_name", "form_param_name"])
def test_form_id_extractor_with_tyks_param_name(coproc_factory: Any, echo_upstream: Any,
                                                field: str) -> None:
    """1. A protected API: auth_check plugin (authorises only its first call) and a form
       id extractor on the `auth` field, named `param_name` as in Tyk.
    2. Three POSTs with auth=valid_token all pass: the plugin ran once, the session
       cached under the extracted id served the others.
    3. Another credential is refused (the plugin runs and no longer authorises).
    """
    middleware = {"driver": "python",
                  "auth_check": {"name": "MyAuthHook", "path": "idx/middleware.py"},
                  "id_extractor": {"extract_from": "form", "extract_with": "value",
                                   "extractor_config": {field: "auth"}}}
    definition = api_def("idx", "/idx/", echo_upstream.url, use_keyless=False,
                         enable_coprocess_auth=True, custom_middleware=middleware)
    gw = coproc_factory({"idx": definition}, {"idx/middleware.py": FORM_AUTH_PLUGIN})
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for _ in range(3):
        gw.expect(gw.request("POST", "/idx/a", form, b"auth=valid_token&x=1"), 200)
    assert gw.request("POST", "/idx/a", form, b"auth=other").status == 403
