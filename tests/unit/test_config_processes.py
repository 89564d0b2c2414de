"""`coproc.gateway.processes` and what each gateway process reads differently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from config import ConfigError
from config.cpus import usable_cpus
from config.gateway import for_process, parse_gateway_config


def test_processes_is_a_count_or_auto() -> None:
    cfg = parse_gateway_config({}, Path("/x/coproc.json"))
    assert cfg.gateway.processes == 1 and cfg.gateway.accept == "reuseport"
    assert parse_gateway_config({"coproc": {"gateway": {"processes": 3}}},
                                Path("/x/c.json")).gateway.processes == 3
    auto = parse_gateway_config({"coproc": {"gateway": {"processes": "auto"}}},
                                Path("/x/c.json"))
    assert auto.gateway.processes == usable_cpus() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("value, problem", [(0, "must be >= 1"), ("many", "unknown value"),
                                            (1000, "<= 256")])
def test_a_bad_count_names_the_field_and_the_fix(value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_gateway_config({"coproc": {"gateway": {"processes": value}}}, Path("/x/c.json"))
    assert "coproc.gateway.processes" in str(err.value) and problem in str(err.value)
    assert "Fix:" in str(err.value)


def test_each_process_has_its_own_hooks_socket_metrics_port_and_analytics_file() -> None:
    cfg = parse_gateway_config(
        {"coproc": {"run_dir": "/run/c", "gateway": {"processes": 3},
                    "metrics": {"listen_port": 9464}}}, Path("/x/c.json"))
    assert cfg.hooks_endpoints == ("ipc:///run/c/hooks.sock", "ipc:///run/c/hooks-1.sock",
                                   "ipc:///run/c/hooks-2.sock")
    second = for_process(cfg, 2)
    assert second.hooks_endpoint == "ipc:///run/c/hooks-2.sock"
    assert second.metrics.listen_port == 9466 and cfg.metrics.listen_port == 9464
    assert second.analytics.file_path.name == "analytics-2.jsonl"
    assert for_process(cfg, 0) is cfg
    tcp = parse_gateway_config({"coproc": {"ipc": {"endpoint": "tcp://127.0.0.1:7000"},
                                           "gateway": {"processes": 2}}}, Path("/x/c.json"))
    assert tcp.hooks_endpoints == ("tcp://127.0.0.1:7000", "tcp://127.0.0.1:7001")


def _cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "self-cgroup").write_text(proc)
    return root, tmp_path / "self-cgroup"


def test_auto_follows_a_cgroup_v2_cpu_limit(tmp_path: Path) -> None:
    """A container limited to 1.5 CPUs gets 2 processes; "max" is no limit."""
    affinity = len(os.sched_getaffinity(0))
    root, proc = _cgroup(tmp_path, "0::/pod/c\n", {"pod/c/cpu.max": "150000 100000\n"})
    assert usable_cpus(root, proc) == min(affinity, 2)
    root, proc = _cgroup(tmp_path / "b", "0::/pod/c\n", {"pod/c/cpu.max": "50000 100000\n"})
    assert usable_cpus(root, proc) == 1
    root, proc = _cgroup(tmp_path / "c", "0::/pod/c\n", {"pod/c/cpu.max": "max 100000\n"})
    assert usable_cpus(root, proc) == affinity


def test_auto_follows_a_cgroup_v1_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    files = {"cpu,cpuacct/k/cpu.cfs_quota_us": "100000\n",
             "cpu,cpuacct/k/cpu.cfs_period_us": "100000\n"}
    root, proc = _cgroup(tmp_path, "4:cpu,cpuacct:/k\n3:memory:/k\n", files)
    assert usable_cpus(root, proc) == 1
    files["cpu,cpuacct/k/cpu.cfs_quota_us"] = "-1\n"
    root, proc = _cgroup(tmp_path / "b", "4:cpu,cpuacct:/k\n", files)
    assert usable_cpus(root, proc) == affinity
