"""`coproc` command line: help, config errors (exit 78), demo config retargeting."""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor import cli, demo


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """`serve` sets up logging for the process; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_help_names_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "serve" in out and "demo" in out and "SIGTERM" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"coproc {importlib.metadata.version('coproc')}"


def test_status_never_prints_pid_none() -> None:
    from supervisor.ctl import format_status

    text = format_status({"pid": 7, "gateway": {"pid": None, "state": "starting"},
                          "worker": {"pid": None, "state": "fatal"},
                          "last_exits": [{"child": "worker", "pid": None, "reason": "x"}]})
    assert "None" not in text and "supervisor  pid 7" in text
    assert "gateway     no process" in text and "worker      no process" in text


def test_demo_names_its_config_and_run_dir(tmp_path: Path) -> None:
    copy = demo._retargeted_copy(tmp_path, 9090, 9091)
    text = demo.describe(copy)
    run_dir = cli.load_gateway_config(copy).run_dir
    assert f"config {copy}" in text and f"run dir {run_dir}" in text
    assert f"coproc status --config {copy}" in text


def test_serve_requires_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["serve"])
    assert done.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_bad_config_exits_78_with_the_message(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "coproc.json"
    config.write_text(json.dumps({"listen_port": "eighty"}))
    assert cli.main(["serve", "--config", str(config)]) == 78
    err = capsys.readouterr().err
    assert str(config) in err and "listen_port" in err and "Fix:" in err


def test_broken_api_definition_exits_78_with_strict(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "broken.json").write_text("{ not json")
    config = tmp_path / "coproc.json"
    config.write_text(json.dumps({"app_path": "apps",
                                  "coproc": {"run_dir": str(tmp_path / "run")}}))
    assert cli.main(["serve", "--strict", "--config", str(config)]) == 78
    assert "broken.json" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_demo_retargets_a_copy_and_leaves_the_shipped_files(tmp_path: Path) -> None:
    shipped = demo.shipped_config()
    assert shipped.is_file(), f"the shipped config {shipped} is missing"
    before = {p: p.read_bytes() for p in shipped.parent.glob("apps/*.json")}
    copy = demo._retargeted_copy(tmp_path, 9090, 9091)
    assert json.loads(copy.read_text())["listen_port"] == 9090
    targets = [json.loads(p.read_text())["proxy"]["target_url"]
               for p in (copy.parent / "apps").glob("*.json")]
    assert targets and all(":8081" not in t for t in targets)
    assert any(":9091" in t for t in targets)
    assert before == {p: p.read_bytes() for p in shipped.parent.glob("apps/*.json")}
