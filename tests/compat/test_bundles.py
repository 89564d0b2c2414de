"""Extracted Tyk bundles under middleware_path/bundles: the manifest defines the hooks."""

from __future__ import annotations

import json
import textwrap
from typing import Any

from integration.harness import api_def, echo_header

TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"


def _bundle(value: str) -> dict[str, str]:
    """A two-file bundle whose pre hook imports a bundle-local helper module."""
    manifest = {"file_list": ["middleware.py", "helpers.py"],
                "custom_middleware": {"driver": "python", "pre": [{"name": "MyPreHook"}]}}
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
    """1. Two APIs name bundles that both ship middleware.py/helpers.py with MyPreHook.
    2. A third API names a bundle that is not extracted.
    3. Each bundled API's upstream sees its own bundle's header; the third answers 500.
    """
    plugins = {}
    for api_id, value in (("one", "first"), ("two", "second")):
        for name, text in _bundle(value).items():
            plugins[f"bundles/{api_id}_{api_id}.zip/{name}"] = text
    apis = {api_id: api_def(api_id, f"/{api_id}/", echo_upstream.url,
                            custom_middleware_bundle=f"{api_id}.zip", custom_middleware={})
            for api_id in ("one", "two", "missing")}
    gw = coproc_factory(apis, plugins)
    for api_id, value in (("one", "first"), ("two", "second")):
        echo = gw.expect(gw.get(f"/{api_id}/x"), 200).json()
        assert echo_header(echo, "X-Bundle") == value
    missing = gw.get("/missing/x")
    assert missing.status == 500 and missing.json() == {"error": "Middleware error"}
    report = gw.worker()["plugins"]
    assert report["one"]["ok"] and report["two"]["ok"] and not report["missing"]["ok"]
