"""The shipped default config, example plugins, README commands and CI script agree.

The live behaviour of the shipped examples is checked in
tests/integration/test_shipped_config.py; these are the static checks.
"""

from __future__ import annotations

import os
import py_compile
import re
from pathlib import Path

from config import load_api_definitions, load_gateway_config

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED = REPO_ROOT / "config"
README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")

QUICK_START = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/coproc demo"
TEST_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -e '.[test]' "
                "&& .venv/bin/python -m pytest")


def test_shipped_gateway_config() -> None:
    cfg = load_gateway_config(SHIPPED / "coproc.json")
    assert (cfg.listen_address, cfg.listen_port) == ("127.0.0.1", 8080)
    assert cfg.app_path == SHIPPED / "apps"
    assert cfg.middleware_path == SHIPPED / "middleware"
    assert cfg.log_level == "info"
    assert cfg.enable_coprocess is True


def test_shipped_api_definitions() -> None:
    apis = {api.api_id: api for api in load_api_definitions(
        load_gateway_config(SHIPPED / "coproc.json"))}
    assert set(apis) == {"echo", "local"}
    assert apis["echo"].proxy.listen_path == "/echo/"
    assert apis["local"].proxy.listen_path == "/local/"
    for api in apis.values():
        assert api.use_keyless is True
        assert api.proxy.target_url == "http://127.0.0.1:8081/"
        hooks = api.custom_middleware.all_hooks()
        assert hooks, f"{api.api_id} has no hooks"
        for h in hooks:
            assert Path(h.path).is_file()
            assert Path(h.path).is_relative_to(SHIPPED / "middleware")
    echo = apis["echo"].custom_middleware
    assert [h.name for h in echo.pre] == ["AddGreeting"]
    assert [h.name for h in echo.response] == ["StampResponse"]
    # The two APIs use different plugin files.
    assert {h.path for h in echo.all_hooks()}.isdisjoint(
        {h.path for h in apis["local"].custom_middleware.all_hooks()})


def test_example_plugins_are_tyk_style_and_compile(tmp_path: Path) -> None:
    plugins = sorted((SHIPPED / "middleware").rglob("*.py"))
    assert len(plugins) >= 2
    for source in plugins:
        text = source.read_text(encoding="utf-8")
        assert "from tyk.decorators import *" in text, source
        assert "from gateway import TykGateway as tyk" in text, source
        assert "@Hook" in text, source
        py_compile.compile(str(source), cfile=str(tmp_path / "x.pyc"), doraise=True)


def test_readme_quick_start_has_exactly_the_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)\n```", section, flags=re.S)
    assert commands == [QUICK_START, TEST_COMMAND]


def test_readme_marks_the_test_command_for_ci() -> None:
    marked = re.findall(r"<!-- test-command -->\n```sh\n(.*?)\n```\n<!-- /test-command -->",
                        README)
    assert marked == [TEST_COMMAND]
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- test-command -->" in ci
    assert TEST_COMMAND not in ci, ".ci/run must read the command from README.md"


def test_ci_script_is_strict_and_executable() -> None:
    ci = REPO_ROOT / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    text = ci.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert "redis-server" in text


def test_readme_links_the_protocol_doc() -> None:
    assert "(docs/PROTOCOL.md)" in README
    assert (REPO_ROOT / "docs" / "PROTOCOL.md").is_file()
