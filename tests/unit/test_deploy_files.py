"""deploy/: what can be checked without a container runtime or a cluster.

The Containerfile and the Kubernetes manifests cannot run here (no container
engine, no cluster); these tests check what is checkable offline: the YAML
parses, the fields a working deployment needs are present and agree with each
other and with Coproc's own config (the config in the ConfigMap loads, the
grace period covers the drain, probes hit /hello and /ready, secrets use names
Coproc reads)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from config.gateway import ENV_OVERRIDES, load_gateway_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _documents() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), path
            for key in ("apiVersion", "kind", "metadata"):
                assert key in doc, f"{path}: {key} missing"
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def _container() -> dict[str, Any]:
    pod = _documents()["Deployment/coproc"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container  # type: ignore[no-any-return]


def test_manifests_hold_what_a_deployment_needs() -> None:
    docs = _documents()
    assert {"Deployment/coproc", "Service/coproc", "PodDisruptionBudget/coproc",
            "ConfigMap/coproc-config", "ConfigMap/coproc-apis",
            "Secret/coproc-secrets"} <= set(docs)
    container = _container()
    assert container["livenessProbe"]["httpGet"]["path"] == "/hello"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    selector = docs["PodDisruptionBudget/coproc"]["spec"]["selector"]["matchLabels"]
    labels = docs["Deployment/coproc"]["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


def test_the_configmap_config_loads_and_the_grace_period_covers_the_drain(
        tmp_path: Path) -> None:
    data = _documents()["ConfigMap/coproc-config"]["data"]
    config = tmp_path / "coproc.json"
    config.write_text(data["coproc.json"])
    cfg = load_gateway_config(config, environ={})
    pod = _documents()["Deployment/coproc"]["spec"]["template"]["spec"]
    needed_s = (cfg.gateway.drain_grace_ms + cfg.supervisor.stop_grace_ms) / 1000
    assert pod["terminationGracePeriodSeconds"] > needed_s
    mounts = {m["mountPath"] for m in _container()["volumeMounts"]}
    assert {str(cfg.run_dir), str(cfg.app_path), str(cfg.middleware_path), "/dev/shm"} <= mounts
    apis = _documents()["ConfigMap/coproc-apis"]["data"]
    for name, text in apis.items():
        assert json.loads(text)["proxy"]["listen_path"], name


def test_secrets_use_names_coproc_reads() -> None:
    secret = _documents()["Secret/coproc-secrets"]["stringData"]
    assert set(secret) <= set(ENV_OVERRIDES)
    refs = _container()["envFrom"]
    assert {"secretRef": {"name": "coproc-secrets"}} in refs


def test_the_image_runs_coproc_serve_on_the_shipped_config(tmp_path: Path) -> None:
    text = (DEPLOY / "Containerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry is not None
    argv = json.loads(entry.group(1))
    assert argv[-4:] == ["coproc", "serve", "--config", "/etc/coproc/coproc.json"]
    assert "cp /src/deploy/container-coproc.json /etc/coproc/coproc.json" in text
    shipped = tmp_path / "coproc.json"
    shipped.write_text((DEPLOY / "container-coproc.json").read_text())
    cfg = load_gateway_config(shipped, environ={})
    assert cfg.listen_address == "0.0.0.0"
    assert str(cfg.run_dir) == "/run/coproc"
