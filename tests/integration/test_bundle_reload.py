"""Bundles through `coproc serve`: downloaded by the supervisor, served, rotated, refused.

A real bundle server (aiohttp on 127.0.0.1, on its own thread) serves the
bundles; `coproc serve` downloads them at start and on `coproc reload`.
"Failed" under load means any answer but 200 or any connection error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from integration.bundlekit import Keys, ServerThread, bundle_zip
from integration.harness import (
    EchoUpstream,
    Load,
    Response,
    api_def,
    echo_header,
    poll,
)

from config.bundles import store_root
from tests.conftest import InstanceFactory


def bundled_api(api_id: str, bundle: str, echo: EchoUpstream) -> dict[str, Any]:
    return api_def(api_id, f"/{api_id}/", echo.url, custom_middleware_bundle=bundle,
                   custom_middleware={"driver": "python", "pre": [
                       {"name": "Stale", "path": "written/for/the/tyk/node.py"}]})


def downloader(server: ServerThread, keys: Keys | None = None, **bundles: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "enable_bundle_downloader": True,
        "bundle_base_url": server.url.replace("http://", "http://user:s3cret@"),
        "coproc": {"bundles": {"timeout_ms": 1000, "retry_initial_ms": 50, "retry_max_ms": 200,
                               "attempts": 2, "start_wait_ms": 5000, **bundles}}}
    if keys is not None:
        settings["public_key_path"] = str(keys.public_path)
    return settings


def test_unfetchable_bundle_leaves_only_its_api_unserved(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """1. API ok's bundle is served; API gone's bundle answers 404.
    2. ok serves its hook (the definition's own stale hook path is ignored);
       gone answers 500; /hello names gone and its bundle with the reason, no URL.
    3. `coproc status --json` has the masked URL; the log never has the password.
    """
    with ServerThread() as server:
        server.publish("ok.zip", bundle_zip("ok"))
        inst = coproc_factory({"ok": bundled_api("ok", "ok.zip", echo_upstream),
                               "gone": bundled_api("gone", "gone.zip", echo_upstream)},
                              {}, downloader(server))
        echo = inst.expect(inst.get("/ok/x"), 200).json()
        assert echo_header(echo, "X-Bundle") == "ok"
        assert inst.get("/gone/x").status == 500
        hello = inst.expect(inst.hello(), 200).json()
        assert hello["details"]["api:gone"]["output"] == "bundle gone.zip unusable"
        assert "api:ok" not in hello["details"]
        assert "127.0.0.1" not in json.dumps(hello) and "404" not in json.dumps(hello)
        report = inst.worker()["plugins"]
        assert report["ok"]["ok"] and not report["gone"]["ok"]
        assert "gone.zip" in report["gone"]["error"]
        assert "HTTP status 404" in report["gone"]["error"]
        done = inst.ctl("status", "--json")
        assert done.returncode == 0, done.stderr
        bundles = {b["api_id"]: b for b in json.loads(done.stdout)["bundles"]}
        assert bundles["ok"]["state"] == "ready" and bundles["gone"]["state"] == "failed"
        assert "***@127.0.0.1" in bundles["gone"]["reason"]
        assert "s3cret" not in done.stdout and "s3cret" not in inst.logs(200_000)


def bundle_of(resp: Response) -> str:
    """Which bundle's hook stamped this response."""
    return echo_header(resp.json(), "X-Bundle") or ""


def seen(load: Load) -> list[str]:
    return [bundle for _, bundle in load.results]


def test_publish_v2_under_load_then_tampered_v3_is_refused(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream, tmp_path: Path) -> None:
    """1. Serve signed v1 of b.zip under steady load.
    2. Publish v2 under the same name; `coproc reload`: exit 0; v2 serves; 0 failed;
       once the v1 generation has exited, v1's cached copy is removed.
    3. Publish a tampered v3; `coproc reload`: exit 1 naming the checksum; v2 keeps
       serving; 0 failed.
    """
    keys = Keys.make(tmp_path)
    with ServerThread() as server:
        server.publish("b.zip", bundle_zip("v1", keys))
        inst = coproc_factory({"b": bundled_api("b", "b.zip", echo_upstream)}, {},
                              downloader(server, keys))
        with Load(inst, "/b/x", threads=4, keep=bundle_of) as load:
            poll("v1 answers", lambda: seen(load).count("v1") > 10, 20)
            server.publish("b.zip", bundle_zip("v2", keys))
            done = inst.ctl("reload")
            assert done.returncode == 0, f"{done.stderr}\n{inst.logs()}"
            count = len(seen(load))
            poll("v2 answers", lambda: seen(load)[count:].count("v2") > 10, 20)
            objects = store_root(inst.base / "middleware") / "objects"
            poll("v1's cached copy removed", lambda: len(list(objects.iterdir())) == 1, 20)
            assert "'v2'" in (next(objects.iterdir()) / "middleware.py").read_text()
            server.publish("b.zip", bundle_zip("v3", keys, tamper=True))
            refused = inst.ctl("reload")
            assert refused.returncode == 1, refused.stdout
            assert "invalid checksum" in refused.stderr and "b.zip" in refused.stderr
            count = len(seen(load))
            poll("answers after the refusal", lambda: len(seen(load)) > count + 20, 20)
        assert not load.failures, f"{len(load.failures)} failed: {load.failures[:5]}"
        assert set(seen(load)[count:]) == {"v2"}
        assert echo_header(inst.get("/b/x").json(), "X-Bundle") == "v2"
    print(f"\n{len(seen(load))} requests, v1 -> v2 -> refused v3, 0 failed")


def test_a_late_bundle_is_served_once_it_arrives(
        coproc_factory: InstanceFactory, echo_upstream: EchoUpstream) -> None:
    """1. late.zip answers after 3 s; start-up waits 0.3 s for bundles.
    2. The instance serves without it: the other API answers; the log says late waits.
    3. When late.zip arrives the supervisor reloads by itself: late's hook runs."""
    with ServerThread() as server:
        server.publish("late.zip", bundle_zip("late"), delay_s=3)
        server.publish("now.zip", bundle_zip("now"))
        inst = coproc_factory({"late": bundled_api("late", "late.zip", echo_upstream),
                               "now": bundled_api("now", "now.zip", echo_upstream)},
                              {}, downloader(server, start_wait_ms=300, timeout_ms=5000))
        assert echo_header(inst.expect(inst.get("/now/x"), 200).json(), "X-Bundle") == "now"
        assert "API late waits for bundle 'late.zip'" in inst.logs(200_000)

        def late_served() -> bool:
            resp = inst.get("/late/x")
            return resp.status == 200 and echo_header(resp.json(), "X-Bundle") == "late"
        poll("late.zip served after it arrived", late_served, 30)
