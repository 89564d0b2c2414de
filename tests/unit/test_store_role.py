"""The store process as a supervised role: when it runs, what it and the gateways get."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.gateway import GatewayConfig, GatewayOptions, StorageConfig
from ipc.contract import NEVER_INHERITED, STORE_SOCKET_ENV, SUPERVISOR_PID_ENV
from ipc.tokens import store_token
from supervisor.child import Role
from supervisor.contract import ChildCommands
from supervisor.spawner import gateway_spec, store_spec
from supervisor.store_role import StoreRole


def config(tmp_path: Path, storage: str, processes: int) -> GatewayConfig:
    return GatewayConfig(path=tmp_path / "coproc.json", run_dir=tmp_path,
                         gateway=GatewayOptions(processes=processes),
                         storage=StorageConfig(type=storage))


def test_a_store_runs_only_for_memory_shared_by_several_gateway_processes(
        tmp_path: Path) -> None:
    assert StoreRole.wanted(config(tmp_path, "memory", 2))
    assert StoreRole.wanted(config(tmp_path, "memory", 8))
    assert not StoreRole.wanted(config(tmp_path, "memory", 1))  # in-process: no cost
    assert not StoreRole.wanted(config(tmp_path, "redis", 2))  # Redis is shared already


def test_gateways_are_told_the_socket_and_an_inherited_one_is_never_passed_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert STORE_SOCKET_ENV in NEVER_INHERITED
    commands = ChildCommands(gateway=("gw",), worker=("wk",))
    monkeypatch.setenv(STORE_SOCKET_ENV, "/stale/store.sock")  # in the supervisor's own
    alone = gateway_spec(commands, 5, b"k" * 32).env(1)
    shared = gateway_spec(commands, 5, b"k" * 32,
                          store={STORE_SOCKET_ENV: str(tmp_path / "store.sock")}).env(1)
    assert STORE_SOCKET_ENV not in alone
    assert shared[STORE_SOCKET_ENV] == str(tmp_path / "store.sock")


def test_the_store_spec(tmp_path: Path) -> None:
    cfg = config(tmp_path, "memory", 2)
    key = b"k" * 32
    role = StoreRole(cfg, key, readers=None, clock=lambda: 0.0)  # type: ignore[arg-type]
    assert role.socket == tmp_path / "store.sock"
    assert role.gateway_env() == {STORE_SOCKET_ENV: str(tmp_path / "store.sock")}
    spec = store_spec(str(role.socket), "debug", "json", key)
    assert spec.role is Role.STORE and not spec.confined and spec.secret is not None
    assert spec.secret(1) == store_token(key).encode()  # what gateways derive from the key
    assert spec.argv[1:] == ("-m", "gateway.storage.server", "--socket",
                             str(tmp_path / "store.sock"), "--log-level", "debug",
                             "--log-format", "json")
    env = spec.env(1)
    assert env[SUPERVISOR_PID_ENV].isdigit()
    assert not NEVER_INHERITED - {SUPERVISOR_PID_ENV} & env.keys()
