"""The sandbox's uid layer and a non-root `coproc serve`, with a user made for the test.

Both need an interpreter (and its packages) that another uid can read: the
one running the tests may live under a private home (/root, mode 0700).  The
system's python3 of the same minor version, with this checkout and this
environment's site-packages on PYTHONPATH, is used when it can import our
dependencies as that user; otherwise the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_sandbox as probes
from tests.integration import test_sandbox_instance as hostile
from tests.integration.harness import (
    REPO_ROOT,
    Instance,
    launch,
    new_base_dir,
    poll,
    remove_base,
    write_instance,
)

USER = "coproc-sbx-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="creating a test user needs root (CI runs as root)")


@pytest.fixture(scope="module")
def test_user() -> Iterator[pwd.struct_passwd]:
    created = False
    try:
        pwd.getpwnam(USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("useradd is not installed")
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", USER], check=True, timeout=30)
        created = True
    try:
        yield pwd.getpwnam(USER)
    finally:
        if created:
            subprocess.run(["userdel", USER], check=False, timeout=30)


@pytest.fixture(scope="module")
def interpreter(test_user: pwd.struct_passwd) -> tuple[str, dict[str, str]]:
    """(python, env) that `test_user` can run Coproc with, else skip with the reason."""
    minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), sysconfig.get_paths()["purelib"]])}
    tried = []
    for python in (sys.executable, f"/usr/bin/{minor}"):
        try:
            probe = subprocess.run(
                [python, "-c", "import zmq, msgpack, aiohttp, psutil, supervisor.cli"],
                env=env, user=test_user.pw_uid, group=test_user.pw_gid, extra_groups=[],
                cwd="/", capture_output=True, timeout=60, check=False)
        except OSError as exc:  # not even executable for that uid
            tried.append(f"{python}: {exc}")
            continue
        if probe.returncode == 0:
            return python, env
        tried.append(f"{python}: {probe.stderr.decode(errors='replace').strip()[-200:]}")
    pytest.skip("no interpreter readable by another uid: " + " | ".join(tried))


def _launch(base: Path, python: str, env: dict[str, str],
            user: pwd.struct_passwd | None = None) -> Instance:
    ids: dict[str, Any] = ({"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
                           if user else {})
    return launch(base, base / "coproc.json", command=[python, "-m", "supervisor.cli"],
                  env=env, **ids)


@pytest.fixture
def instances() -> Iterator[list[Instance]]:
    started: list[Instance] = []
    try:
        yield started
    finally:
        for inst in started:
            leftovers = inst.cleanup()
            remove_base(inst.base)
            assert not leftovers, f"children left running: {leftovers}"


def _base(echo_url: str, settings: dict[str, Any]) -> Path:
    base = new_base_dir()
    write_instance(base, probes.probe_apis(echo_url), probes.PLUGINS, settings)
    return base


def test_root_supervisor_drops_the_worker_to_the_configured_user(
        test_user: pwd.struct_passwd, interpreter: tuple[str, dict[str, str]],
        echo_upstream: Any, instances: list[Instance]) -> None:
    """1. standard, user = a dedicated user; 2. the worker runs as that uid;
    3. /etc/shadow is unreadable to it; 4. hooks and host calls still work."""
    base = _base(echo_upstream.url, probes.settings("standard", user=USER))
    base.chmod(0o711)  # the dropped uid must reach its plugins and the hooks socket
    instances.append(_launch(base, *interpreter))
    inst = instances[-1]
    who = json.loads(probes.outcome(inst, **{"try": "whoami"})[len("allowed: "):]
                     .replace("'", '"'))
    assert who == {"uid": test_user.pw_uid, "nnp": 1}, inst.logs()
    assert probes.outcome(inst, **{"try": "read", "path": "/etc/shadow"}).startswith(
        "blocked: PermissionError")
    probes.check_happy(inst)
    probes.check_large_body(inst)  # the body arena, handed to that uid


@pytest.mark.parametrize("profile", ["standard", "strict"])
def test_non_root_serve_starts_and_reports_unavailable_layers(
        profile: str, test_user: pwd.struct_passwd, interpreter: tuple[str, dict[str, str]],
        echo_upstream: Any, instances: list[Instance]) -> None:
    base = _base(echo_upstream.url, probes.settings(profile))
    subprocess.run(["chown", "-R", f"{test_user.pw_uid}:{test_user.pw_gid}", str(base)],
                   check=True, timeout=30)
    instances.append(_launch(base, *interpreter, user=test_user))
    inst = instances[-1]
    probes.check_happy(inst)
    log = inst.logs(20000)
    assert "sandbox layer identity unavailable, skipped: not started as root" in log, log
    assert f"sandbox profile {profile} (" in log
    if profile == "strict":
        assert probes.outcome(inst, **{"try": "fork"}).startswith("blocked: PermissionError")


def test_a_required_layer_that_fails_stops_the_worker_with_the_reason(
        test_user: pwd.struct_passwd, echo_upstream: Any, coproc_factory: Any) -> None:
    """`user` set explicitly is required: a uid that cannot read this interpreter
    (here, under a private home) must not run plugins as root instead."""
    from worker.sandbox.identity import unreachable

    interpreter_dir = Path(sys.base_prefix).resolve()  # the stdlib, not the venv
    if unreachable([interpreter_dir], test_user.pw_uid, test_user.pw_gid) is None:
        pytest.skip(f"{interpreter_dir} is readable by any uid: the layer would succeed")
    inst = coproc_factory(probes.probe_apis(echo_upstream.url), probes.PLUGINS,
                          probes.settings("standard", user=USER), wait=False)
    want = "sandbox layer identity is required but failed: uid"
    poll("the worker's refusal in the log", lambda: want in inst.logs(50000), 30)
    poll("the supervisor's exit report", lambda: "exited 3 (failed to boot)" in
         inst.logs(50000), 30)


ADMIN_SECRET = "admin-s3cret-for-the-test"
REDIS_SECRET = "redis-s3cret-for-the-test"


def test_a_dropped_worker_loads_without_the_config_file_and_finds_no_secret(
        test_user: pwd.struct_passwd, interpreter: tuple[str, dict[str, str]],
        echo_upstream: Any, instances: list[Instance]) -> None:
    """Item 5: 1. the config file is 0600 root and holds the admin secret and a
    storage password; 2. the worker (dropped to the test user) still loads and
    serves; 3. its plugin cannot read either secret from the file, its own or
    its parent's environment, or the gateway's /proc files."""
    base = new_base_dir()
    settings = probes.settings("standard", user=USER)
    settings.update({"secret": ADMIN_SECRET,
                     "storage": {"type": "memory", "password": REDIS_SECRET}})
    write_instance(base, hostile.apis(echo_upstream.url), hostile.PLUGINS, settings)
    base.chmod(0o711)
    config = base / "coproc.json"
    config.chmod(0o600)
    assert config.stat().st_uid == 0
    instances.append(_launch(base, *interpreter))
    inst = instances[-1]
    assert hostile.psutil.Process(hostile.worker_pid(inst)).uids().real == test_user.pw_uid
    gateway = hostile.gateway_pid(inst)
    paths = [str(config), "/proc/self/environ", "/proc/self/cmdline",
             f"/proc/{inst.pid}/environ", f"/proc/{gateway}/environ",
             f"/proc/{gateway}/cmdline"]
    for secret in (ADMIN_SECRET, REDIS_SECRET):
        seen = json.loads(hostile.probe(inst, **{"try": "find", "needle": secret,
                                                 "paths": ",".join(paths)})[len("allowed: "):])
        assert seen[str(config)].startswith("blocked: PermissionError"), seen
        assert "found" not in seen.values(), seen
    inst.expect(inst.get("/plain/get"), 200)
