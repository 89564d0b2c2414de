"""The bundle store against a real bundle server on loopback.

Each test runs `supervisor.bundles.BundleStore` in the test's event loop
against `bundlekit.BundleServer` (an aiohttp app on 127.0.0.1), with the
gateway config read by the real loader, and checks what the store reports,
what it writes (refs.json, the cache) and what `config` then loads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from integration.bundlekit import (
    BundleServer,
    Keys,
    bundle_zip,
    extract_dir,
    manifest_for,
    md5,
    plugin_source,
    zip_bytes,
)

from config import load_api_definitions, load_gateway_config
from config.bundles import read_refs
from config.gateway import GatewayConfig
from supervisor.bundles import BundleStore

FAST = {"timeout_ms": 1000, "retry_initial_ms": 20, "retry_max_ms": 100, "attempts": 5,
        "start_wait_ms": 5000}


@dataclass(frozen=True)
class Api:
    api_id: str
    custom_middleware_bundle: str
    active: bool = True


@pytest.fixture
async def server() -> AsyncIterator[BundleServer]:
    srv = await BundleServer().start()
    try:
        yield srv
    finally:
        await srv.stop()


def config(base: Path, server: BundleServer | None, keys: Keys | None = None,
           apis: dict[str, str] | None = None, **bundles: Any) -> GatewayConfig:
    """A gateway config under `base` (downloader on when `server`), API files from `apis`."""
    (base / "middleware").mkdir(parents=True, exist_ok=True)
    (base / "apps").mkdir(exist_ok=True)
    for api_id, bundle in (apis or {}).items():
        (base / "apps" / f"{api_id}.json").write_text(json.dumps({
            "api_id": api_id, "name": api_id, "custom_middleware_bundle": bundle,
            "proxy": {"listen_path": f"/{api_id}/", "target_url": "http://127.0.0.1:9/"}}))
    settings: dict[str, Any] = {"app_path": "apps", "middleware_path": "middleware",
                                "coproc": {"bundles": {**FAST, **bundles}}}
    if server is not None:
        settings.update(enable_bundle_downloader=True, bundle_base_url=server.url)
    if keys is not None:
        settings["public_key_path"] = str(keys.public_path)
    (base / "coproc.json").write_text(json.dumps(settings))
    return load_gateway_config(base / "coproc.json")


async def prepared(cfg: GatewayConfig, apis: list[Api], **kw: Any) -> tuple[BundleStore, Any]:
    store = BundleStore(cfg, **kw)
    report = await store.prepare(apis)
    return store, report


def outcome(report: Any, api_id: str) -> Any:
    return next(o for o in report.outcomes if o.api_id == api_id)


async def test_signed_bundle_verifies_and_loads(tmp_path: Path, server: BundleServer) -> None:
    """1. A bundle signed with the test key is published.
    2. The store downloads, verifies and caches it; refs.json names the object.
    3. The API definition then loads the manifest's hooks from that directory.
    """
    keys = Keys.make(tmp_path)
    server.publish("good.zip", bundle_zip("v1", keys))
    cfg = config(tmp_path, server, keys, apis={"a": "good.zip"})
    store, report = await prepared(cfg, [Api("a", "good.zip")])
    try:
        assert report.ok and report.unserved() == []
        got = outcome(report, "a")
        assert got.state == "ready" and got.source == "download"
        assert got.directory.parent == cfg.middleware_path / "bundles" / ".coproc" / "objects"
        refs = read_refs(cfg.middleware_path)
        assert refs is not None and refs["apis"]["a"]["good.zip"]["dir"] == str(got.directory)
        [api] = load_api_definitions(cfg)
        assert api.bundle_error == "" and api.bundle_dir == got.directory
        assert [h.name for h in api.custom_middleware.pre] == ["BundlePre"]
        # The sandboxed worker may run under another uid: it must be able to read.
        store_dir = cfg.middleware_path / "bundles" / ".coproc"
        for path, mode in ((store_dir, 0o755), (got.directory, 0o755),
                           (got.directory / "middleware.py", 0o644),
                           (store_dir / "refs.json", 0o644)):
            assert path.stat().st_mode & 0o777 == mode, path
    finally:
        await store.close()


@pytest.mark.parametrize(("case", "expected"), [
    ("other key", "invalid signature"),
    ("unsigned", "Bundle isn't signed"),
    ("tampered", "invalid checksum"),
])
async def test_bad_bundles_are_refused_fresh(tmp_path: Path, server: BundleServer, case: str,
                                             expected: str) -> None:
    """A bundle signed by another key, unsigned, or changed after signing is refused;
    nothing of it is left in the cache, and the other API is served."""
    keys, other = Keys.make(tmp_path, "key"), Keys.make(tmp_path, "other")
    data = {"other key": bundle_zip("x", other), "unsigned": bundle_zip("x"),
            "tampered": bundle_zip("x", keys, tamper=True)}[case]
    server.publish("bad.zip", data)
    server.publish("good.zip", bundle_zip("ok", keys))
    cfg = config(tmp_path, server, keys)
    store, report = await prepared(cfg, [Api("bad", "bad.zip"), Api("good", "good.zip")])
    try:
        bad = outcome(report, "bad")
        assert bad.state == "failed" and expected in bad.reason, bad.reason
        assert "bad.zip" in bad.reason
        assert outcome(report, "good").state == "ready"
        assert report.unserved() == ["bad"]
        objects = list((cfg.middleware_path / "bundles" / ".coproc" / "objects").iterdir())
        assert len(objects) == 1  # only the good bundle
        assert not list((cfg.middleware_path / "bundles" / ".coproc" / "tmp").iterdir())
        refs = read_refs(cfg.middleware_path)
        assert refs is not None and expected in refs["apis"]["bad"]["bad.zip"]["error"]
        assert "127.0.0.1" not in refs["apis"]["bad"]["bad.zip"]["error"]  # no URL for /hello
    finally:
        await store.close()


async def test_tampered_and_unsigned_cached_bundles_are_refused(tmp_path: Path,
                                                                server: BundleServer) -> None:
    """1. A signed bundle is downloaded and cached.
    2. A file of the cached copy is changed; with the downloader off, the cached copy
       is refused at the next start.
    3. An unsigned bundle in Tyk 5's layout is refused with a key set (stricter than Tyk)
       and loaded without one.
    """
    keys = Keys.make(tmp_path)
    server.publish("b.zip", bundle_zip("v1", keys))
    cfg = config(tmp_path, server, keys)
    store, report = await prepared(cfg, [Api("a", "b.zip")])
    await store.close()
    directory = outcome(report, "a").directory
    (directory / "middleware.py").write_text(plugin_source("evil"))
    offline = config(tmp_path, None, keys)
    store, report = await prepared(offline, [Api("a", "b.zip")])
    await store.close()
    assert outcome(report, "a").state == "failed"
    assert "invalid checksum" in outcome(report, "a").reason
    tyk = cfg.middleware_path / "bundles" / md5("plain.zip")
    extract_dir(bundle_zip("plain"), tyk)
    store, report = await prepared(offline, [Api("p", "plain.zip")])
    await store.close()
    assert "Bundle isn't signed" in outcome(report, "p").reason
    unsigned_ok = config(tmp_path, None)
    store, report = await prepared(unsigned_ok, [Api("p", "plain.zip")])
    await store.close()
    assert outcome(report, "p").state == "ready" and outcome(report, "p").source == "tyk5"
    assert tyk.is_dir()  # Tyk's directories are never deleted


@pytest.mark.parametrize(("entries", "symlinks", "expected"), [
    ({"../evil.py": b"x"}, {}, "'../evil.py'"),
    ({"/etc/evil.py": b"x"}, {}, "'/etc/evil.py'"),
    ({}, {"link.py": "/etc/passwd"}, "'link.py': symbolic link"),
    ({"bomb.bin": b"\0" * (50 * 1024 * 1024)}, {}, "'bomb.bin'"),
])
async def test_unsafe_archives_are_refused(tmp_path: Path, server: BundleServer,
                                           entries: dict[str, bytes], symlinks: dict[str, str],
                                           expected: str) -> None:
    """Zip slip (relative and absolute), symlinks and a zip bomb are refused, each
    refusal naming the bundle and the entry; nothing is written outside the cache."""
    files = {"middleware.py": plugin_source("x").encode()}
    archive = zip_bytes({**files, **entries, "manifest.json": json.dumps(
        manifest_for(files)).encode()}, symlinks)
    server.publish("unsafe.zip", archive)
    cfg = config(tmp_path, server)
    store, report = await prepared(cfg, [Api("u", "unsafe.zip")])
    await store.close()
    got = outcome(report, "u")
    assert got.state == "failed" and "'unsafe.zip'" in got.reason and expected in got.reason, \
        got.reason
    assert not (tmp_path / "middleware" / "bundles" / "evil.py").exists()
    assert not (cfg.middleware_path / "bundles" / ".coproc" / "evil.py").exists()
    assert not list((cfg.middleware_path / "bundles" / ".coproc" / "tmp").iterdir())


async def test_server_failing_twice_then_answering_is_retried(tmp_path: Path,
                                                              server: BundleServer) -> None:
    server.publish("flaky.zip", bundle_zip("v1"), fail_first=2)
    cfg = config(tmp_path, server)
    store, report = await prepared(cfg, [Api("f", "flaky.zip")])
    await store.close()
    assert outcome(report, "f").state == "ready"
    assert server.count("flaky.zip", 500) == 2 and server.count("flaky.zip", 200) == 1


async def test_unreachable_bundle_fails_only_its_api(tmp_path: Path, server: BundleServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A bundle that answers 404 (and one that never answers in time) leaves its API
    unserved with the reason; the other API is ready; credentials never appear."""
    server.publish("ok.zip", bundle_zip("ok"))
    server.publish("slow.zip", bundle_zip("slow"), delay_s=5)
    cfg = config(tmp_path, server, timeout_ms=200, attempts=2)
    masked = load_gateway_config(cfg.path)
    (tmp_path / "coproc.json").write_text(json.dumps({
        **json.loads(cfg.path.read_text()),
        "bundle_base_url": server.url.replace("http://", "http://user:s3cret@")}))
    cfg = load_gateway_config(cfg.path)
    assert masked.bundles.base_url != cfg.bundles.base_url
    caplog.set_level(logging.INFO)
    store, report = await prepared(cfg, [Api("ok", "ok.zip"), Api("gone", "missing.zip"),
                                         Api("slow", "slow.zip")])
    await store.close()
    assert outcome(report, "ok").state == "ready"
    gone, slow = outcome(report, "gone"), outcome(report, "slow")
    assert gone.state == "failed" and "HTTP status 404" in gone.reason
    assert slow.state == "failed" and "timeout" in slow.reason
    assert "***@127.0.0.1" in gone.reason and "s3cret" not in gone.reason
    assert "s3cret" not in caplog.text and "missing.zip" in caplog.text
    assert report.unserved() == ["gone", "slow"]
    _name, headers = server.requests[0]
    assert headers.get("Authorization", "").startswith("Basic ")  # the URL's credentials


async def test_configured_headers_are_sent(tmp_path: Path, server: BundleServer) -> None:
    server.required_auth = {"Authorization": "Bearer t0ken"}
    server.publish("auth.zip", bundle_zip("a"))
    cfg = config(tmp_path, server, headers={"Authorization": "Bearer t0ken"})
    store, report = await prepared(cfg, [Api("a", "auth.zip")])
    await store.close()
    assert outcome(report, "a").state == "ready"


async def test_start_wait_then_background_completion(tmp_path: Path,
                                                     server: BundleServer) -> None:
    """1. One bundle answers after 0.6 s; start-up waits 0.1 s: it is pending.
    2. When it arrives, refs.json names it and on_change asks for a reload."""
    server.publish("late.zip", bundle_zip("late"), delay_s=0.6)
    server.publish("now.zip", bundle_zip("now"))
    cfg = config(tmp_path, server, start_wait_ms=100)
    changed: list[str] = []
    store, report = await prepared(cfg, [Api("late", "late.zip"), Api("now", "now.zip")],
                                   on_change=changed.append)
    try:
        assert outcome(report, "now").state == "ready"
        assert outcome(report, "late").state == "pending"
        refs = read_refs(cfg.middleware_path)
        assert refs is not None and refs["apis"]["late"]["late.zip"]["dir"] == ""
        for _ in range(100):
            if changed:
                break
            await asyncio.sleep(0.05)
        assert changed == ["late.zip"]
        refs = read_refs(cfg.middleware_path)
        assert refs is not None and refs["apis"]["late"]["late.zip"]["dir"]
    finally:
        await store.close()


async def test_new_version_conditional_get_and_refused_reload(tmp_path: Path,
                                                              server: BundleServer) -> None:
    """1. v1 is downloaded. 2. A refresh revalidates it with If-None-Match: 304.
    3. v2 under the same name: the refresh switches refs.json to it.
    4. A tampered v3: the refresh is refused with the reason; refs.json keeps v2.
    5. Once no worker uses them, old objects are removed."""
    keys = Keys.make(tmp_path)
    server.publish("b.zip", bundle_zip("v1", keys))
    cfg = config(tmp_path, server, keys)
    apis = [Api("a", "b.zip")]
    store, report = await prepared(cfg, apis)
    try:
        v1 = outcome(report, "a").directory
        report = await store.refresh(apis)
        assert report.ok and outcome(report, "a").directory == v1
        assert server.count("b.zip", 304) == 1
        server.publish("b.zip", bundle_zip("v2", keys))
        report = await store.refresh(apis)
        v2 = outcome(report, "a").directory
        assert report.ok and v2 != v1 and "'v2'" in (v2 / "middleware.py").read_text()
        assert read_refs(cfg.middleware_path)["apis"]["a"]["b.zip"]["dir"] == str(v2)
        server.publish("b.zip", bundle_zip("v3", keys, tamper=True))
        report = await store.refresh(apis)
        assert not report.ok and "invalid checksum" in report.refused[0]
        assert read_refs(cfg.middleware_path)["apis"]["a"]["b.zip"]["dir"] == str(v2)
        assert v1.exists()  # the draining generation may still use it
        store.release()
        assert not v1.exists() and v2.exists()
    finally:
        await store.close()


async def test_tyk_layouts_and_bundle_lists(tmp_path: Path) -> None:
    """Directories copied from Tyk 5 (single and list) and Tyk 3 nodes load with the
    downloader off; a comma-separated list merges its manifests' hooks."""
    cfg = config(tmp_path, None, apis={"t5": "five.zip", "t3": "three.zip",
                                        "many": "one.zip, two.zip"})
    bundles = cfg.middleware_path / "bundles"
    extract_dir(bundle_zip("five"), bundles / md5("five.zip"))
    extract_dir(bundle_zip("three"), bundles / f"t3_{md5('three.zip')}")
    extract_dir(bundle_zip("one", hooks=("OnePre",)), bundles / md5("one.zip, two.zip") / "one")
    extract_dir(bundle_zip("two", hooks=("TwoPre",)), bundles / md5("one.zip, two.zip") / "two")
    apis = load_api_definitions(cfg)
    store, report = await prepared(cfg, apis)
    await store.close()
    assert report.unserved() == [], report.outcomes
    assert {(o.api_id, o.source) for o in report.outcomes} == {
        ("t5", "tyk5"), ("t3", "tyk3"), ("many", "tyk5")}
    by_id = {api.api_id: api for api in load_api_definitions(cfg)}
    assert [h.name for h in by_id["many"].custom_middleware.pre] == ["OnePre", "TwoPre"]
    assert len(by_id["many"].bundle_dirs) == 2
    assert by_id["t3"].bundle_dir == bundles / f"t3_{md5('three.zip')}"


async def test_interrupted_extraction_is_never_trusted(tmp_path: Path,
                                                       server: BundleServer) -> None:
    """A partial directory left in the cache's tmp/ (a crash mid-extraction) is removed
    at the next start and never loaded."""
    cfg = config(tmp_path, server)
    partial = cfg.middleware_path / "bundles" / ".coproc" / "tmp" / "x-partial"
    partial.mkdir(parents=True)
    (partial / "manifest.json").write_text("{}")
    server.publish("b.zip", bundle_zip("v1"))
    store, report = await prepared(cfg, [Api("a", "b.zip")])
    await store.close()
    assert not partial.exists() and outcome(report, "a").state == "ready"
    shutil.rmtree(cfg.middleware_path / "bundles")


def test_bundle_disabled_and_stale_hook_paths(tmp_path: Path) -> None:
    """With a bundle, the definition's hook paths are never looked at (Tyk ignores
    them); with custom_middleware_bundle_disabled the definition's own hooks apply."""
    cfg = config(tmp_path, None)
    stale = {"driver": "python", "pre": [{"name": "Old", "path": "/opt/tyk/mw/nowhere.py"}]}
    (tmp_path / "apps" / "a.json").write_text(json.dumps({
        "api_id": "a", "custom_middleware_bundle": "x.zip", "custom_middleware": stale,
        "proxy": {"listen_path": "/a/", "target_url": "http://127.0.0.1:9/"}}))
    [api] = load_api_definitions(cfg)
    assert "x.zip" in api.bundle_error and api.bundle_dir is None
    (tmp_path / "middleware" / "own.py").write_text(plugin_source("own", "Own"))
    (tmp_path / "apps" / "a.json").write_text(json.dumps({
        "api_id": "a", "custom_middleware_bundle": "x.zip",
        "custom_middleware_bundle_disabled": True,
        "custom_middleware": {"driver": "python", "pre": [{"name": "Own", "path": "own.py"}]},
        "proxy": {"listen_path": "/a/", "target_url": "http://127.0.0.1:9/"}}))
    [api] = load_api_definitions(cfg)
    assert api.custom_middleware_bundle == "" and api.bundle_error == ""
    assert api.custom_middleware.pre[0].path.endswith("own.py")


async def test_reload_during_a_late_download_takes_it_over(tmp_path: Path,
                                                          server: BundleServer) -> None:
    """A refresh while a start-up download is still running waits for that download
    (one request, not two) and settles it; no extra reload is asked for."""
    server.publish("late.zip", bundle_zip("late"), delay_s=0.5)
    cfg = config(tmp_path, server, start_wait_ms=50)
    changed: list[str] = []
    store, report = await prepared(cfg, [Api("late", "late.zip")], on_change=changed.append)
    try:
        assert outcome(report, "late").state == "pending"
        report = await store.refresh([Api("late", "late.zip")], wait_s=5)
        assert outcome(report, "late").state == "ready"
        await asyncio.sleep(0.1)  # let any stray completion callback run
        assert changed == [] and server.count("late.zip") == 1
    finally:
        await store.close()


async def test_file_base_url(tmp_path: Path) -> None:
    """bundle_base_url may be a file:// directory (Tyk's third scheme)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "f.zip").write_bytes(bundle_zip("file"))
    cfg = config(tmp_path / "gw", None)
    settings = json.loads(cfg.path.read_text())
    settings.update(enable_bundle_downloader=True, bundle_base_url=f"file://{served}/")
    cfg.path.write_text(json.dumps(settings))
    store, report = await prepared(load_gateway_config(cfg.path),
                                   [Api("f", "f.zip"), Api("g", "gone.zip")])
    await store.close()
    assert outcome(report, "f").state == "ready" and outcome(report, "f").source == "download"
    assert "cannot read the file" in outcome(report, "g").reason
