"""Shared fixtures: a real echo upstream and factories of real Coproc instances.

The machinery lives in tests/integration/harness.py; these fixtures own the
lifetimes. An instance that does not stop on SIGTERM within the deadline, or
leaves a child process behind, fails the test that used it at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from integration.harness import (
    EchoUpstream,
    Instance,
    RedisServer,
    new_base_dir,
    remove_base,
    start_instance,
)


@pytest.fixture(scope="session")
def echo_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EchoUpstream]:
    """`python -m gateway.echo_upstream` on an ephemeral port, for the whole session."""
    echo = EchoUpstream(tmp_path_factory.mktemp("echo")).start()
    try:
        yield echo
    finally:
        echo.stop()


class InstanceFactory:
    """Starts Coproc instances on demand; stops and checks every one at close()."""

    def __init__(self) -> None:
        self.instances: list[Instance] = []

    def __call__(self, apis: Mapping[str, Mapping[str, Any]], plugins: Mapping[str, str],
                 settings: Mapping[str, Any] | None = None, *, wait: bool = True) -> Instance:
        base = new_base_dir()
        try:
            inst = start_instance(apis, plugins, settings, wait=wait, base=base)
        except BaseException:
            remove_base(base)
            raise
        self.instances.append(inst)
        return inst

    def close(self) -> None:
        problems = []
        for inst in self.instances:
            leftovers = inst.cleanup()
            if not inst.stopped_gracefully:
                problems.append(f"coproc serve (pid {inst.pid}) did not exit on SIGTERM "
                                f"and was killed\n{inst.logs()}")
            if leftovers:
                problems.append(f"coproc serve (pid {inst.pid}) left children {leftovers} "
                                f"running after it exited (killed now)\n{inst.logs()}")
            remove_base(inst.base)
        self.instances.clear()
        assert not problems, "\n\n".join(problems)


@pytest.fixture
def coproc_factory() -> Iterator[InstanceFactory]:
    """Function-scoped: for tests that crash, stop or otherwise spoil their instance."""
    factory = InstanceFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_coproc_factory() -> Iterator[InstanceFactory]:
    """Module-scoped: one instance shared by the read-only tests of a module."""
    factory = InstanceFactory()
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server for the whole session (fails, never skips, without one)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server for one test: for tests that stop and restart it."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()
