"""Making and checking bundle archives: what `coproc bundle build|verify` do.

`build_bundle` follows Tyk's bundler: the manifest must list files that exist
(relative to the manifest's directory), define at least one hook and set a
driver; the archive holds the listed files and a manifest with `checksum`
(hex MD5 of the listed files concatenated) and `signature` (base64 RSA
PKCS#1 v1.5 over their SHA-256, with a PEM `RSA PRIVATE KEY` or `PRIVATE
KEY`) filled in — the same bytes Tyk writes and checks, so bundles move
between Tyk and Coproc either way.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from supervisor.bundles.extract import ExtractLimits, extract_zip
from supervisor.bundles.verify import (
    Manifest,
    PublicKey,
    checksum_hex,
    verify_directory,
)

__all__ = ["BuildError", "build_bundle", "sign", "verify_archive"]

_HOOK_LISTS = ("pre", "post", "post_key_auth", "response")


class BuildError(Exception):
    """The manifest or a key cannot make a bundle; the message says which and why."""


def _load_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise BuildError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    except ValueError as exc:
        raise BuildError(f"{path}: the manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BuildError(f"{path}: the manifest must be a JSON object")
    return manifest


def _check(manifest: dict[str, Any], base: Path, where: Path) -> list[str]:
    files = manifest.get("file_list") or []
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise BuildError(f"{where}: file_list must be a list of file names")
    for name in files:
        if not (base / name).is_file():
            raise BuildError(f"{where}: file_list references a nonexistent file: {name}")
    middleware = manifest.get("custom_middleware")
    if not isinstance(middleware, dict):
        raise BuildError(f"{where}: custom_middleware is missing: no hooks defined")
    hooks = sum(len(middleware.get(p) or []) for p in _HOOK_LISTS)
    for single in ("auth_check", "traffic_logs"):
        entry = middleware.get(single)
        hooks += bool(isinstance(entry, dict) and entry.get("name"))
    if not hooks:
        raise BuildError(f"{where}: no hooks defined in custom_middleware")
    if not middleware.get("driver"):
        raise BuildError(f"{where}: no driver specified (custom_middleware.driver, e.g. python)")
    return files


def sign(data: bytes, key_path: Path) -> str:
    """base64 RSA PKCS#1 v1.5 signature over SHA-256 of `data`."""
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise BuildError(f"{key_path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BuildError(f"{key_path}: bundles are signed with RSA keys")
    return base64.b64encode(key.sign(data, padding.PKCS1v15(), hashes.SHA256())).decode()


def build_bundle(manifest_path: Path, output: Path, key_path: Path | None) -> dict[str, Any]:
    """Write the bundle; the manifest written into it."""
    manifest = _load_manifest(manifest_path)
    base = manifest_path.parent
    files = _check(manifest, base, manifest_path)
    data = b"".join((base / name).read_bytes() for name in files)
    manifest["checksum"] = checksum_hex(data)
    manifest["signature"] = sign(data, key_path) if key_path is not None else ""
    tmp = output.with_name(f".{output.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in files:
            archive.write(base / name, name)
        archive.writestr("manifest.json", json.dumps(manifest, indent=2))
    tmp.replace(output)
    return manifest


def verify_archive(archive: Path, key: PublicKey | None,
                   limits: ExtractLimits | None = None) -> Manifest:
    """Check a bundle file as a fresh download is checked; raise on any problem."""
    data = archive.read_bytes()
    tmp = Path(tempfile.mkdtemp(prefix="coproc-bundle-"))
    try:
        extract_zip(data, tmp, archive.name, limits or ExtractLimits())
        return verify_directory(tmp, key, f"bundle {archive.name!r}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
