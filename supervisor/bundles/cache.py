"""Coproc's content-addressed bundle cache under `middleware_path/bundles/.coproc/`.

* `objects/<sha256 of the archive>/` — an extracted, verified bundle; it appears
  only by an atomic rename of a temporary directory (`tmp/`) after
  verification, so a failed or partial download never leaves a directory
  that a later start would trust;
* `state.json` — per bundle name: the object of its last good download and
  the ETag / Last-Modified that came with it (for conditional GETs);
* `refs.json` — per API and bundle: the directory the gateway and the worker
  load, or why there is none (`config/bundles.py` reads it).  It names no URL.

Tyk's own layouts beside `.coproc/` are never written or deleted here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from config.bundles import REFS_FILE, store_root

__all__ = ["BundleCache"]


#: Readable by the worker, which may run under another uid (sandbox), writable by us only.
DIR_MODE, FILE_MODE = 0o755, 0o644


def _write_json(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
    os.replace(tmp, path)


class BundleCache:
    """The cache's directories and its two JSON files."""

    def __init__(self, middleware_path: Path) -> None:
        self.root = store_root(middleware_path)
        self.objects, self.tmp = self.root / "objects", self.root / "tmp"

    def ensure(self) -> None:
        for directory in (self.root, self.objects, self.tmp):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(DIR_MODE)
        # Leftovers of an interrupted extraction: never trusted, never reused.
        for leftover in self.tmp.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)

    def object_dir(self, digest: str) -> Path:
        return self.objects / digest

    def has(self, digest: str) -> bool:
        return (self.object_dir(digest) / "manifest.json").is_file()

    def new_tmp(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="x-", dir=self.tmp))

    def commit(self, tmp: Path, digest: str) -> Path:
        """Move a verified extraction into place (same file system: atomic)."""
        final = self.object_dir(digest)
        if final.exists():  # the same bytes were verified before: keep that copy
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        for directory, _subdirs, files in os.walk(tmp):
            os.chmod(directory, DIR_MODE)  # mkdtemp made the top 0700
            for name in files:
                os.chmod(os.path.join(directory, name), FILE_MODE)
        os.rename(tmp, final)
        return final

    def read_state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "state.json").read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_state(self, state: dict[str, Any]) -> None:
        _write_json(self.root / "state.json", state)

    def write_refs(self, refs: dict[str, Any]) -> None:
        _write_json(self.root / REFS_FILE, refs)

    def collect(self, keep: Iterable[str]) -> list[str]:
        """Remove every object not in `keep`; the digests removed."""
        wanted = set(keep)
        removed = []
        for entry in self.objects.iterdir() if self.objects.is_dir() else ():
            if entry.name not in wanted:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
        return removed
