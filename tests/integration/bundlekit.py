"""Test bundles and a real bundle server on loopback.

Bundles are made here independently of `supervisor.bundles.build` (checksum
and signature computed with hashlib and cryptography directly), so a test of
the build and verify code can fail.  `BundleServer` is an aiohttp app on
127.0.0.1 serving bundle files with ETags, and answering 404/500/slowly or
asking for credentials when a test says so.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import stat
import textwrap
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

TYK_IMPORTS = "from tyk.decorators import *\nfrom gateway import TykGateway as tyk\n"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def plugin_source(tag: str, hook: str = "BundlePre") -> str:
    """A pre hook that adds X-Bundle: <tag>."""
    return TYK_IMPORTS + textwrap.dedent(f'''
        @Hook
        def {hook}(request, session, spec):
            request.add_header("X-Bundle", {tag!r})
            return request, session
    ''')


@dataclass
class Keys:
    """An RSA key pair written as PEM files (PKCS#8 private, SubjectPublicKeyInfo public)."""

    private: rsa.RSAPrivateKey
    private_path: Path
    public_path: Path

    @classmethod
    def make(cls, directory: Path, name: str = "key") -> Keys:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_path, public_path = directory / f"{name}.pem", directory / f"{name}.pub.pem"
        private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        public_path.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return cls(key, private_path, public_path)

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data, padding.PKCS1v15(),
                                                  hashes.SHA256())).decode()


def manifest_for(files: dict[str, bytes], hooks: tuple[str, ...] = ("BundlePre",),
                 keys: Keys | None = None, **extra: Any) -> dict[str, Any]:
    data = b"".join(files.values())
    manifest: dict[str, Any] = {
        "file_list": list(files),
        "custom_middleware": {"driver": "python", "pre": [{"name": h} for h in hooks]},
        "checksum": hashlib.md5(data).hexdigest(),
        "signature": keys.sign(data) if keys else "",
    }
    manifest.update(extra)
    return manifest


def zip_bytes(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return out.getvalue()


def bundle_zip(tag: str, keys: Keys | None = None, tamper: bool = False,
               hooks: tuple[str, ...] = ("BundlePre",)) -> bytes:
    """A one-module bundle whose pre hook sets X-Bundle: tag (signed with `keys`)."""
    files = {"middleware.py": plugin_source(tag, hooks[0]).encode()}
    manifest = manifest_for(files, hooks, keys)
    if tamper:  # a file changed after signing
        files["middleware.py"] += b"\n# changed after signing\n"
    return zip_bytes({**files, "manifest.json": json.dumps(manifest).encode()})


def extract_dir(data: bytes, target: Path) -> Path:
    """Unpack a trusted test zip as a Tyk node would have left it."""
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        archive.extractall(target)
    return target


@dataclass
class Served:
    data: bytes
    etag: str
    fail_first: int = 0  # answer 500 to this many requests first
    status: int = 200
    delay_s: float = 0.0


@dataclass
class BundleServer:
    """aiohttp bundle server on 127.0.0.1; counts requests and records their headers."""

    bundles: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    answers: list[tuple[str, int]] = field(default_factory=list)
    required_auth: dict[str, str] = field(default_factory=dict)
    port: int = 0
    _runner: web.AppRunner | None = None

    def publish(self, name: str, data: bytes, **options: Any) -> None:
        self.bundles[name] = Served(data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"',
                                    **options)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bundles/"

    async def start(self) -> BundleServer:
        app = web.Application()
        app.router.add_get("/bundles/{name}", self._get)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, name: str, status: int | None = None) -> int:
        return sum(1 for n, s in self.answers if n == name and (status is None or s == status))

    async def _get(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append((name, dict(request.headers)))
        response = await self._answer(request, name)
        self.answers.append((name, response.status))
        return response

    async def _answer(self, request: web.Request, name: str) -> web.Response:
        for header, value in self.required_auth.items():
            if request.headers.get(header) != value:
                return web.Response(status=401)
        served = self.bundles.get(name)
        if served is None:
            return web.Response(status=404)
        if served.delay_s:
            await asyncio.sleep(served.delay_s)
        if served.fail_first > 0:
            served.fail_first -= 1
            return web.Response(status=500)
        if served.status != 200:
            return web.Response(status=served.status)
        if request.headers.get("If-None-Match") == served.etag:
            return web.Response(status=304, headers={"ETag": served.etag})
        return web.Response(body=served.data, headers={"ETag": served.etag},
                            content_type="application/zip")


class ServerThread:
    """A `BundleServer` on its own event loop thread, for tests that run `coproc serve`."""

    def __init__(self) -> None:
        self.server = BundleServer()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.server.url

    def publish(self, name: str, data: bytes, **options: Any) -> None:
        async def publish() -> None:
            self.server.publish(name, data, **options)
        asyncio.run_coroutine_threadsafe(publish(), self._loop).result(10)
