"""Chaos around hot restarts: signal storms and a new generation killed mid-boot.

Real processes under client load; each scenario lists its steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

from tests.conftest import InstanceFactory
from tests.integration.harness import EchoUpstream, Load, coproc_command, poll
from tests.integration.test_supervisor_reload import (
    STAMP,
    stamp_api,
    status,
    versions,
    write_plugin,
)


def test_sighup_storm_under_load(coproc_factory: InstanceFactory,
                                 echo_upstream: EchoUpstream) -> None:
    """1. Under load, send 6 SIGHUPs 50 ms apart.
    2. Reloads asked for while one runs are folded into the next: no request
       fails, and once things settle one gateway and one worker are left.
    """
    inst = coproc_factory({"v": stamp_api(echo_upstream)}, {"v/mw.py": STAMP.format(version=1)})
    with Load(inst, "/v/x", threads=4, keep=versions) as load:
        poll("first answers", lambda: len(load.results) > 10, 20)
        for _ in range(6):
            os.kill(inst.pid, signal.SIGHUP)
            time.sleep(0.05)  # pacing the storm, not waiting for readiness
        poll("the reloads to finish", lambda: (s := status(inst))["reload"]["running"] is None
             and not s["worker"]["retiring"] and s["worker"]["hot_restarts"] >= 2, 60)
        count = len(load.results)
        poll("answers after the storm", lambda: len(load.results) > count + 10, 20)
    assert not load.failures, f"{load.failures[:5]}\n{inst.logs()}"
    st = status(inst)
    assert st["worker"]["restarts"] == 0
    assert 2 <= st["worker"]["hot_restarts"] <= 6
    poll("one gateway and one worker", lambda: len(inst.children()) == 2, 10)


SLOW_IMPORT = "import time\ntime.sleep(2)\n" + STAMP.format(version=2)


def test_new_generation_killed_while_booting(coproc_factory: InstanceFactory,
                                             echo_upstream: EchoUpstream) -> None:
    """1. Under load, write a plugin that takes 2 s to import and `coproc reload`.
    2. SIGKILL the booting generation (not the active one).
    3. `coproc reload` exits 1 naming the kill; version 1 keeps answering and
       no request failed.
    """
    inst = coproc_factory({"v": stamp_api(echo_upstream)}, {"v/mw.py": STAMP.format(version=1)})
    active = status(inst)["worker"]["pid"]
    with Load(inst, "/v/x", threads=4, keep=versions) as load:
        poll("first answers", lambda: len(load.results) > 10, 20)
        write_plugin(inst, "v/mw.py", SLOW_IMPORT)
        reload = subprocess.Popen([*coproc_command(), "reload", "--config",
                                   str(inst.config_path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            candidate = poll("the booting generation", lambda: next(
                (p for p in inst.children() if p.pid != active and "worker" in " ".join(
                    _cmdline(p))), None), 10, interval=0.02)
            candidate.kill()
            out, err = reload.communicate(timeout=30)
        finally:
            if reload.poll() is None:
                reload.kill()
                reload.wait(10)
        count = len(load.results)
        poll("answers after the failed reload", lambda: len(load.results) > count + 10, 20)
    assert reload.returncode == 1, out
    assert "SIGKILL" in err, err
    assert not load.failures, f"{load.failures[:5]}\n{inst.logs()}"
    assert all(v["response"] == "1" for _, v in load.results)
    assert status(inst)["worker"]["pid"] == active


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []
