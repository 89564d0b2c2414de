"""Obtaining one bundle name: Coproc's own verified copy, fresh, revalidated or cached.

`BundleInstaller.obtain(name, saved)` is the whole acquisition of one name:
reuse the cached object when it still verifies, revalidate it with a
conditional GET (or download it), extract the archive into a temporary
directory, verify it, and only then rename it into the content-addressed
cache (`cache.py`) and remember the object with its ETag / Last-Modified in
`state.json`.  It answers with an `Obtained`, never an exception for a bad
bundle or an unreachable server: what to serve and what to tell is the
`BundleStore`'s job (`store.py`), as is running these in the background.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.gateway import GatewayConfig
from config.reader import ConfigError
from supervisor.bundles.cache import BundleCache
from supervisor.bundles.extract import ExtractLimits, UnsafeBundle, extract_zip
from supervisor.bundles.fetch import Fetcher, FetchError, Validators, mask_url
from supervisor.bundles.verify import (
    PublicKey,
    VerifyError,
    load_public_key,
    read_manifest,
    verify_directory,
)

__all__ = ["BundleInstaller", "Obtained"]

log = logging.getLogger("supervisor.bundles")


@dataclass(frozen=True, slots=True)
class Obtained:
    """What the store has for one bundle name (Coproc's own copy)."""

    digest: str = ""
    directory: Path | None = None
    source: str = ""
    reason: str = ""  # why there is no (new) copy; set with a directory: a warning
    short: str = ""
    refused: str = ""  # a new version failed; `directory` is the version kept


class BundleInstaller:
    """Fetch, extract, verify and cache bundles of one instance; see the module docstring."""

    def __init__(self, cfg: GatewayConfig, cache: BundleCache) -> None:
        self._options = cfg.bundles
        self._cache = cache
        self._fetcher = Fetcher(self._options)
        self._limits = ExtractLimits(self._options.max_entries, self._options.max_total_bytes,
                                     self._options.max_ratio)
        self._key: PublicKey | None = None
        if self._options.public_key_path is not None:
            try:
                self._key = load_public_key(self._options.public_key_path)
            except ValueError as exc:
                raise ConfigError(cfg.path, "public_key_path", str(exc),
                                  "use a PEM RSA public key (PUBLIC KEY or RSA PUBLIC KEY)"
                                  ) from None
        self._warned = False

    async def obtain(self, name: str, saved: Any) -> Obtained:
        """Coproc's own verified copy of `name`: fresh, revalidated, or cached.

        `saved` is the name's entry of `state.json` (anything else counts as none)."""
        saved = saved if isinstance(saved, dict) else {}
        digest = str(saved.get("object", ""))
        current = self._cached(name, digest) if digest and self._cache.has(digest) else None
        if not self._options.active:
            return current or Obtained(reason=f"bundle {name!r}: no cached copy and the bundle "
                                       "downloader is off (enable_bundle_downloader, "
                                       "bundle_base_url)", short="not downloaded (downloader off)")
        validators = Validators(str(saved.get("etag", "")), str(saved.get("last_modified", "")))
        try:
            fetched = await self._fetcher.fetch(name, validators if current and
                                                current.directory else None)
        except FetchError as exc:
            if current is not None and current.directory is not None:
                return Obtained(current.digest, current.directory, "cache", str(exc), exc.reason)
            return Obtained(reason=str(exc), short=exc.reason)
        if fetched.data is None and current is not None:
            return current
        data = fetched.data or b""
        digest_new = hashlib.sha256(data).hexdigest()
        try:
            directory = self._install(name, data, digest_new)
        except (UnsafeBundle, VerifyError) as exc:
            reason = f"{exc} (from {self._fetcher_url(name)})"
            if current is not None and current.directory is not None:
                return Obtained(current.digest, current.directory, "cache",
                                refused=f"new version of {reason}; the current one keeps serving")
            return Obtained(reason=reason, short=str(exc))
        self._save_validators(name, digest_new, fetched.validators)
        return Obtained(digest_new, directory, "download")

    def verify_cached(self, directory: Path, name: str) -> None:
        """Check a directory already on disk (ours or a Tyk layout); raises VerifyError."""
        if self._options.skip_verify_existing:
            read_manifest((directory / "manifest.json").read_bytes(), f"bundle {name!r}")
            return
        # A cached copy without a checksum is accepted as Tyk does, unless a key is set.
        verify_directory(directory, self._key, f"bundle {name!r}", require_checksum=False)

    def remember(self, name: str, result: Obtained) -> None:
        """Record in `state.json` the object `name` uses now (kept validators if unchanged)."""
        if not result.digest:
            return
        state = self._cache.read_state()
        entry = state.get(name) if isinstance(state.get(name), dict) else None
        if entry is None or entry.get("object") != result.digest:
            state[name] = {"object": result.digest}
            self._cache.write_state(state)

    def warn_once(self) -> None:
        """Log, the first time bundles are wanted, each check the options switch off."""
        if self._warned:
            return
        self._warned = True
        o = self._options
        if o.insecure_skip_verify:
            log.warning("bundle_insecure_skip_verify is true: the bundle server's TLS "
                        "certificate is not checked")
        if o.public_key_path is None:
            log.warning("public_key_path is not set: bundle signatures are not checked "
                        "(only their checksums)")
        if o.skip_verify_existing:
            log.warning("skip_verify_existing_plugin_bundle is true: cached bundles are "
                        "loaded without checking their checksum or signature")

    async def close(self) -> None:
        await self._fetcher.close()

    def _cached(self, name: str, digest: str) -> Obtained:
        directory = self._cache.object_dir(digest)
        try:
            self.verify_cached(directory, name)
        except VerifyError as exc:
            return Obtained(reason=f"cached copy: {exc}", short=f"cached copy: {exc}")
        return Obtained(digest, directory, "cache")

    def _install(self, name: str, data: bytes, digest: str) -> Path:
        """Extract to a temporary directory, verify, then rename into the cache."""
        if self._cache.has(digest):
            self.verify_cached(self._cache.object_dir(digest), name)
            return self._cache.object_dir(digest)
        tmp = self._cache.new_tmp()
        try:
            written = extract_zip(data, tmp, name, self._limits)
            manifest = verify_directory(tmp, self._key, f"bundle {name!r}")
            self._check_unlisted(name, written, manifest.file_list)
            return self._cache.commit(tmp, digest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def _check_unlisted(self, name: str, written: list[str], listed: tuple[str, ...]) -> None:
        # A signature covers file_list only: with a key set, any other file
        # would be code that runs unverified.
        if self._key is None:
            return
        extra = sorted(set(written) - set(listed) - {"manifest.json"})
        if extra:
            raise UnsafeBundle(f"bundle {name!r}: unsafe entry {extra[0]!r}: not in file_list, "
                               "so not covered by the signature")

    def _save_validators(self, name: str, digest: str, validators: Validators) -> None:
        state = self._cache.read_state()
        state[name] = {"object": digest, "etag": validators.etag,
                       "last_modified": validators.last_modified}
        self._cache.write_state(state)

    def _fetcher_url(self, name: str) -> str:
        return mask_url(self._fetcher.url(name))
