"""Issue 13 item 6: one bad API definition never takes down every API.

Tyk skips a definition it cannot load and serves the others; so does Coproc,
and it names the broken one (log, `/hello`, `coproc status`).  `--strict`
keeps the fail-fast start for CI pipelines.  A reload is refused only when it
would take a serving API out of service; a reload that fixes a broken
definition serves it.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

from integration.harness import (
    REPO_ROOT,
    Instance,
    api_def,
    coproc_command,
    echo_header,
    hook,
    new_base_dir,
    remove_base,
    write_instance,
)

PLUGIN = """\
from tyk.decorators import *
from gateway import TykGateway as tyk


@Hook
def TagPre(request, session, spec):
    request.add_header("X-Tag", spec["APIID"])
    return request, session
"""


def _ctl(inst: Instance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*coproc_command(), *args, "--config", str(inst.config_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
                          stdin=subprocess.DEVNULL)


def _write(inst: Instance, name: str, definition: dict[str, Any]) -> None:
    (inst.base / "apps" / f"{name}.json").write_text(json.dumps(definition))


def test_one_broken_definition_among_good_ones(coproc_factory: Any,
                                               echo_upstream: Any) -> None:
    """1. Four files: two good (one with a plugin), one with a bad listen path (api_id
       "c", its plugin present), one without api_id nor target_url.
    2. `coproc serve` starts; the good APIs serve, their plugins run.
    3. /hello names `api:c` and `apidef:d.json` as failing with the file's base name
       and field, no path; /coproc/status has the full message; `coproc status`
       lists both; the log names each once.
    4. A reload that would break the serving API `b` is refused, naming file and
       field; `b` keeps serving.
    5. A reload that fixes `c` serves it (and its plugin); `d` stays named.
    """
    url = echo_upstream.url
    tag = [hook("TagPre", "tag/mw.py")]
    fixed_c = api_def("c", "/c/", url, pre=tag)
    gw = coproc_factory({
        "a": api_def("a", "/a/", url, pre=tag),
        "b": api_def("b", "/b/", url),
        "c": api_def("c", "c-without-slash", url, pre=tag),
        "d": {"name": "no id", "proxy": {"listen_path": "/d/"}},
    }, {"tag/mw.py": PLUGIN})

    echo = gw.expect(gw.get("/a/x"), 200).json()
    assert echo_header(echo, "X-Tag") == "a"
    gw.expect(gw.get("/b/x"), 200)
    assert gw.get("/c/x").status == 404

    hello = gw.expect(gw.hello(), 200)
    details = hello.json()["details"]
    assert details["api:c"]["status"] == "fail"
    assert details["api:c"]["output"] == \
        "definition c.json not served: field 'proxy.listen_path' invalid"
    assert details["apidef:d.json"]["output"] == \
        "definition d.json not served: field 'proxy.target_url' invalid"
    assert details["worker"]["status"] == "pass"
    assert hello.json()["status"] == "warn"
    assert str(gw.base) not in hello.text()
    full = gw.expect(gw.status(), 200).json()["components"]["api:c"]
    assert str(gw.base / "apps" / "c.json") in full["error"] and "Fix:" in full["error"]

    status = _ctl(gw, "status")
    assert status.returncode == 0, status.stderr
    assert "API definition api:c not served" in status.stdout
    assert "c.json: field 'proxy.listen_path'" in status.stdout
    assert "API definition apidef:d.json not served" in status.stdout
    assert gw.logs(200_000).count("API definition not served (api:c)") == 1

    _write(gw, "b", api_def("b", "/b/", "ftp://nowhere/"))
    refused = _ctl(gw, "reload")
    assert refused.returncode == 1, refused.stdout
    assert "b.json" in refused.stderr and "proxy.target_url" in refused.stderr
    assert "serving now" in refused.stderr
    gw.expect(gw.get("/b/x"), 200)

    _write(gw, "b", api_def("b", "/b/", url))
    _write(gw, "c", fixed_c)
    done = _ctl(gw, "reload")
    assert done.returncode == 0, done.stderr
    echo = gw.expect(gw.get("/c/x"), 200).json()
    assert echo_header(echo, "X-Tag") == "c"
    details = gw.expect(gw.hello(), 200).json()["details"]
    assert "api:c" not in details and details["apidef:d.json"]["status"] == "fail"
    status = _ctl(gw, "status", "--json")
    broken = json.loads(status.stdout)["definitions"]["broken"]
    assert [b["component"] for b in broken] == ["apidef:d.json"]


def test_strict_exits_78_naming_file_and_field(echo_upstream: Any) -> None:
    base = new_base_dir()
    try:
        config = write_instance(base, {
            "good": api_def("good", "/good/", echo_upstream.url),
            "bad": api_def("bad", "no-leading-slash/", echo_upstream.url),
        }, {})
        proc = subprocess.run([*coproc_command(), "serve", "--strict", "--config", str(config)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 78, (proc.returncode, proc.stderr)
        assert str(base / "apps" / "bad.json") in proc.stderr, proc.stderr
        assert "proxy.listen_path" in proc.stderr and "Fix:" in proc.stderr
    finally:
        remove_base(base)


def test_api_writes_follow_the_same_rule(coproc_factory: Any, echo_upstream: Any) -> None:
    """1. `base` serves; `zz.json` is broken (it wants /base/ too).
    2. POST of an unrelated API succeeds: a file already broken blocks no write.
    3. A PUT that makes `base` invalid is refused with the loader's message; so is a
       POST whose file would come first and take /base/ (base would stop).
    """
    url = echo_upstream.url
    secret = {"X-Tyk-Authorization": "writes-secret"}
    gw = coproc_factory({"base": api_def("base", "/base/", url),
                         "zz": api_def("zz", "/base/", url)}, {}, {"secret": "writes-secret"})
    assert gw.expect(gw.hello(), 200).json()["details"]["apidef:zz.json"]["status"] == "fail"

    new = json.dumps(api_def("new", "/new/", url)).encode()
    gw.expect(gw.request("POST", "/tyk/apis", secret, new), 200)
    bad = json.dumps(api_def("base", "base-no-slash", url)).encode()
    message = gw.expect(gw.request("PUT", "/tyk/apis/base", secret, bad), 400).json()["message"]
    assert "base.json" in message and "proxy.listen_path" in message
    taker = json.dumps(api_def("aaa", "/base/", url)).encode()
    message = gw.expect(gw.request("POST", "/tyk/apis", secret, taker), 400).json()["message"]
    assert "base.json" in message and "also used by" in message
    assert not (gw.base / "apps" / "aaa.json").exists()
    gw.expect(gw.request("GET", "/tyk/reload", secret), 200)
    gw.expect(gw.get("/base/x"), 200)
