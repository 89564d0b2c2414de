"""Load Tyk-style plugin sets in a fresh worker interpreter and call their hooks.

Plugins that vendor real libraries change `sys.path` and `sys.modules`, so the
compat tests load them in a child Python process with the worker's real
loader (`worker.loader.load_plugins`), never in the test process.  The child
prints one JSON object: each call's headers set by the hook, or its error,
plus the load report; its log lines go to stderr.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent('''
    import json, logging, sys, traceback
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s %(message)s")
    from config import load_api_definitions, load_gateway_config
    from worker.loader import load_plugins
    from worker.objects import MiniRequestObject, SessionState
    from worker.request import HookRequest
    from worker.tyk_api import install_plugin_api

    install_plugin_api(None)
    cfg = load_gateway_config(sys.argv[1])
    table = load_plugins(cfg, load_api_definitions(cfg))
    out = {"report": table.report(), "calls": {}}
    for api_id, name in json.loads(sys.argv[2]):
        request = HookRequest(MiniRequestObject())
        entry = table.find(api_id, name)
        args = (request, SessionState(), {}, {}) if entry.arity == 4 else \
            (request, SessionState(), {})
        try:
            entry.func(*args)
            out["calls"][f"{api_id}.{name}"] = dict(request.object.set_headers)
        except Exception as exc:
            traceback.print_exc()
            out["calls"][f"{api_id}.{name}"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
''')


@dataclass
class RunResult:
    report: dict[str, Any]
    calls: dict[str, Any]
    log: str


def pip_install(target: Path, *requirements: str) -> None:
    """`pip install -t target` at test time; skip the test only when no index answers."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-compile",
         "--disable-pip-version-check", "-t", str(target), *requirements],
        capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        text = proc.stderr + proc.stdout
        unreachable = ("No matching distribution", "Could not find a version",
                       "NewConnectionError", "Network is unreachable", "Max retries exceeded")
        if any(marker in text for marker in unreachable):
            import pytest

            pytest.skip(f"the package index is unreachable for {requirements}: {text[-300:]}")
        raise RuntimeError(f"pip install {requirements} failed:\n{text[-3000:]}")


def write_apis(base: Path, apis: Mapping[str, Mapping[str, Any]]) -> Path:
    """One definition per API id under base/apps; the gateway config at base/coproc.json."""
    (base / "apps").mkdir(parents=True, exist_ok=True)
    (base / "middleware").mkdir(exist_ok=True)
    for api_id, extra in apis.items():
        definition = {"api_id": api_id, "name": api_id,
                      "proxy": {"listen_path": f"/{api_id}/",
                                "target_url": "http://127.0.0.1:9/"}, **extra}
        (base / "apps" / f"{api_id}.json").write_text(json.dumps(definition))
    config = base / "coproc.json"
    config.write_text(json.dumps({"coproc": {"run_dir": "run"}}))
    return config


def run_plugins(config: Path, calls: Sequence[tuple[str, str]],
                timeout: float = 120.0) -> RunResult:
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(config), json.dumps(calls)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"plugin runner exited {proc.returncode}:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return RunResult(out["report"], out["calls"], proc.stderr)
