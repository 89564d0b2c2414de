"""Tyk's `rate_limit_response_headers` in the gateway config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.gateway import load_gateway_config
from config.reader import ConfigError


def _load(tmp_path: Path, **fields: object) -> str:
    path = tmp_path / "tyk.conf"
    path.write_text(json.dumps({"coproc": {"run_dir": "run"}, **fields}))
    return load_gateway_config(path).rate_limit_headers


def test_quotas_by_default_as_in_tyk(tmp_path: Path) -> None:
    assert _load(tmp_path) == "quotas"
    assert _load(tmp_path, rate_limit_response_headers="") == "quotas"
    assert _load(tmp_path, rate_limit_response_headers="rate_limits") == "rate_limits"
    with pytest.raises(ConfigError, match="rate_limit_response_headers"):
        _load(tmp_path, rate_limit_response_headers="rates")
