"""TLS to Redis under Tyk's names, against a real TLS-only redis-server on loopback.

The test makes a CA, a server certificate for 127.0.0.1 and a client
certificate; the server speaks only TLS 1.2 and requires client certificates.

1. `use_ssl` + `ca_file` + `cert_file`/`key_file`: the storage works.
2. No client certificate, or a server the CA file does not vouch for: the
   storage is unavailable (never a silent plaintext fallback).
3. `ssl_insecure_skip_verify` accepts the unknown server certificate.
4. `tls_min_version: "1.3"` refuses the TLS 1.2-only server.
5. A `coproc serve` instance with these settings serves a key from it.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from integration.harness import HOST
from integration.redis_topologies import RedisNode
from integration.test_redis_scaleout import PLUGIN, SECRET, add_key, apis

from config.storage import StorageConfig
from gateway.storage import StorageUnavailable
from gateway.storage.redis import RedisStorage


def _cert(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
          ip: str = "", ca: bool = False) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _write(base: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey,
           ) -> tuple[Path, Path]:
    crt, pem = base / f"{name}.crt", base / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem


class TlsRedis(RedisNode):
    """A redis-server that listens only with TLS (its `port` is the TLS port)."""

    def __init__(self, base: Path) -> None:
        base.mkdir(parents=True, exist_ok=True)
        ca, ca_key = _cert("coproc test CA", None, ca=True)
        self.ca_file, _ = _write(base, "ca", ca, ca_key)
        self.client_cert, self.client_key = _write(base, "client", *_cert(
            "client", (ca.subject, ca_key)))
        server_cert, server_key = _write(base, "server", *_cert(
            "server", (ca.subject, ca_key), ip=HOST))
        super().__init__(base)
        # The plaintext port (set first by RedisNode) is switched off by the later --port 0.
        self.extra = ("--tls-port", str(self.port), "--port", "0",
                      "--tls-cert-file", str(server_cert), "--tls-key-file", str(server_key),
                      "--tls-ca-cert-file", str(self.ca_file), "--tls-auth-clients", "yes",
                      "--tls-protocols", "TLSv1.2")

    def command(self, *args: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self.client_cert, self.client_key)
        payload = f"*{len(args)}\r\n".encode() + b"".join(
            f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as raw, \
                    context.wrap_socket(raw, server_hostname=HOST) as s:
                s.sendall(payload)
                return s.recv(65536)
        except OSError:
            return b""

    def storage(self, **changes: Any) -> StorageConfig:
        cfg = StorageConfig(type="redis", host=HOST, port=self.port, timeout_ms=2000,
                            use_ssl=True, ca_file=self.ca_file, cert_file=self.client_cert,
                            key_file=self.client_key)
        return replace(cfg, **changes)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path_factory.mktemp("redis-tls"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def verified(tls_redis: TlsRedis) -> AsyncIterator[RedisStorage]:
    store = RedisStorage(tls_redis.storage())
    try:
        yield store
    finally:
        await store.close()


async def test_verified_tls_with_a_client_certificate(verified: RedisStorage) -> None:
    await verified.set("tls-k", b"v")
    assert await verified.get("tls-k") == b"v"
    assert (await verified.rate_hit("tls-rate", 1, 1)).allowed
    assert verified.where.startswith("rediss://")


@pytest.mark.parametrize("changes", [
    {"cert_file": None, "key_file": None},  # the server requires a client certificate
    {"ca_file": None},  # the system CAs do not vouch for the test CA
    {"tls_min_version": "1.3"},  # the server speaks TLS 1.2 only
    {"use_ssl": False},  # plaintext to a TLS port
])
async def test_refused_tls_is_storage_unavailable(tls_redis: TlsRedis,
                                                  changes: dict[str, Any]) -> None:
    store = RedisStorage(tls_redis.storage(timeout_ms=1000, **changes))
    try:
        with pytest.raises(StorageUnavailable):
            await store.get("tls-k")
        assert not await store.ping()
    finally:
        await store.close()


async def test_insecure_skip_verify_accepts_an_unknown_server(tls_redis: TlsRedis) -> None:
    store = RedisStorage(tls_redis.storage(ca_file=None, ssl_insecure_skip_verify=True))
    try:
        assert await store.ping()
    finally:
        await store.close()


def test_an_instance_serves_keys_over_tls(coproc_factory: Any, echo_upstream: Any,
                                          tls_redis: TlsRedis) -> None:
    gw = coproc_factory(apis(echo_upstream.url), {"kv/mw.py": PLUGIN}, {
        "secret": SECRET,
        "storage": {"type": "redis", "addrs": [f"{HOST}:{tls_redis.port}"], "use_ssl": True,
                    "ca_file": str(tls_redis.ca_file), "cert_file": str(tls_redis.client_cert),
                    "key_file": str(tls_redis.client_key), "tls_min_version": "1.2"}})
    key = add_key(gw, {})
    gw.expect(gw.get("/keys/", {"Authorization": key}), 200)
    assert tls_redis.text("EXISTS", f"apikey-{key}").startswith(":1")
