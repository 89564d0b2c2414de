"""`coproc bundle build|verify`, checksum vectors, and signatures made by openssl.

The CLI runs through `supervisor.cli.main` (its real argument parsing); the
openssl test signs with the `openssl` binary, never with our code.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from integration.bundlekit import Keys, manifest_for, plugin_source, zip_bytes

from supervisor.bundles.extract import ExtractLimits, UnsafeBundle, extract_zip
from supervisor.bundles.verify import (
    VerifyError,
    checksum_hex,
    listed_bytes,
    load_public_key,
    read_manifest,
    verify_directory,
)
from supervisor.cli import main


def test_checksum_vectors(tmp_path: Path) -> None:
    assert checksum_hex(b"") == "d41d8cd98f00b204e9800998ecf8427e"
    (tmp_path / "file1").write_text("file1 content")
    (tmp_path / "file2").write_text("file2 content")
    manifest = read_manifest(json.dumps({"file_list": ["file1", "file2"]}).encode(), "t")
    assert checksum_hex(listed_bytes(tmp_path, manifest, "t")) == \
        "1510d0e71b31de1c78fd9e823a7c6de9"


def write_plugin(directory: Path, manifest: dict[str, object] | None = None) -> Path:
    (directory / "middleware.py").write_text(plugin_source("built"))
    (directory / "helpers.py").write_text("VALUE = 1\n")
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest or {
        "file_list": ["middleware.py", "helpers.py"],
        "custom_middleware": {"driver": "python", "pre": [{"name": "BundlePre"}]}}))
    return path


def test_build_then_verify_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """1. Build with a traditional `RSA PRIVATE KEY`. 2. Verify with the matching
    `RSA PUBLIC KEY` and with a `PUBLIC KEY`: OK. 3. Another key: refused.
    4. The archive holds the listed files and a manifest with checksum and signature."""
    keys = Keys.make(tmp_path)
    rsa_private = tmp_path / "rsa.pem"
    rsa_private.write_bytes(keys.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    assert rsa_private.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    rsa_public = tmp_path / "rsa.pub.pem"
    rsa_public.write_bytes(keys.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    manifest = write_plugin(tmp_path)
    out = tmp_path / "bundle.zip"
    assert main(["bundle", "build", "-m", str(manifest), "-o", str(out), "-k",
                 str(rsa_private)]) == 0
    for public in (rsa_public, keys.public_path):
        assert main(["bundle", "verify", str(out), "--key", str(public)]) == 0
    assert "signature and checksum OK" in capsys.readouterr().out
    other = Keys.make(tmp_path, "other")
    assert main(["bundle", "verify", str(out), "--key", str(other.public_path)]) == 1
    assert "invalid signature" in capsys.readouterr().err
    with zipfile.ZipFile(out) as archive:
        assert sorted(archive.namelist()) == ["helpers.py", "manifest.json", "middleware.py"]
        built = json.loads(archive.read("manifest.json"))
    data = (tmp_path / "middleware.py").read_bytes() + (tmp_path / "helpers.py").read_bytes()
    assert built["checksum"] == checksum_hex(data) and built["signature"]


def test_build_checks_like_tyk(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        "nonexistent file: ghost.py": {"file_list": ["ghost.py"], "custom_middleware": {
            "driver": "python", "pre": [{"name": "X"}]}},
        "no hooks defined": {"file_list": [], "custom_middleware": {"driver": "python"}},
        "no driver specified": {"file_list": [], "custom_middleware": {
            "pre": [{"name": "X"}]}},
    }
    for expected, manifest in cases.items():
        path = write_plugin(tmp_path, manifest)
        assert main(["bundle", "build", "-m", str(path), "-o", str(tmp_path / "b.zip"),
                     "-y"]) == 1
        assert expected in capsys.readouterr().err
    path = write_plugin(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal to ask on
    assert main(["bundle", "build", "-m", str(path), "-o", str(tmp_path / "b.zip")]) == 1
    assert "pass -y" in capsys.readouterr().err
    assert main(["bundle", "build", "-m", str(path), "-o", str(tmp_path / "b.zip"), "-y"]) == 0
    assert main(["bundle", "verify", str(tmp_path / "b.zip")]) == 0
    keys = Keys.make(tmp_path)
    assert main(["bundle", "verify", str(tmp_path / "b.zip"), "--key",
                 str(keys.public_path)]) == 1
    assert "Bundle isn't signed" in capsys.readouterr().err


def test_openssl_signature_verifies(tmp_path: Path) -> None:
    """A signature made with `openssl dgst -sha256 -sign` over the concatenated files."""
    subprocess.run(["openssl", "genrsa", "-out", str(tmp_path / "priv.pem"), "2048"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(tmp_path / "priv.pem"), "-pubout", "-out",
                    str(tmp_path / "pub.pem")], check=True, capture_output=True)
    files = {"middleware.py": plugin_source("ossl").encode(), "helpers.py": b"VALUE = 2\n"}
    (tmp_path / "data.bin").write_bytes(b"".join(files.values()))
    subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(tmp_path / "priv.pem"),
                    "-out", str(tmp_path / "sig.bin"), str(tmp_path / "data.bin")],
                   check=True, capture_output=True)
    manifest = manifest_for(files)
    manifest["signature"] = base64.b64encode((tmp_path / "sig.bin").read_bytes()).decode()
    bundle = tmp_path / "ossl.zip"
    bundle.write_bytes(zip_bytes({**files, "manifest.json": json.dumps(manifest).encode()}))
    assert main(["bundle", "verify", str(bundle), "--key", str(tmp_path / "pub.pem")]) == 0
    extracted = tmp_path / "x"
    extracted.mkdir()
    extract_zip(bundle.read_bytes(), extracted, "ossl.zip", ExtractLimits())
    key = load_public_key(tmp_path / "pub.pem")
    verify_directory(extracted, key, "ossl.zip")
    (extracted / "helpers.py").write_text("VALUE = 3\n")
    with pytest.raises(VerifyError, match="invalid checksum"):
        verify_directory(extracted, key, "ossl.zip")


def test_extraction_limits(tmp_path: Path) -> None:
    """Entry count and total size limits; a duplicate name; each names the entry."""
    many = zip_bytes({f"f{i}.py": b"x" for i in range(5)})
    with pytest.raises(UnsafeBundle, match="5 entries"):
        extract_zip(many, tmp_path / "a", "many.zip", ExtractLimits(max_entries=4))
    big = zip_bytes({"big.bin": bytes(range(256)) * 4096})
    with pytest.raises(UnsafeBundle, match=r"'big\.bin' goes over max_total_bytes"):
        extract_zip(big, tmp_path / "b", "big.zip", ExtractLimits(max_total_bytes=4096))
    with pytest.raises(UnsafeBundle, match="not a zip archive"):
        extract_zip(b"not a zip", tmp_path / "c", "junk.zip", ExtractLimits())
