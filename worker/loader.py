"""Finding and importing every API's plugins; the hook table and the load report.

For each active API definition with hooks or a bundle:

* local hooks (`custom_middleware` entries with a `path`) are grouped by file;
* a bundle is read from its verified directory (`api.bundle_dirs`, chosen by
  `config/bundles.py`: Coproc's bundle cache, or one of Tyk's layouts): its
  `manifest.json` names the hooks, and `middleware.py` (or the only file of
  `file_list`) is the module to import, as in Tyk's Python loader; a hook's
  `path` in a manifest is not used.  With several bundles, each is its own
  namespace.

Each plugin directory is imported into its own namespace per API
(`worker.isolation`).  Every `@Hook` in an imported module is callable by its
function name; a configured name that refers to a plain function works too.

A plugin that fails to import (any exception, `SyntaxError`, `SystemExit`)
fails only its API: the report says `ok: False` with the traceback, and every
call for that API answers `load_failed`.  A configured hook that the module
does not define is reported too (`ok: False`); the API's other hooks still run.
"""

from __future__ import annotations

import inspect
import json
import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from config.apidef import JS_DRIVERS, APIDefinition
from config.gateway import GatewayConfig, JsvmOptions
from ipc.protocol import ErrorCode
from worker import decorators
from worker.isolation import PluginNamespace
from worker.supervisor_link import ImportAnnouncer

__all__ = [
    "ApiPlugins",
    "BundleError",
    "HookEntry",
    "HookTable",
    "LookupFailed",
    "load_api",
    "load_plugins",
]

log = logging.getLogger("worker.loader")

#: Longest error text put in a load report (it travels in HELLO and a datagram).
MAX_REPORT_ERROR = 8 * 1024


class BundleError(Exception):
    """A bundle directory or its manifest is missing or unusable."""


class LookupFailed(Exception):
    """A CALL names a hook that cannot run; `code` is the ERROR code to answer."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class HookEntry:
    """One callable hook and how to call it."""

    name: str
    func: Callable[..., Any]
    arity: int  # positional parameters (Tyk's convention: 3, 4 or 5)
    varargs: bool
    is_async: bool
    origin: str  # the file that defines it


@dataclass(slots=True)
class ApiPlugins:
    """Everything one API's plugins provide, or why they do not."""

    api_id: str
    source: str = ""
    hooks: dict[str, HookEntry] = field(default_factory=dict)
    events: dict[str, decorators.Event] = field(default_factory=dict)
    load_error: str = ""  # set: an import failed, every call answers load_failed
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.load_error and not self.problems

    def report(self) -> dict[str, Any]:
        """This API's entry of the load report (`ipc.protocol.PLUGIN_REPORT`)."""
        error = self.load_error or "; ".join(self.problems)
        if len(error) > MAX_REPORT_ERROR:
            error = error[:MAX_REPORT_ERROR] + "\n[truncated]"
        report: dict[str, Any] = {"ok": self.ok, "hooks": sorted(self.hooks), "error": error,
                                  "source": self.source}
        asynchronous = sorted(name for name, entry in self.hooks.items() if entry.is_async)
        if asynchronous:
            # Informational (GET /hello): these run on the worker's event loop,
            # the others on its call threads (worker/callthreads.py).
            report["async"] = asynchronous
        return report


class HookTable:
    """Loaded plugins by API id; answers "what do I call for this CALL?"."""

    def __init__(self, apis: dict[str, ApiPlugins] | None = None) -> None:
        self.apis = apis or {}

    def find(self, api_id: str, name: str) -> HookEntry:
        plugins = self._plugins(api_id)
        entry = plugins.hooks.get(name)
        if entry is None:
            hint = f" ({'; '.join(plugins.problems)})" if plugins.problems else ""
            raise LookupFailed(ErrorCode.NO_SUCH_HOOK,
                               f"API {api_id!r} has no hook {name!r}{hint}")
        return entry

    def find_event(self, api_id: str, name: str) -> decorators.Event:
        handler = self._plugins(api_id).events.get(name)
        if handler is None:
            raise LookupFailed(ErrorCode.NO_SUCH_HOOK,
                               f"API {api_id!r} has no event handler {name!r}")
        return handler

    def report(self) -> dict[str, dict[str, Any]]:
        return {api_id: plugins.report() for api_id, plugins in self.apis.items()}

    def _plugins(self, api_id: str) -> ApiPlugins:
        plugins = self.apis.get(api_id)
        if plugins is None:
            raise LookupFailed(ErrorCode.NO_SUCH_HOOK,
                               f"API {api_id!r} has no plugins in this worker")
        if plugins.load_error:
            raise LookupFailed(ErrorCode.LOAD_FAILED, plugins.load_error)
        return plugins


def load_plugins(cfg: GatewayConfig, apis: Iterable[APIDefinition]) -> HookTable:
    """Import the plugins of every active API that has hooks or a bundle."""
    table = HookTable()
    if not cfg.enable_coprocess:
        log.info("coprocess_options.enable_coprocess is false: no plugins loaded")
        return table
    announcer = ImportAnnouncer()
    try:
        for api in apis:
            if api.active and (api.has_plugins or api.custom_middleware_bundle):
                _load_into(table, api, cfg, announcer.importing)
    finally:
        announcer.close()
    return table


def _load_into(table: HookTable, api: APIDefinition, cfg: GatewayConfig,
               announce: Callable[[str, Path], None]) -> None:
    plugins = load_api(api, cfg.middleware_path, announce, cfg)
    table.apis[api.api_id] = plugins
    if plugins.ok:
        log.info("API %s: loaded hooks %s from %s", api.api_id,
                 ", ".join(sorted(plugins.hooks)) or "(none)", plugins.source)
    elif plugins.load_error:
        log.error("API %s: plugin failed to load; its hooks will answer "
                  "load_failed:\n%s", api.api_id, plugins.load_error)
    else:
        log.error("API %s: %s", api.api_id, "; ".join(plugins.problems))


def load_api(api: APIDefinition, middleware_path: Path,
             announce: Callable[[str, Path], None] | None = None,
             cfg: GatewayConfig | None = None) -> ApiPlugins:
    """Import one API's plugin files and collect its hooks (never raises); `announce`
    hears of each file right before its import (supervisor_link.ImportAnnouncer);
    `cfg` gives the JSVM settings (its defaults, enabled, without one)."""
    if api.custom_middleware.driver == "lua":
        return _load_lua(api)
    if api.custom_middleware.driver in JS_DRIVERS:
        return _load_jsvm(api, cfg)
    plugins = ApiPlugins(api.api_id)
    configured = api.custom_middleware.all_hooks()
    files: dict[Path, list[str]] = {}
    for hook in configured:
        if hook.path:
            files.setdefault(Path(hook.path), []).append(hook.name)
    pathless = [h.name for h in configured if not h.path]
    if api.custom_middleware_bundle:
        try:
            for _directory, main, names in find_bundles(api):
                files.setdefault(main, []).extend(names)
        except BundleError as exc:
            plugins.load_error = f"BundleError: {exc}"
            plugins.source = api.custom_middleware_bundle
            return plugins
    elif pathless:
        plugins.problems.append(f"hook(s) {', '.join(pathless)} have no path and the API "
                                f"has no custom_middleware_bundle")
    plugins.source = ", ".join(str(p) for p in files)
    namespaces: dict[Path, PluginNamespace] = {}
    for path, wanted in files.items():
        directory = path.parent.resolve()
        namespace = namespaces.setdefault(directory, PluginNamespace(api.api_id, directory))
        if announce is not None:
            announce(api.api_id, path)
        try:
            module = namespace.load(path)
        except (Exception, SystemExit) as exc:  # a plugin must never take the worker down
            error = describe_load_error(exc, namespace)
            plugins.load_error += ("\n" if plugins.load_error else "") + error
            continue
        _collect(module, path, wanted, plugins)
    return plugins


def _load_lua(api: APIDefinition) -> ApiPlugins:
    try:
        from worker.lua import load_lua_api  # lupa is needed only by Lua APIs
    except ImportError as exc:
        return ApiPlugins(api.api_id, load_error=f"the Lua driver needs lupa ({exc}): "
                          "pip install 'coproc[lua]'")
    return load_lua_api(api)


def _load_jsvm(api: APIDefinition, cfg: GatewayConfig | None) -> ApiPlugins:
    try:
        from worker.jsvm import load_jsvm_api  # quickjs is needed only by JS APIs
    except ImportError as exc:
        return ApiPlugins(api.api_id, load_error=f"the JSVM driver needs quickjs ({exc}): "
                          "pip install 'coproc[jsvm]'")
    return load_jsvm_api(api, cfg.jsvm if cfg is not None else JsvmOptions(enable=True))


def describe_load_error(exc: BaseException, namespace: PluginNamespace) -> str:
    """The exception line, then its traceback from the first plugin frame on."""
    tb = exc.__traceback__
    while tb is not None and not namespace.owns(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next  # drop the importlib and loader frames above the plugin's
    summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
    detail = "".join(traceback.format_exception(type(exc), exc, tb)).rstrip()
    return f"{summary}\n{detail}"


def _collect(module: ModuleType, path: Path, wanted: list[str], plugins: ApiPlugins) -> None:
    for value in list(vars(module).values()):
        if isinstance(value, decorators.Hook):
            _add(plugins, HookEntry(value.name, value, value.arg_count, value.varargs,
                                    value.is_async, str(path)))
        elif isinstance(value, decorators.Event):
            plugins.events.setdefault(value.name, value)
    for name in wanted:
        if name in plugins.hooks:
            continue
        candidate = getattr(module, name, None)
        if callable(candidate) and not isinstance(candidate, type):
            arity, varargs = decorators.positional_arity(candidate)
            _add(plugins, HookEntry(name, candidate, arity, varargs,
                                    inspect.iscoroutinefunction(candidate), str(path)))
        else:
            plugins.problems.append(f"hook {name!r} is not defined in {path}")


def _add(plugins: ApiPlugins, entry: HookEntry) -> None:
    known = plugins.hooks.get(entry.name)
    if known is None:
        plugins.hooks[entry.name] = entry
    elif known.func is not entry.func:
        log.warning("API %s: hook %s is defined in %s and %s; using the first",
                    plugins.api_id, entry.name, known.origin, entry.origin)


# --- bundles -----------------------------------------------------------------------------


def find_bundles(api: APIDefinition) -> list[tuple[Path, Path, list[str]]]:
    """(directory, module file, manifest hook names) of each of the API's bundles."""
    if api.bundle_error or not api.bundle_dirs:
        raise BundleError(api.bundle_error or f"bundle {api.custom_middleware_bundle!r} "
                          "is not available")
    return [read_bundle(directory) for directory in api.bundle_dirs]


def read_bundle(directory: Path) -> tuple[Path, Path, list[str]]:
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{manifest_path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: the manifest must be a JSON object")
    file_list = manifest.get("file_list") or []
    if not isinstance(file_list, list) or not all(isinstance(f, str) for f in file_list):
        raise BundleError(f"{manifest_path}: file_list must be a list of file names")
    main = directory / (file_list[0] if len(file_list) == 1 else "middleware.py")
    root = directory.resolve()
    if not main.resolve().is_relative_to(root) or not main.is_file():
        raise BundleError(f"{manifest_path}: no plugin module {main.name} in the bundle")
    return root, main.resolve(), manifest_hook_names(manifest.get("custom_middleware"))


def manifest_hook_names(middleware: Any) -> list[str]:
    """Enabled hook names of a manifest's `custom_middleware` (Tyk's shape)."""
    if not isinstance(middleware, dict):
        return []
    entries: list[Any] = []
    for phase in ("pre", "post_key_auth", "post", "response"):
        value = middleware.get(phase)
        entries.extend(value if isinstance(value, list) else [])
    entries.append(middleware.get("auth_check"))
    names = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] \
                and not entry.get("disabled", False) and entry["name"] not in names:
            names.append(entry["name"])
    return names
