"""What the embedded-engine drivers (Lua, JSVM) share: an API's source files and its hooks.

Both engines load files, not modules: a bundle's files of the engine's suffix in
`file_list` order, or, without a bundle, each hook's `path` once.  Their hooks
are the API's enabled `custom_middleware` entries, each with its phase (which
decides its calling convention).
"""

from __future__ import annotations

import json
from pathlib import Path

from config.apidef import APIDefinition, HookDef
from worker.loader import BundleError

__all__ = ["engine_files", "phase_hooks"]


def engine_files(api: APIDefinition, suffix: str) -> list[Path]:
    """The files to load for `api`; `BundleError` when its bundle is not usable."""
    if not api.custom_middleware_bundle:
        paths = [Path(h.path) for h in api.custom_middleware.all_hooks() if h.path]
        return list(dict.fromkeys(paths))
    if api.bundle_error or not api.bundle_dirs:
        raise BundleError(api.bundle_error or f"bundle {api.custom_middleware_bundle!r} "
                          "is not available")
    files: list[Path] = []
    for directory in api.bundle_dirs:
        manifest = directory / "manifest.json"
        try:
            file_list = json.loads(manifest.read_text(encoding="utf-8")).get("file_list") or []
        except (OSError, ValueError, AttributeError) as exc:
            raise BundleError(f"{manifest}: unreadable manifest ({exc})") from None
        root = directory.resolve()
        listed = [(root / name).resolve() for name in file_list
                  if isinstance(name, str) and name.endswith(suffix)]
        outside = [f for f in listed if not f.is_relative_to(root)]
        if outside or not listed:
            raise BundleError(f"{manifest}: " + (f"{outside[0]} is outside the bundle" if outside
                                                  else f"file_list names no {suffix} file"))
        files.extend(listed)
    return files


def phase_hooks(api: APIDefinition) -> list[tuple[str, HookDef]]:
    """(phase, hook) of every enabled hook: request phases in order, then auth_check."""
    middleware = api.custom_middleware
    hooks = [(phase, hook) for phase in ("pre", "post_key_auth", "post", "response")
             for hook in middleware.phase(phase)]
    if middleware.auth_check and not middleware.auth_check.disabled:
        hooks.append(("auth_check", middleware.auth_check))
    return hooks
