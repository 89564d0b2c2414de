"""Bundles extracted by Tyk nodes under middleware_path/bundles: the manifest defines the hooks."""

from __future__ import annotations

import hashlib
import json
import textwrap
from typing import Any

from integration.harness import api_def, echo_header


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"


def _bundle(value: str) -> dict[str, str]:
    """A two-file bundle whose pre hook imports a bundle-local helper module."""
    # A manifest hook's path is not a file Coproc must find: Tyk imports middleware.py.
    manifest = {"file_list": ["middleware.py", "helpers.py"],
                "custom_middleware": {"driver": "python", "pre": [
                    {"name": "MyPreHook", "path": "not/here/middleware.py"}]}}
    return {
        "manifest.json": json.dumps(manifest),
        "helpers.py": f"VALUE = {value!r}\n",
        "middleware.py": TYK_IMPORTS + textwrap.dedent('''
            import helpers

            @Hook
            def MyPreHook(request, session, metadata, spec):
                request.add_header("X-Bundle", helpers.VALUE)
                return request, session, metadata
        '''),
    }


def test_bundle_hooks_run_and_bundles_do_not_collide(coproc_factory: Any,
                                                     echo_upstream: Any) -> None:
    """1. Two APIs name bundles that both ship middleware.py/helpers.py with MyPreHook,
       extracted as Tyk 5 (bundles/<md5 of name>) and Tyk 3 (bundles/<api_id>_<md5>) did.
    2. The definitions' own hooks have paths that do not exist here (issue 13 item 3).
    3. A third API names a bundle that is not extracted.
    4. Each bundled API's upstream sees its own bundle's header; the third answers 500.
    """
    plugins = {}
    directories = {"one": md5("one.zip"), "two": f"two_{md5('two.zip')}"}
    for api_id, value in (("one", "first"), ("two", "second")):
        for name, text in _bundle(value).items():
            plugins[f"bundles/{directories[api_id]}/{name}"] = text
    stale = {"driver": "python", "pre": [{"name": "Old", "path": "/opt/tyk-gateway/mw/x.py"}]}
    apis = {api_id: api_def(api_id, f"/{api_id}/", echo_upstream.url,
                            custom_middleware_bundle=f"{api_id}.zip", custom_middleware=stale)
            for api_id in ("one", "two", "missing")}
    gw = coproc_factory(apis, plugins)
    for api_id, value in (("one", "first"), ("two", "second")):
        echo = gw.expect(gw.get(f"/{api_id}/x"), 200).json()
        assert echo_header(echo, "X-Bundle") == value
    missing = gw.get("/missing/x")
    assert missing.status == 500 and missing.json() == {"error": "Middleware error"}
    report = gw.worker()["plugins"]
    assert report["one"]["ok"] and report["two"]["ok"] and not report["missing"]["ok"]
    assert "missing.zip" in report["missing"]["error"]
