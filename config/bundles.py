"""Where an API's bundle lives on disk: Coproc's cache, then Tyk's three layouts.

Pure path resolution (stdlib only), shared by the gateway and the worker.  The
supervisor's bundle store (`supervisor/bundles/`) fetches and verifies bundles
and writes `middleware_path/bundles/.coproc/refs.json`, naming for every API and
bundle the verified directory to load, or why there is none.  The worker and
the gateway only read that file: they never load a directory the store did not
verify.  When no store has run (no refs file: tools, unit tests) the Tyk
layouts are looked up directly, as Tyk itself does.

Tyk's layouts under `middleware_path/bundles/` (read-only for Coproc):

* `<hex md5 of the bundle name>` — Tyk 4.0.x (PR 3849, Feb 2022) and later;
  with a comma-separated list, `<hex md5 of the whole list>/<name without
  extension>` per bundle;
* `<api_id>_<hex md5 of the bundle name>` — Tyk 3 (2018 to 2022);
* `<api_id>-<bundle name>` — before May 2018.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = [
    "REFS_FILE",
    "STORE_DIR",
    "BundleRef",
    "bundle_names",
    "name_md5",
    "read_refs",
    "resolve_bundle",
    "store_root",
    "tyk_layouts",
]

#: Coproc's own cache, beside Tyk's directories (a name no Tyk layout produces).
STORE_DIR = ".coproc"
REFS_FILE = "refs.json"


@dataclass(frozen=True, slots=True)
class BundleRef:
    """One bundle of one API: the directory to load, or why there is none."""

    name: str
    directory: Path | None
    error: str = ""
    source: str = ""  # "coproc", "tyk5", "tyk3", "tyk2"


def bundle_names(value: str) -> list[str]:
    """`custom_middleware_bundle` split on commas, trimmed, empties dropped (as Tyk)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def name_md5(name: str) -> str:
    # Tyk's directory naming, not a security use of MD5.
    return hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()


def store_root(middleware_path: Path) -> Path:
    return middleware_path / "bundles" / STORE_DIR


def _subdir(name: str) -> str:
    """Tyk's per-bundle subdirectory of a multi-bundle list."""
    stem = str(PurePosixPath(name).with_suffix("")) if PurePosixPath(name).suffix else name
    clean = stem.replace("/", "__").replace("\\", "__")
    return clean or "bundle_" + hashlib.sha256(name.encode()).hexdigest()[:12]


def tyk_layouts(middleware_path: Path, api_id: str, value: str,
                name: str) -> list[tuple[str, Path]]:
    """(layout, directory) where a Tyk node would have extracted `name`, newest first."""
    bundles = middleware_path / "bundles"
    names = bundle_names(value)
    newest = (bundles / name_md5(name) if names == [value]
              else bundles / name_md5(value) / _subdir(name))
    return [("tyk5", newest), ("tyk3", bundles / f"{api_id}_{name_md5(name)}"),
            ("tyk2", bundles / f"{api_id}-{name}")]


def read_refs(middleware_path: Path) -> dict[str, Any] | None:
    """The store's refs file, or None when no store has written one."""
    try:
        data = json.loads((store_root(middleware_path) / REFS_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def resolve_bundle(middleware_path: Path, api_id: str, value: str, name: str,
                   refs: dict[str, Any] | None = None) -> BundleRef:
    """Where `name` (one entry of the API's `custom_middleware_bundle`) is, or why not."""
    refs = read_refs(middleware_path) if refs is None else refs
    if refs is not None:
        entry = refs.get("apis", {}).get(api_id, {}).get(name)
        if not isinstance(entry, dict):
            return BundleRef(name, None, "not prepared yet: reload to fetch and verify it")
        directory = entry.get("dir")
        return BundleRef(name, Path(directory) if isinstance(directory, str) and directory
                         else None, str(entry.get("error", "")), str(entry.get("source", "")))
    tried = tyk_layouts(middleware_path, api_id, value, name)
    for source, directory in tried:
        if (directory / "manifest.json").is_file():
            return BundleRef(name, directory, "", source)
    bundles = middleware_path / "bundles"
    return BundleRef(name, None, "not found: no manifest.json in "
                     + ", ".join(f"bundles/{d.relative_to(bundles)}" for _s, d in tried))
