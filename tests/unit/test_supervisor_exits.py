"""Exit classification: codes the child chose vs signals, reserved codes named."""

from __future__ import annotations

import signal

import pytest

from ipc import exitcodes
from supervisor.exits import ExitStatus


@pytest.mark.parametrize(("returncode", "text"), [
    (0, "exited 0"),
    (1, "exited 1"),
    (exitcodes.BOOT_FAILED, "exited 3 (failed to boot)"),
    (exitcodes.PLUGINS_FAILED, "exited 4 (plugins failed to load)"),
    (exitcodes.REJECTED, "exited 5 (rejected by the gateway)"),
    (exitcodes.CONFIG, "exited 78 (invalid configuration)"),
    (-signal.SIGKILL, "killed (SIGKILL, possibly OOM)"),
    (-signal.SIGTERM, "killed (SIGTERM)"),
    (-signal.SIGSEGV, "killed (SIGSEGV)"),
    (-200, "killed (signal 200)"),
])
def test_describe(returncode: int, text: str) -> None:
    assert ExitStatus(returncode).describe() == text


def test_a_kill_by_the_supervisor_is_not_blamed_on_the_oom_killer() -> None:
    status = ExitStatus(-signal.SIGKILL, killed_by_us="no heartbeat for 600 ms")
    assert status.describe() == "killed (SIGKILL, by the supervisor: no heartbeat for 600 ms)"


def test_fields() -> None:
    assert ExitStatus(0).clean and ExitStatus(0).code == 0 and ExitStatus(0).signal is None
    killed = ExitStatus(-signal.SIGKILL)
    assert killed.signal == signal.SIGKILL and killed.code is None and not killed.clean
    assert ExitStatus(exitcodes.BOOT_FAILED).boot_failure
    assert ExitStatus(exitcodes.PLUGINS_FAILED).boot_failure
    assert not ExitStatus(1).boot_failure and not ExitStatus(-signal.SIGKILL).boot_failure
