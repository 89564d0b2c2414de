"""Tyk's bundle verification: MD5 checksum and RSA signature over the listed files.

The signed bytes are the contents of the manifest's `file_list` files,
concatenated in list order (never the manifest itself):

* `checksum` is the hex MD5 of those bytes;
* `signature` is base64 of RSA PKCS#1 v1.5 over their SHA-256, checked against
  `public_key_path` (PEM `PUBLIC KEY` or `RSA PUBLIC KEY`).

With a key set an unsigned bundle is refused ("Bundle isn't signed"), fresh or
cached: Coproc is stricter than Tyk here, which loads an unsigned *cached*
bundle whatever the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

__all__ = [
    "Manifest",
    "PublicKey",
    "VerifyError",
    "checksum_hex",
    "listed_bytes",
    "load_public_key",
    "read_manifest",
    "verify_bytes",
    "verify_directory",
]


class VerifyError(Exception):
    """The bundle fails its checksum or signature, or its manifest is unusable."""


@dataclass(frozen=True, slots=True)
class Manifest:
    file_list: tuple[str, ...]
    checksum: str
    signature: str
    raw: dict[str, Any]


class PublicKey:
    """The RSA key bundles are verified with."""

    def __init__(self, key: rsa.RSAPublicKey, path: Path) -> None:
        self.key, self.path = key, path

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True


def load_public_key(path: Path) -> PublicKey:
    """A PEM `PUBLIC KEY` or `RSA PUBLIC KEY`; ValueError naming the file otherwise."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{path}: bundles are signed with RSA; this is another kind of key")
    return PublicKey(key, path)


def read_manifest(data: bytes, where: str) -> Manifest:
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerifyError(f"{where}: manifest.json is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise VerifyError(f"{where}: manifest.json must be a JSON object")
    files = raw.get("file_list") or []
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise VerifyError(f"{where}: manifest file_list must be a list of file names")
    for name in files:
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or ".." in path.parts:
            raise VerifyError(f"{where}: file_list entry {name!r} leaves the bundle")
    checksum, signature = raw.get("checksum") or "", raw.get("signature") or ""
    if not isinstance(checksum, str) or not isinstance(signature, str):
        raise VerifyError(f"{where}: manifest checksum and signature must be strings")
    return Manifest(tuple(files), checksum, signature, raw)


def listed_bytes(directory: Path, manifest: Manifest, where: str) -> bytes:
    """The `file_list` files of an extracted bundle, concatenated in list order."""
    chunks = []
    for name in manifest.file_list:
        path = directory / name
        if path.is_symlink() or not path.is_file():
            raise VerifyError(f"{where}: file_list names {name!r}, which is not in the bundle")
        chunks.append(path.read_bytes())
    return b"".join(chunks)


def checksum_hex(data: bytes) -> str:
    # Tyk's checksum format; the signature (SHA-256) is what authenticates.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def verify_bytes(manifest: Manifest, data: bytes, key: PublicKey | None, where: str,
                 require_checksum: bool = True) -> None:
    """Raise VerifyError unless `data` matches the manifest (and the key, if any)."""
    if key is not None and not manifest.signature:
        raise VerifyError(f"{where}: Bundle isn't signed (public_key_path is set)")
    if manifest.checksum or require_checksum:
        actual = checksum_hex(data)
        if actual != manifest.checksum.lower():
            raise VerifyError(f"{where}: invalid checksum (manifest says "
                              f"{manifest.checksum or 'nothing'}, the files give {actual})")
    if key is None:
        return
    try:
        signature = base64.b64decode(manifest.signature, validate=True)
    except (binascii.Error, ValueError):
        raise VerifyError(f"{where}: the signature is not valid base64") from None
    if not key.verify(signature, data):
        raise VerifyError(f"{where}: invalid signature (not made by the key in {key.path})")


def verify_directory(directory: Path, key: PublicKey | None, where: str,
                     require_checksum: bool = True) -> Manifest:
    """Verify an extracted bundle in place; its manifest when it passes."""
    try:
        manifest = read_manifest((directory / "manifest.json").read_bytes(), where)
    except OSError as exc:
        raise VerifyError(f"{where}: no readable manifest.json ({exc.strerror})") from None
    verify_bytes(manifest, listed_bytes(directory, manifest, where), key, where,
                 require_checksum)
    return manifest
