"""Issue 13 item 1: plugins that ship their libraries in `vendor/` (as Tyk READMEs say).

Real packages from PyPI are installed with `pip install -t <plugin>/vendor` at
test time; the plugins are loaded by the worker's loader in a child process
(compat/plugin_runner.py) and their hooks called after loading, when a library
imports its own submodules lazily.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from compat.plugin_runner import pip_install, run_plugins, write_apis
from integration.harness import (
    api_def,
    echo_header,
    hook,
    launch,
    new_base_dir,
    remove_base,
    write_instance,
)

pytestmark = pytest.mark.timeout(900)

VENDOR_HEAD = textwrap.dedent('''
    import os, sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor"))
    from tyk.decorators import *
    from gateway import TykGateway as tyk
''')

JWT_RS256_PLUGIN = VENDOR_HEAD + textwrap.dedent('''
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    @Hook
    def CheckToken(request, session, metadata, spec):
        # First use after loading: cryptography imports parts of itself now.
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode({"sub": "alice"}, key, algorithm="RS256")
        claims = jwt.decode(token, key.public_key(), algorithms=["RS256"])
        request.add_header("X-Sub", claims["sub"])
        return request, session, metadata
''')

VERSION_PLUGIN = VENDOR_HEAD + textwrap.dedent('''
    import {package}

    @Hook
    def Version(request, session, metadata, spec):
        request.add_header("X-Version", {package}.__version__)
        request.add_header("X-Check", {check})
        return request, session, metadata
''')


def _plugin_set(base: Path, name: str, text: str, *requirements: str) -> str:
    directory = base / "middleware" / name
    (directory / "vendor").mkdir(parents=True)
    (directory / "middleware.py").write_text(text)
    pip_install(directory / "vendor", *requirements)
    return f"{name}/middleware.py"


def _hook(name: str, path: str) -> dict[str, object]:
    return {"custom_middleware": {"driver": "python", "pre": [{"name": name, "path": path}]}}


def test_vendored_pyjwt_crypto_verifies_tokens_after_loading(tmp_path: Path) -> None:
    """1. A plugin vendors pyjwt[crypto] (cryptography, cffi) and imports jwt at load;
       two APIs use it.
    2. Its hook, called after loading, signs and verifies an RS256 token.
    3. The token verifies for both APIs: cryptography was loaded once, so its type
       checks pass, and nothing warns.
    """
    config = write_apis(tmp_path, {})
    path = _plugin_set(tmp_path, "jwtauth", JWT_RS256_PLUGIN, "pyjwt[crypto]")
    write_apis(tmp_path, {"jwtapi": _hook("CheckToken", path),
                          "jwtapi2": _hook("CheckToken", path)})
    result = run_plugins(config, [("jwtapi", "CheckToken"), ("jwtapi2", "CheckToken")])
    assert result.report["jwtapi"]["ok"] and result.report["jwtapi2"]["ok"], result.report
    assert result.calls == {"jwtapi.CheckToken": {"X-Sub": "alice"},
                            "jwtapi2.CheckToken": {"X-Sub": "alice"}}, result.log
    assert "WARNING" not in result.log, result.log


def test_two_sets_vendor_two_versions_of_a_pure_python_package(tmp_path: Path) -> None:
    """1. Two plugin sets vendor pyjwt at two versions (pure Python, HS256 only).
    2. Each hook reports the version it runs and round-trips an HS256 token.
    3. Each set runs its own version.
    """
    config = write_apis(tmp_path, {})
    check = 'jwt.decode(jwt.encode({"a": 1}, "k" * 32, algorithm="HS256"), "k" * 32, ' \
            'algorithms=["HS256"])["a"] == 1 and "ok" or "bad"'
    apis = {}
    for name, version in (("old", "2.8.0"), ("new", "2.9.0")):
        text = VERSION_PLUGIN.format(package="jwt", check=check)
        apis[name] = _hook("Version", _plugin_set(tmp_path, name, text, f"pyjwt=={version}"))
    write_apis(tmp_path, apis)
    result = run_plugins(config, [("old", "Version"), ("new", "Version")])
    assert result.calls == {"old.Version": {"X-Version": "2.8.0", "X-Check": "ok"},
                            "new.Version": {"X-Version": "2.9.0", "X-Check": "ok"}}, result.log


def test_a_native_extension_at_two_versions_is_named_in_one_log_line(tmp_path: Path) -> None:
    """1. Two plugin sets vendor MarkupSafe (a C extension) at two versions.
    2. Both load and run; the second uses the build already loaded.
    3. One warning line names the package, both versions and what was done.
    """
    config = write_apis(tmp_path, {})
    check = 'str(markupsafe.escape("<b>"))'
    apis = {}
    for name, version in (("a_first", "2.1.5"), ("b_second", "3.0.2")):
        text = VERSION_PLUGIN.format(package="markupsafe", check=check)
        apis[name] = _hook("Version", _plugin_set(tmp_path, name, text,
                                                  f"markupsafe=={version}"))
    write_apis(tmp_path, apis)
    result = run_plugins(config, [("a_first", "Version"), ("b_second", "Version")])
    assert result.calls["a_first.Version"] == {"X-Version": "2.1.5", "X-Check": "&lt;b&gt;"}
    assert result.calls["b_second.Version"] == {"X-Version": "2.1.5", "X-Check": "&lt;b&gt;"}
    lines = [line for line in result.log.splitlines() if "native extension" in line]
    assert len(lines) == 1, result.log
    assert "markupsafe" in lines[0] and "3.0.2" in lines[0] and "2.1.5" in lines[0]


def test_a_real_instance_serves_a_plugin_with_vendored_pyjwt_crypto(echo_upstream: Any) -> None:
    """1. `coproc serve` with a pre hook from a plugin set that vendors pyjwt[crypto].
    2. Two requests: the hook signs and verifies an RS256 token in the worker each
       time and passes the subject upstream.
    """
    base = new_base_dir()
    api = api_def("jwt", "/jwt/", echo_upstream.url, pre=[hook("CheckToken",
                                                                "jwtauth/middleware.py")])
    config = write_instance(base, {"jwt": api}, {"jwtauth/middleware.py": JWT_RS256_PLUGIN})
    inst = None
    try:
        pip_install(base / "middleware" / "jwtauth" / "vendor", "pyjwt[crypto]")
        inst = launch(base, config)
        for _ in range(2):
            echo = inst.expect(inst.get("/jwt/x"), 200).json()
            assert echo_header(echo, "X-Sub") == "alice"
    finally:
        leftovers = inst.cleanup() if inst is not None else []
        remove_base(base)
    assert not leftovers
