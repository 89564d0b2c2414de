"""`coproc serve` warns when credentials sit in a config file every user can read (item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.__main__ import readable_secrets_warning


def _write(tmp_path: Path, doc: dict[str, object], mode: int) -> Path:
    path = tmp_path / "coproc.json"
    path.write_text(json.dumps(doc))
    path.chmod(mode)
    return path


def test_a_world_readable_file_with_secrets_is_named_with_the_fix(tmp_path: Path) -> None:
    path = _write(tmp_path, {"secret": "s", "storage": {"password": "p"}}, 0o644)
    warning = readable_secrets_warning(path)
    assert warning is not None
    assert str(path) in warning and "0644" in warning
    assert "the admin secret" in warning and "the storage (Redis) password" in warning
    assert f"chmod 600 {path}" in warning


def test_a_private_file_or_one_without_secrets_is_quiet(tmp_path: Path) -> None:
    assert readable_secrets_warning(_write(tmp_path, {"secret": "s"}, 0o600)) is None
    assert readable_secrets_warning(_write(tmp_path, {"secret": "s"}, 0o640)) is None
    assert readable_secrets_warning(_write(tmp_path, {"secret": "", "storage": {}}, 0o644)) \
        is None
