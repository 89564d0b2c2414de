"""The run directory lock, pid file, port file and clean-up."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ipc.shm_names import shm_prefix
from supervisor.lock import LOCK_NAME, LockedError, RunDirLock
from supervisor.rundir import RunDir, RunDirError


def test_second_lock_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    first = RunDirLock.acquire(tmp_path)
    try:
        with pytest.raises(LockedError) as refused:
            RunDirLock.acquire(tmp_path)
        assert refused.value.holder_pid == os.getpid()
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and str(tmp_path) in message
    finally:
        first.release()
    assert not (tmp_path / LOCK_NAME).exists()
    RunDirLock.acquire(tmp_path).release()  # free again


def test_a_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("999999\n")  # left by a crashed instance
    lock = RunDirLock.acquire(tmp_path)
    assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    lock.release()
    lock.release()  # idempotent


def test_run_dir_is_created_private(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "a" / "run")
    run.create()
    assert (run.path.stat().st_mode & 0o777) == 0o700
    run.path.chmod(0o755)
    run.create()
    assert (run.path.stat().st_mode & 0o777) == 0o700


def test_run_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    with pytest.raises(RunDirError):
        RunDir(tmp_path / "run").create()


def test_cleanup_removes_our_files_and_sockets_only(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    run.create()
    run.write_pid()
    run.write_port(8123)
    assert (run.path / "http.port").read_text() == "8123\n"
    assert (run.path / "coproc.pid").read_text() == f"{os.getpid()}\n"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run.path / "hooks.sock"))
    stale.close()
    (run.path / "notes.txt").write_text("not ours")
    run.cleanup()
    assert sorted(p.name for p in run.path.iterdir()) == ["notes.txt"]
    run.remove_if_empty()
    assert run.path.exists()
    (run.path / "notes.txt").unlink()
    run.remove_if_empty()
    assert not run.path.exists()


def test_shm_prefix_is_stable_and_per_run_dir(tmp_path: Path) -> None:
    a = shm_prefix(tmp_path / "a")
    assert a == shm_prefix(tmp_path / "a") and a != shm_prefix(tmp_path / "b")
    assert a.startswith("coproc-") and len(a) == len("coproc-") + 12


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_leftover_shared_memory_is_removed(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    ours = Path("/dev/shm") / f"{shm_prefix(run.path)}-arena"
    theirs = Path("/dev/shm") / f"{shm_prefix(tmp_path / 'other')}-arena"
    try:
        ours.write_bytes(b"x")
        theirs.write_bytes(b"x")
        run.remove_shared_memory()
        assert not ours.exists() and theirs.exists()
    finally:
        ours.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)
