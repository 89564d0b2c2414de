"""Tyk's API definitions admin API for file-based setups: /tyk/apis and /tyk/apis/{id}.

As Tyk's gateway API does when it has no Dashboard: definitions live as
`<app_path>/<api_id>.json`, a write goes to that file, and it is served after
the next `/tyk/reload` (or `coproc reload`).  Differences, each on purpose:

* a body is validated by the same loader as the files, with the same
  messages (file, field, fix), and against the other definitions before
  anything is written: a write is refused when its own definition does not
  load or when it would take a serving API out of service (its api_id or
  listen path taken); definition files already broken never block a write;
* files are written atomically (a temporary file in `app_path`, fsync, then
  rename), so a reload never reads half a definition;
* an API whose definition sits in another file of `app_path` (`echo.json`
  with api_id "echo") is updated or deleted in that file;
* `GET` answers from the files in `app_path`, i.e. including writes not yet
  reloaded (Tyk answers from what it has loaded).

Guarded like the keys API (`X-Tyk-Authorization`), answers in Tyk's shapes:
`{"key": <api_id>, "status": "ok", "action": "added"|"modified"|"deleted"}`
and `{"status": "error", "message": ...}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from config.apidef import load_definition_set
from config.gateway import GatewayConfig
from config.reader import ConfigError
from gateway.admin import admin_denied

__all__ = ["ApisApi", "add_api_routes"]

log = logging.getLogger("coproc.gateway.admin")

_MAX_BODY = 4 << 20
_SAFE_ID = re.compile(r"^[A-Za-z0-9._~-]+$")
_NOT_FOUND = "API not found"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


def _ok(api_id: str, action: str) -> web.Response:
    return web.json_response({"key": api_id, "status": "ok", "action": action})


class ApisApi:
    """The handlers; every call reads `app_path` afresh (the files are the truth)."""

    def __init__(self, secret: str, cfg: GatewayConfig) -> None:
        self.secret, self.cfg = secret, cfg

    async def handle(self, request: web.Request) -> web.Response:
        denied = admin_denied(request, self.secret)
        if denied is not None:
            return denied
        api_id = request.match_info.get("api_id", "")
        method = request.method
        if method == "GET":
            return self._get(api_id) if api_id else self._list()
        if method == "POST":
            return await self._write(request, "", "added")
        if method in ("PUT", "DELETE") and not api_id:
            verb = "update" if method == "PUT" else "delete"
            return _error(400, f"Must specify an apiID to {verb}")
        if method == "PUT":
            return await self._write(request, api_id, "modified")
        if method == "DELETE":
            return await self._delete(api_id)
        return _error(405, f"{method} is not supported on /tyk/apis")

    def _files(self) -> dict[str, tuple[Path, dict[str, Any]]]:
        """api_id -> (file, JSON) for every readable definition file in app_path."""
        out: dict[str, tuple[Path, dict[str, Any]]] = {}
        for path in sorted(self.cfg.app_path.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # a broken file is the loader's to report, not a listing's
            if isinstance(raw, dict):
                out.setdefault(str(raw.get("api_id") or ""), (path, raw))
        return out

    def _list(self) -> web.Response:
        return web.json_response([raw for _path, raw in self._files().values()])

    def _get(self, api_id: str) -> web.Response:
        found = self._files().get(api_id)
        return web.json_response(found[1]) if found else _error(404, _NOT_FOUND)

    async def _write(self, request: web.Request, path_id: str, action: str) -> web.Response:
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return _error(413, f"an API definition is at most {_MAX_BODY} bytes")
        try:
            raw: Any = json.loads(await request.read() or b"null")
        except ValueError:
            return _error(400, "Request malformed")
        if not isinstance(raw, dict):
            return _error(400, "Request malformed")
        files = self._files()
        if path_id:
            if path_id not in files:
                return _error(404, _NOT_FOUND)
            if raw.get("api_id") != path_id:
                return _error(400, "Request APIID does not match that in Definition! For "
                                   "Update operations these must match.")
        elif not raw.get("api_id"):
            raw["api_id"] = uuid.uuid4().hex  # as Tyk's API writes do
        api_id = str(raw["api_id"])
        if not _SAFE_ID.match(api_id) or api_id in (".", ".."):
            return _error(400, "invalid API ID")
        target = files[api_id][0] if api_id in files else self.cfg.app_path / f"{api_id}.json"
        problem = self._validate(target, raw)
        if problem:
            return _error(400, f"Validation of API Definition failed. Reason: {problem}.")
        await asyncio.to_thread(_write_atomically, target, raw)
        log.info("admin API: API %s %s in %s; served after the next reload", api_id, action,
                 target)
        return _ok(api_id, action)

    def _validate(self, target: Path, raw: dict[str, Any]) -> str:
        """Why writing `raw` to `target` must not happen ("" when it may): the
        definition does not load, or it would take another API out of service
        (its listen path or api_id taken).  Files already broken stay the
        loader's to report; they never block a write."""
        try:
            before = load_definition_set(self.cfg)
            after = load_definition_set(self.cfg, {target: raw})
        except ConfigError as exc:
            return str(exc)
        own = [b for b in after.broken if b.file == target]
        problems = own or after.breaks(before)
        return "; ".join(str(b.error) for b in problems)

    async def _delete(self, api_id: str) -> web.Response:
        found = self._files().get(api_id)
        if found is None:
            return _error(404, _NOT_FOUND)
        try:
            found[0].unlink()
        except OSError as exc:
            log.error("admin API: cannot delete %s: %s", found[0], exc)
            return _error(500, "Delete failed")
        return _ok(api_id, "deleted")


def _write_atomically(target: Path, raw: dict[str, Any]) -> None:
    data = json.dumps(raw, indent=2).encode() + b"\n"
    # Not *.json: the loader never sees the temporary file.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def add_api_routes(app: web.Application, secret: str, cfg: GatewayConfig) -> None:
    api = ApisApi(secret, cfg)
    for path in ("/tyk/apis", "/tyk/apis/", "/tyk/apis/{api_id}"):
        app.router.add_route("*", path, api.handle)
