"""Each top-level package (with its submodules) imports alone in a fresh interpreter.

The layout rule (docs: shared DESIGN, "Packages"): `worker/` never pulls in
the gateway (nor aiohttp), `gateway/` never pulls in `worker/` or
`supervisor/`, the supervisor starts both as fresh interpreters and imports
neither, and `ipc/` and `config/` stay free of aiohttp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Imports the package and every submodule but __main__ (which may run on import).
PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module({package!r})
for info in pkgutil.walk_packages(package.__path__, {package!r} + "."):
    if info.name.rsplit(".", 1)[-1] != "__main__":
        importlib.import_module(info.name)
print(json.dumps({{name: getattr(m, "__file__", None) for name, m in sys.modules.items()}}))
"""

# package -> module names (or dotted prefixes, ending in ".") that must not be loaded
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "ipc": ("aiohttp", "psutil", "config", "worker", "gateway", "supervisor"),
    "config": ("aiohttp", "zmq", "msgpack", "psutil", "worker", "gateway", "supervisor"),
    "worker": ("aiohttp", "gateway.", "supervisor"),
    "gateway": ("worker", "supervisor"),
    "supervisor": ("aiohttp", "worker", "gateway"),
}


def loaded_modules(package: str) -> dict[str, str | None]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(package=package)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"import {package} failed:\n{proc.stderr}"
    modules: dict[str, str | None] = json.loads(proc.stdout.strip().splitlines()[-1])
    return modules


def offending(modules: dict[str, str | None], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for name in modules:
        for rule in forbidden:
            if rule.endswith("."):
                if name.startswith(rule):
                    bad.append(name)
            elif name == rule or name.startswith(rule + "."):
                bad.append(name)
    return sorted(set(bad))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_alone_and_keeps_its_dependencies(package: str) -> None:
    modules = loaded_modules(package)
    assert package in modules
    assert modules[package] is not None
    assert Path(modules[package] or "").resolve().is_relative_to(REPO_ROOT / package), (
        f"{package} was imported from {modules[package]}, not from this checkout")
    bad = offending(modules, FORBIDDEN[package])
    assert not bad, f"importing {package} pulled in {bad}"


def test_worker_does_not_load_our_gateway_package() -> None:
    """The worker may provide Tyk's `gateway` module to plugins, never ours."""
    modules = loaded_modules("worker")
    ours = str(REPO_ROOT / "gateway")
    for name, path in modules.items():
        if name == "gateway" or name.startswith("gateway."):
            assert not (path or "").startswith(ours), f"worker imported {name} from {path}"


def test_offending_detects_what_it_should() -> None:
    """The checker itself: a forbidden module is reported, a look-alike is not."""
    modules = {"aiohttp.web": "x", "gateway.app": "y", "gatewayish": "z", "worker": "w"}
    assert offending(modules, ("aiohttp",)) == ["aiohttp.web"]
    assert offending(modules, ("gateway.",)) == ["gateway.app"]
    assert offending(modules, ("worker",)) == ["worker"]
    assert offending(modules, ("supervisor",)) == []
