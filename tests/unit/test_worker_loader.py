"""Plugin loading: one namespace per plugin set, bundles, and failures that stay local.

Plugins are real files under tmp_path, API definitions and the gateway config
are read by the real `config` loaders, and hooks are called directly.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config import load_api_definitions, load_gateway_config
from ipc.protocol import PLUGIN_REPORT, ErrorCode
from ipc.schema import check
from worker.loader import HookTable, LookupFailed, load_plugins
from worker.objects import MiniRequestObject, SessionState
from worker.request import HookRequest
from worker.tyk_api import install_plugin_api


@pytest.fixture(autouse=True)
def plugin_api() -> Iterator[None]:
    undo = install_plugin_api(None)
    try:
        yield
    finally:
        undo()


def api_def(api_id: str, **extra: Any) -> dict[str, Any]:
    return {"api_id": api_id, "name": api_id,
            "proxy": {"listen_path": f"/{api_id}/", "target_url": "http://127.0.0.1:9/"},
            **extra}


def hooks(*entries: tuple[str, str, str]) -> dict[str, Any]:
    """custom_middleware from (phase, name, path) triples."""
    middleware: dict[str, Any] = {"driver": "python"}
    for phase, name, path in entries:
        entry = {"name": name, "path": path} if path else {"name": name}
        if phase == "auth_check":
            middleware[phase] = entry
        else:
            middleware.setdefault(phase, []).append(entry)
    return middleware


def load(tmp_path: Path, apis: list[dict[str, Any]], files: dict[str, str]) -> HookTable:
    """Write config, API definitions and plugin files; load the plugins."""
    (tmp_path / "apps").mkdir()
    for name, text in files.items():
        path = tmp_path / "middleware" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    (tmp_path / "middleware").mkdir(exist_ok=True)
    for api in apis:
        (tmp_path / "apps" / f"{api['api_id']}.json").write_text(json.dumps(api))
    (tmp_path / "coproc.json").write_text(json.dumps({"coproc": {"run_dir": "run"}}))
    cfg = load_gateway_config(tmp_path / "coproc.json")
    table = load_plugins(cfg, load_api_definitions(cfg))
    check(table.report(), PLUGIN_REPORT)
    return table


def call3(table: HookTable, api_id: str, name: str) -> HookRequest:
    request = HookRequest(MiniRequestObject())
    table.find(api_id, name).func(request, SessionState(), {})
    return request


PLUGIN_WITH_HELPER = """
    from tyk.decorators import *
    from gateway import TykGateway as tyk
    import helpers

    @Hook
    def MyPreHook(request, session, spec):
        request.add_header("X-Set", helpers.NAME)
        return request, session

    @Hook
    def Lazy(request, session, spec):
        from . import helpers as local  # relative imports work after loading too
        request.add_header("X-Lazy", local.NAME)
        return request, session
"""


def test_two_plugin_sets_with_the_same_names_are_isolated(tmp_path: Path) -> None:
    table = load(tmp_path, [
        api_def("one", custom_middleware=hooks(("pre", "MyPreHook", "one/middleware.py"),
                                               ("pre", "Lazy", "one/middleware.py"))),
        api_def("two", custom_middleware=hooks(("pre", "MyPreHook", "two/middleware.py"))),
    ], {
        "one/middleware.py": PLUGIN_WITH_HELPER, "one/helpers.py": "NAME = 'one'\n",
        "two/middleware.py": PLUGIN_WITH_HELPER, "two/helpers.py": "NAME = 'two'\n",
    })
    report = table.report()
    assert report["one"]["ok"] and report["two"]["ok"], report
    assert report["one"]["hooks"] == ["Lazy", "MyPreHook"]
    assert call3(table, "one", "MyPreHook").object.set_headers["X-Set"] == "one"
    assert call3(table, "two", "MyPreHook").object.set_headers["X-Set"] == "two"
    assert call3(table, "one", "Lazy").object.set_headers["X-Lazy"] == "one"
    assert call3(table, "two", "Lazy").object.set_headers["X-Lazy"] == "two"
    # the plugin-local module names do not stay global
    assert "helpers" not in sys.modules and "middleware" not in sys.modules
    one = table.find("one", "MyPreHook").func.f
    two = table.find("two", "MyPreHook").func.f
    assert one.__module__ != two.__module__
    assert one.__module__.startswith("coproc_plugins.")


def test_same_file_for_two_apis_loads_twice(tmp_path: Path) -> None:
    counter = """
        from tyk.decorators import *
        import helpers
        helpers.LOADS.append(1)

        @Hook
        def Count(request, session, spec):
            request.add_header("X-Loads", str(len(helpers.LOADS)))
            return request, session
    """
    table = load(tmp_path, [
        api_def("a", custom_middleware=hooks(("pre", "Count", "shared/mw.py"))),
        api_def("b", custom_middleware=hooks(("pre", "Count", "shared/mw.py"))),
    ], {"shared/mw.py": counter, "shared/helpers.py": "LOADS = []\n"})
    assert call3(table, "a", "Count").object.set_headers["X-Loads"] == "1"
    assert call3(table, "b", "Count").object.set_headers["X-Loads"] == "1"


def test_import_failure_is_reported_with_traceback_and_stays_local(tmp_path: Path) -> None:
    broken = """
        from tyk.decorators import *

        def helper():
            raise RuntimeError("boom at import")

        helper()
    """
    good = """
        from tyk.decorators import *

        @Hook
        def Fine(request, session, spec):
            return request, session
    """
    table = load(tmp_path, [
        api_def("bad", custom_middleware=hooks(("pre", "Never", "bad/mw.py"))),
        api_def("good", custom_middleware=hooks(("pre", "Fine", "good/mw.py"))),
    ], {"bad/mw.py": broken, "good/mw.py": good})
    bad = table.report()["bad"]
    assert bad["ok"] is False and bad["hooks"] == []
    first, _, rest = bad["error"].partition("\n")
    assert first == "RuntimeError: boom at import"
    assert "Traceback" in rest and "bad/mw.py" in rest and "in helper" in rest
    assert "importlib" not in rest  # the loader's own frames are cut off
    with pytest.raises(LookupFailed) as failure:
        table.find("bad", "Never")
    assert failure.value.code is ErrorCode.LOAD_FAILED
    assert "boom at import" in failure.value.message
    assert table.report()["good"]["ok"]
    assert call3(table, "good", "Fine").object is not None


@pytest.mark.parametrize(("source", "summary"), [
    ("def broken(:\n    pass\n", "SyntaxError"),
    ("import sys\nsys.exit(3)\n", "SystemExit: 3"),
    ("import no_such_module_anywhere\n", "ModuleNotFoundError"),
])
def test_syntax_error_exit_and_missing_import_are_load_failures(
        tmp_path: Path, source: str, summary: str) -> None:
    table = load(tmp_path, [api_def("x", custom_middleware=hooks(("pre", "H", "x/mw.py")))],
                 {"x/mw.py": source})
    entry = table.report()["x"]
    assert entry["ok"] is False
    assert entry["error"].startswith(summary), entry["error"]
    assert "mw.py" in entry["error"]


BUNDLE_MODULE = """
    from tyk.decorators import *

    @Hook
    def BundlePre(request, session, spec):
        request.add_header("X-Bundle", "{tag}")
        return request, session

    @Hook
    def Unlisted(request, session, spec):
        return request, session

    @Event
    def OnEvent(event, spec):
        pass
"""


def manifest(*names: str, files: tuple[str, ...] = ("middleware.py",)) -> str:
    return json.dumps({"file_list": list(files), "custom_middleware": {
        "driver": "python", "pre": [{"name": n} for n in names]}})


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def test_bundles_use_their_manifest_and_tyk_directories(tmp_path: Path) -> None:
    table = load(tmp_path, [
        api_def("b1", custom_middleware_bundle="first.zip"),
        api_def("b2", custom_middleware_bundle="second.zip"),
        api_def("b3", custom_middleware_bundle="single.zip"),
        api_def("b4", custom_middleware_bundle="absent.zip"),
    ], {
        # Tyk 5: bundles/<md5 of the bundle name>
        f"bundles/{md5('first.zip')}/manifest.json": manifest("BundlePre"),
        f"bundles/{md5('first.zip')}/middleware.py": BUNDLE_MODULE.replace("{tag}", "first"),
        # Tyk 3: bundles/<api_id>_<md5 of the bundle name>
        f"bundles/b2_{md5('second.zip')}/manifest.json": manifest("BundlePre"),
        f"bundles/b2_{md5('second.zip')}/middleware.py": BUNDLE_MODULE.replace("{tag}",
                                                                                 "second"),
        # before 2018: bundles/<api_id>-<bundle name>; a one-file bundle names
        # its module in file_list
        "bundles/b3-single.zip/manifest.json": manifest("BundlePre", files=("plugin.py",)),
        "bundles/b3-single.zip/plugin.py": BUNDLE_MODULE.replace("{tag}", "single"),
    })
    report = table.report()
    for api_id, tag in (("b1", "first"), ("b2", "second"), ("b3", "single")):
        assert report[api_id]["ok"], report[api_id]
        assert call3(table, api_id, "BundlePre").object.set_headers["X-Bundle"] == tag
    assert "Unlisted" in report["b1"]["hooks"]  # any @Hook is callable by name
    assert table.find_event("b1", "OnEvent").name == "OnEvent"
    assert report["b4"]["ok"] is False
    assert "absent.zip" in report["b4"]["error"] and "manifest.json" in report["b4"]["error"]
    with pytest.raises(LookupFailed) as failure:
        table.find("b4", "BundlePre")
    assert failure.value.code is ErrorCode.LOAD_FAILED


def test_missing_hook_is_reported_and_plain_functions_work(tmp_path: Path) -> None:
    module = """
        from tyk.decorators import *

        def Plain(request, session, spec):  # named in the API definition, not decorated
            request.add_header("X-Plain", "1")
            return request, session
    """
    table = load(tmp_path, [api_def("p", custom_middleware=hooks(
        ("pre", "Plain", "p/mw.py"), ("post", "Ghost", "p/mw.py"),
        ("response", "Off", "p/mw.py")))], {"p/mw.py": module})
    entry = table.report()["p"]
    assert entry["ok"] is False and "Ghost" in entry["error"]
    assert call3(table, "p", "Plain").object.set_headers["X-Plain"] == "1"
    with pytest.raises(LookupFailed) as failure:
        table.find("p", "Ghost")
    assert failure.value.code is ErrorCode.NO_SUCH_HOOK
    with pytest.raises(LookupFailed):
        table.find("unknown-api", "Plain")


def test_disabled_hooks_and_inactive_apis_are_skipped(tmp_path: Path) -> None:
    middleware = hooks(("pre", "Gone", "d/mw.py"))
    middleware["pre"][0]["disabled"] = True
    table = load(tmp_path, [
        api_def("d", custom_middleware=middleware),
        api_def("off", active=False, custom_middleware=hooks(("pre", "X", "d/mw.py"))),
    ], {"d/mw.py": "raise RuntimeError('never imported')\n"})
    assert table.report() == {}


def test_star_import_gives_hook_and_event() -> None:
    namespace: dict[str, Any] = {}
    exec("from tyk.decorators import *", namespace)  # what every Tyk plugin does
    assert {"Hook", "Event"} <= set(namespace)
    assert {"Pre", "Post", "PostKeyAuth", "CustomKeyCheck"} <= set(namespace)


def test_a_bundle_list_loads_each_bundle_in_its_own_namespace(tmp_path: Path) -> None:
    """`custom_middleware_bundle: "a.zip,b.zip"` in Tyk 5's list layout
    (bundles/<md5 of the list>/<name without extension>): both modules are
    `middleware.py`, each bundle's hooks come from its own file."""
    root = f"bundles/{md5('a.zip,b.zip')}"
    second = BUNDLE_MODULE.replace("{tag}", "b").replace("BundlePre", "OtherPre")
    table = load(tmp_path, [api_def("m", custom_middleware_bundle="a.zip,b.zip")], {
        f"{root}/a/manifest.json": manifest("BundlePre"),
        f"{root}/a/middleware.py": BUNDLE_MODULE.replace("{tag}", "a"),
        f"{root}/b/manifest.json": manifest("OtherPre"),
        f"{root}/b/middleware.py": second,
    })
    assert table.report()["m"]["ok"], table.report()["m"]
    assert call3(table, "m", "BundlePre").object.set_headers["X-Bundle"] == "a"
    assert call3(table, "m", "OtherPre").object.set_headers["X-Bundle"] == "b"
