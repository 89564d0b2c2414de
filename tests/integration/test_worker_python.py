"""`coproc.worker.python`: the worker runs in another venv, where plugin dependencies live.

A second venv (no pip, no network) gets coproc through a `.pth` file that
adds this checkout's environment — the stand-in for `pip install coproc`
there — plus a module only it has.  The plugin imports that module and
reports the interpreter it runs in.  A venv without coproc fails `coproc
serve` at start (exit 78) with the field named, before any child starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path
from typing import Any

from supervisor.worker_python import check_worker_python
from tests.conftest import InstanceFactory
from tests.integration.harness import EchoUpstream, api_def, coproc_command, echo_header, hook

PLUGIN = '''
import sys

import only_in_the_plugin_venv
from tyk.decorators import *


@Hook
def Pre(request, session, spec):
    request.add_header("X-Dep", only_in_the_plugin_venv.VALUE)
    request.add_header("X-Prefix", sys.prefix)
    return request, session
'''


def make_venv(where: Path, with_coproc: bool) -> Path:
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    site = Path(purelib)
    (site / "only_in_the_plugin_venv.py").write_text('VALUE = "from-the-plugin-venv"\n')
    if with_coproc:
        ours = sysconfig.get_paths()["purelib"]  # this test's venv, coproc installed there
        (site / "coproc_here.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def test_plugins_import_dependencies_from_the_worker_venv(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream, tmp_path: Path) -> None:
    python = make_venv(tmp_path / "plugins-venv", with_coproc=True)
    assert check_worker_python(str(python)) == ""
    # The gateway's own interpreter does not have the plugin's dependency.
    assert subprocess.run([sys.executable, "-c", "import only_in_the_plugin_venv"],
                          capture_output=True, timeout=60, check=False).returncode != 0
    api = api_def("p", "/p/", echo_upstream.url, pre=[hook("Pre", "p/mw.py")])
    inst = coproc_factory({"p": api}, {"p/mw.py": PLUGIN},
                          {"coproc": {"worker": {"python": str(python)}}})
    echo: Any = inst.expect(inst.get("/p/x"), 200).json()
    assert echo_header(echo, "X-Dep") == "from-the-plugin-venv"
    assert echo_header(echo, "X-Prefix") == str(tmp_path / "plugins-venv")


def test_a_worker_python_without_coproc_fails_at_start(tmp_path: Path) -> None:
    python = make_venv(tmp_path / "bare-venv", with_coproc=False)
    config = tmp_path / "coproc.json"
    (tmp_path / "apps").mkdir()
    (tmp_path / "middleware").mkdir()
    config.write_text(json.dumps({"coproc": {"run_dir": str(tmp_path / "run"),
                                             "worker": {"python": str(python)}}}))
    done = subprocess.run([*coproc_command(), "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 78, done.stderr
    assert f"coproc.worker.python {python} cannot import the coproc worker" in done.stderr
    assert "install coproc" in done.stderr
