"""The shipped systemd unit: valid for systemd, and consistent with the setup
docs/SECURITY.md recommends (a root supervisor that drops the worker's uid, makes
its cgroup and network namespace, and writes only the run and state directories)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "config" / "systemd" / "coproc.service"
SHIPPED_EXEC = "/opt/coproc/venv/bin/coproc"


def _service() -> dict[str, list[str]]:
    """The [Service] section as key -> every value it is given."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """CI installs the `systemd` package; `verify` needs no running systemd, only an
    existing ExecStart binary: point it at this environment's `coproc`."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd (.ci/run does)")
    coproc = Path(sys.executable).parent / "coproc"
    assert coproc.exists(), "the test command installs the coproc console script"
    text = UNIT.read_text()
    assert SHIPPED_EXEC in text
    unit = tmp_path / "coproc.service"
    unit.write_text(text.replace(SHIPPED_EXEC, str(coproc)))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "coproc.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_unit_matches_the_recommended_setup() -> None:
    service = _service()
    # A root supervisor: User= would disable the uid drop, cgroups and the netns.
    assert "User" not in service and "Group" not in service
    assert service["Type"] == ["notify"]
    assert service["Delegate"] == ["yes"]
    assert service["ExecStart"][0].startswith(SHIPPED_EXEC + " serve --config /etc/coproc/")
    caps = set(service["CapabilityBoundingSet"][0].split())
    assert {"CAP_SETUID", "CAP_SETGID", "CAP_SYS_ADMIN", "CAP_CHOWN", "CAP_KILL"} <= caps
    assert "net" in service["RestrictNamespaces"][0].split()
    assert "ProtectControlGroups" not in service  # would make the cgroup tree read-only
    writable = set(service["ReadWritePaths"][0].split())
    assert {"/run/coproc", "/var/lib/coproc"} <= writable
    assert service["RestartPreventExitStatus"][0].split() == ["78", "75"]


def test_operations_doc_installs_what_the_unit_runs() -> None:
    doc = (ROOT / "docs" / "OPERATIONS.md").read_text()
    for needed in ("/opt/coproc/venv", "useradd --system", "/etc/coproc/coproc.json",
                   "/var/lib/coproc", "systemctl enable --now coproc"):
        assert needed in doc, needed
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(UNIT.read_text())
    assert parser["Install"]["WantedBy"] == "multi-user.target"
