"""Coproc's own `coproc` block is read strictly: an unknown key is an error naming
the key and the nearest valid one (Tyk's own fields and API definitions stay lenient)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from config.gateway import load_gateway_config
from config.reader import ConfigError


def _write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize(("block", "field", "suggestion"), [
    ({"worker": {"thread": 4}}, "coproc.worker.thread", '"threads"'),
    ({"hookz": {}}, "coproc.hookz", '"hooks"'),
    ({"sandbox": {"profile": "strict", "networks": False}}, "coproc.sandbox.networks",
     '"network"'),
    ({"supervisor": {"stop_grace": 5}}, "coproc.supervisor.stop_grace", '"stop_grace_ms"'),
])
def test_unknown_coproc_key_names_the_key_and_the_nearest(
        tmp_path: Path, block: dict[str, Any], field: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(_write(tmp_path, {"coproc": block}))
    assert info.value.field == field
    assert "unknown setting" in str(info.value)
    assert suggestion in info.value.fix
    assert str(tmp_path / "coproc.json") in str(info.value)


def test_unknown_key_far_from_any_gets_no_guess(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(_write(tmp_path, {"coproc": {"zzzzqqq": 1}}))
    assert info.value.field == "coproc.zzzzqqq"
    assert "did you mean" not in info.value.fix


def test_tyk_fields_outside_the_coproc_block_stay_lenient(tmp_path: Path) -> None:
    cfg = load_gateway_config(_write(tmp_path, {
        "listen_port": 8181, "enable_analytics_xyz": True, "hash_keys_unknown": 1,
        "coproc": {"worker": {"threads": 4}}}))
    assert cfg.listen_port == 8181
    assert cfg.worker.threads == 4


def test_every_shipped_coproc_key_is_known() -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "coproc.json"
    load_gateway_config(shipped)  # raises on any unknown key


def test_tyk_environment_names_override_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, {"secret": "in-file", "storage": {"type": "redis", "port": 6379}})
    cfg = load_gateway_config(path, environ={
        "TYK_GW_SECRET": "from-env", "TYK_GW_STORAGE_PASSWORD": "pw",
        "TYK_GW_STORAGE_PORT": "6390", "TYK_GW_STORAGE_HOST": "redis.internal"})
    assert cfg.secret == "from-env"
    assert (cfg.storage.password, cfg.storage.port, cfg.storage.host) == (
        "pw", 6390, "redis.internal")
    assert load_gateway_config(path, environ={}).secret == "in-file"


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_gateway_config(_write(tmp_path, {}), environ={"TYK_GW_STORAGE_PORT": "abc"})
    assert "TYK_GW_STORAGE_PORT" in str(info.value)
    assert info.value.field == "storage.port"


def test_worker_python_is_an_executable_kept_unresolved(tmp_path: Path) -> None:
    """coproc.worker.python: relative to the config file, symlinks kept (a venv's
    bin/python is one); a missing one is refused naming the field."""
    import os
    import sys

    (tmp_path / "venv" / "bin").mkdir(parents=True)
    link = tmp_path / "venv" / "bin" / "python"
    os.symlink(sys.executable, link)
    config = tmp_path / "coproc.json"
    config.write_text(json.dumps({"coproc": {"worker": {"python": "venv/bin/python"}}}))
    assert load_gateway_config(config).worker.python == str(link)
    config.write_text(json.dumps({"coproc": {"worker": {"python": "nope/bin/python"}}}))
    with pytest.raises(ConfigError, match=r"coproc\.worker\.python.*not an executable file"):
        load_gateway_config(config)
