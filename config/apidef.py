"""Tyk classic API definitions: the fields Coproc acts on, the rest kept as `raw`.

One JSON file per API under the gateway's `app_path`.  Hook `path`s resolve
against `middleware_path` first, then the definition's own directory, then the
places that stand for Tyk's working directory (`_hook_path`).  A JS-driver API
also gets Tyk's per-API folder hooks, middleware_path/<api_id>/<phase>/*.js.
Coproc's own per-API options live under an optional `coproc` object; per-hook
options (`timeout_ms`, `failure_policy`) may also sit in each hook entry.

With `custom_middleware_bundle` (one name or a comma-separated list, unless
`custom_middleware_bundle_disabled`), the bundles' manifests define the hooks
and the definition's own `custom_middleware` is not looked at, as in Tyk.
Where each bundle is comes from `config/bundles.py`; a bundle that is not
there (not downloaded, not verified) sets `bundle_error`: that API answers
500 and every other API serves.

A definition that does not load never stops the gateway (Tyk skips it too):
`load_definition_set` returns the good ones and the broken ones (file, api_id,
the error naming field and fix); the broken are unserved and named in health
answers.  `coproc serve --strict` (or `coproc.strict_definitions`) turns any
broken file back into a start failure.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.bundles import bundle_names, read_refs, resolve_bundle
from config.gateway import FAILURE_POLICIES, GatewayConfig
from config.reader import ConfigError, Reader, load_json
from config.tyk_support import check_classic, check_driver

__all__ = [
    "REQUEST_HOOK_PHASES",
    "APIDefinition",
    "AnalyticsPlugin",
    "AuthConfig",
    "BrokenDefinition",
    "CustomMiddleware",
    "DefinitionSet",
    "HookDef",
    "ProxyDef",
    "load_api_definition",
    "load_api_definitions",
    "load_definition_set",
]

#: Phases with a list of hooks, in the order they run around the upstream call.
REQUEST_HOOK_PHASES = ("pre", "post_key_auth", "post", "response")


@dataclass(frozen=True, slots=True)
class HookDef:
    """One `custom_middleware` entry (Tyk's MiddlewareDefinition)."""

    name: str
    path: str = ""  # resolved absolute path, "" for bundle hooks
    disabled: bool = False
    raw_body_only: bool = False
    require_session: bool = False
    timeout_ms: int = 1000
    failure_policy: str = "fail_closed"
    # The API's `custom_middleware.driver`: which hook service runs it ("grpc":
    # the gRPC plugin server, anything else: the Python worker).
    driver: str = ""
    # Tyk's inline `code` (driver "javascript"): the JS source, decoded from base64.
    code: str = ""


#: The driver whose hooks a Tyk gRPC plugin server runs (not the Python worker).
GRPC_DRIVER = "grpc"
#: Tyk's JSVM drivers (otto, and goja under "javascript"); the worker runs both in QuickJS.
JS_DRIVERS = ("otto", "javascript")
#: Tyk's goja driver: each JS file in its own scope, and hooks may carry inline `code`.
GOJA_DRIVER = "javascript"


@dataclass(frozen=True, slots=True)
class CustomMiddleware:
    driver: str = ""
    pre: tuple[HookDef, ...] = ()
    post_key_auth: tuple[HookDef, ...] = ()
    post: tuple[HookDef, ...] = ()
    response: tuple[HookDef, ...] = ()
    auth_check: HookDef | None = None
    id_extractor: dict[str, Any] = field(default_factory=dict)

    def phase(self, name: str) -> tuple[HookDef, ...]:
        hooks: tuple[HookDef, ...] = getattr(self, name)
        return tuple(h for h in hooks if not h.disabled)

    def all_hooks(self) -> tuple[HookDef, ...]:
        auth = (self.auth_check,) if self.auth_check and not self.auth_check.disabled else ()
        return auth + tuple(h for p in REQUEST_HOOK_PHASES for h in self.phase(p))


@dataclass(frozen=True, slots=True)
class AnalyticsPlugin:
    """Tyk's `analytics_plugin` (or a bundle manifest's `traffic_logs`): a Python
    function the worker runs over each of the API's analytics records."""

    path: str  # the .py file, resolved
    func_name: str


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Tyk's AuthConfig (`auth`, or an entry of `auth_configs`): where a request
    carries its credential.  For the key of built-in token auth Tyk reads the
    header (unless `disable_header`), then a query parameter (`use_param`) and a
    cookie (`use_cookie`), each replacing the key when it has a value; those two
    are named by `param_name`/`cookie_name`, else like the header."""

    auth_header_name: str = ""
    disable_header: bool = False
    use_param: bool = False
    param_name: str = ""
    use_cookie: bool = False
    cookie_name: str = ""

    @property
    def header(self) -> str:
        return self.auth_header_name or "Authorization"

    @property
    def default_name(self) -> str:
        """What a parameter or cookie is called when not named: the header's name,
        unless the header is off (then Tyk falls back to "Authorization")."""
        return "Authorization" if self.disable_header else self.header


@dataclass(frozen=True, slots=True)
class ProxyDef:
    listen_path: str
    target_url: str
    strip_listen_path: bool = False
    preserve_host_header: bool = False


@dataclass(frozen=True, slots=True)
class APIDefinition:
    api_id: str
    name: str
    org_id: str
    active: bool
    use_keyless: bool
    proxy: ProxyDef
    custom_middleware: CustomMiddleware
    custom_middleware_bundle: str  # "" when custom_middleware_bundle_disabled
    bundle_dir: Path | None  # the (first) bundle's verified directory (None: none)
    bundle_error: str  # why a named bundle is unusable ("" when fine or no bundle)
    config_data: dict[str, Any]
    config_data_disabled: bool
    enable_coprocess_auth: bool
    domain: str
    source: Path
    raw: dict[str, Any] = field(repr=False, compare=False)
    # Auth and events (Tyk field names).  Where built-in token auth finds the key
    # (`auth_configs.authToken`, else `auth`), and the credentials `strip_auth_data`
    # takes off before the upstream (empty when it is off).
    token_auth: AuthConfig = AuthConfig()
    # `auth_configs.coprocess`: where Tyk reads the credential an auth plugin's
    # refusal reports (the AuthFailure event's key).
    plugin_auth: AuthConfig = AuthConfig()
    strip_auth: tuple[AuthConfig, ...] = ()
    disable_rate_limit: bool = False
    disable_quota: bool = False
    # Built-in token auth alongside a plugin, which auth method's session wins, and
    # `event_handlers.events` as {event name: [handler objects]}.
    use_standard_auth: bool = False
    base_identity_provided_by: str = ""
    event_handlers: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Every bundle's directory, in `custom_middleware_bundle` order (config/bundles.py).
    bundle_dirs: tuple[Path, ...] = ()
    analytics_plugin: AnalyticsPlugin | None = None

    @property
    def auth_header_name(self) -> str:
        """The header built-in token auth reads the key from."""
        return self.token_auth.header

    @property
    def has_plugins(self) -> bool:
        """Whether the plugin worker runs hooks of this API (a gRPC server runs its own)."""
        return (self.custom_middleware.driver != GRPC_DRIVER
                and bool(self.custom_middleware.all_hooks()))


@dataclass(frozen=True, slots=True)
class BrokenDefinition:
    """One definition file that is not served, and why.

    `api_id` is "" when the file does not say (or cannot be read).  `component`
    is its name in health answers: `api:<api_id>`, or `apidef:<file name>` when
    the id is unknown or belongs to another file's API (a duplicate).
    """

    file: Path
    api_id: str
    error: ConfigError
    component: str

    @property
    def reason(self) -> str:
        """A short public reason: the file's base name and the field, never a path."""
        where = f"field '{self.error.field}' " if self.error.field else ""
        return f"definition {self.file.name} not served: {where}invalid"

    def summary(self) -> dict[str, str]:
        """JSON-ready, for status answers (full message, paths included)."""
        return {"file": str(self.file), "api_id": self.api_id,
                "component": self.component, "error": str(self.error)}


@dataclass(frozen=True, slots=True)
class DefinitionSet:
    """The definitions of `app_path`: those that load, and those that do not."""

    apis: tuple[APIDefinition, ...]
    broken: tuple[BrokenDefinition, ...] = ()

    def strict(self) -> list[APIDefinition]:
        """Every definition, or the first broken one's `ConfigError` (`--strict`)."""
        if self.broken:
            raise self.broken[0].error
        return list(self.apis)

    def breaks(self, serving: DefinitionSet) -> list[BrokenDefinition]:
        """The entries of this set that would take an API of `serving` out of service.

        An active API of `serving` is broken by this set when no loaded API here
        has its api_id and a broken entry is its file (edited into an error, or
        now losing its listen path to an earlier file) or names its api_id.  A
        deleted file or a changed api_id is a removal, not breakage.
        """
        loaded = {api.api_id for api in self.apis if api.active}
        out: list[BrokenDefinition] = []
        for api in serving.apis:
            if not api.active or api.api_id in loaded:
                continue
            out.extend(b for b in self.broken if b not in out and (
                b.file == api.source or (b.api_id and b.api_id == api.api_id)))
        return out


def load_definition_set(cfg: GatewayConfig,
                        overrides: dict[Path, dict[str, Any]] | None = None) -> DefinitionSet:
    """Every `*.json` under `app_path`, sorted by file name: the good ones and the broken.

    The one loader of the supervisor, the gateway and the worker.  A file that
    does not load is left out (as Tyk does), never fatal; of two active APIs
    with one api_id, or one domain and listen path, the first file by name is
    served and the later one is broken.  Raises `ConfigError` only when
    `app_path` itself is unusable, or an API needs the plugin worker beside a
    supervised gRPC server (the gateway config is wrong for these APIs).  `overrides`:
    file -> JSON to use instead of what is on disk (the admin API checks a
    write before making it).
    """
    if not cfg.app_path.is_dir():
        raise ConfigError(cfg.path, "app_path", f"{cfg.app_path} is not a directory",
                          "create it or point app_path at the directory of API definitions")
    overrides = overrides or {}
    paths = sorted({*cfg.app_path.glob("*.json"), *overrides})
    apis: list[APIDefinition] = []
    broken: list[BrokenDefinition] = []
    served = _Served()
    for path in paths:
        raw: dict[str, Any] | None = overrides.get(path)
        try:
            raw = load_json(path) if raw is None else raw
            api = load_api_definition(path, cfg, raw)
        except ConfigError as exc:
            api_id = raw.get("api_id") if isinstance(raw, dict) else None
            api_id = api_id if isinstance(api_id, str) else ""
            broken.append(BrokenDefinition(path, api_id, exc,
                                           f"api:{api_id}" if api_id else f"apidef:{path.name}"))
            continue
        clash = served.add(api)
        if clash is not None:
            broken.append(BrokenDefinition(path, api.api_id, clash, f"apidef:{path.name}"))
            continue
        apis.append(api)
    check_one_coprocess(cfg, apis)
    return DefinitionSet(tuple(apis), tuple(broken))


def load_api_definitions(cfg: GatewayConfig) -> list[APIDefinition]:
    """Every definition of `app_path`, or `ConfigError` for the first that does not load."""
    return load_definition_set(cfg).strict()


def check_one_coprocess(cfg: GatewayConfig, apis: list[APIDefinition]) -> None:
    """A supervised gRPC plugin server is the instance's one coprocess: no API may
    need the plugin worker beside it (an external server may run beside the worker)."""
    if not (cfg.grpc_server.enabled and cfg.enable_coprocess):
        return
    for api in apis:
        if api.active and api.has_plugins:
            raise ConfigError(
                api.source, "custom_middleware.driver",
                f"driver {api.custom_middleware.driver or 'python'!r} needs the plugin worker, "
                f"but {cfg.path} sets coproc.grpc_server.command: a supervised gRPC server is "
                "the instance's one coprocess",
                "use driver \"grpc\" for this API, run it in another instance, or drop "
                "coproc.grpc_server.command and run the gRPC server yourself "
                "(coprocess_options.coprocess_grpc_server), which may run beside the worker")


class _Served:
    """The active APIs kept so far, by api_id and by (domain, listen path)."""

    def __init__(self) -> None:
        self.ids: dict[str, APIDefinition] = {}
        self.paths: dict[tuple[str, str], APIDefinition] = {}

    def add(self, api: APIDefinition) -> ConfigError | None:
        """Keep `api`, or say why it cannot be served beside the earlier ones."""
        if not api.active:
            return None
        other = self.ids.get(api.api_id)
        if other is not None:
            return ConfigError(api.source, "api_id", f"{api.api_id!r} is also used by "
                               f"{other.source}" + (" (neither file has an api_id)"
                                                    if not api.api_id else ""),
                               "give every API a unique api_id")
        key = (api.domain, api.proxy.listen_path)
        other = self.paths.get(key)
        if other is not None:
            return ConfigError(api.source, "proxy.listen_path", f"{api.proxy.listen_path!r} "
                               f"is also used by {other.source}", "use distinct listen paths")
        self.ids[api.api_id], self.paths[key] = api, api
        return None


def load_api_definition(path: Path, cfg: GatewayConfig,
                        raw: dict[str, Any] | None = None) -> APIDefinition:
    """One definition file; `raw`: its JSON already read (the admin API validates a
    body as the file it will become, with the same messages)."""
    raw = load_json(path) if raw is None else raw
    check_classic(path, raw)
    r = Reader(raw, path)
    # Tyk's file loader takes a definition without api_id as it is: the API's id
    # is "" (only its API writes generate one).  Two such files collide, which
    # `load_definition_set` reports (the later file is not served).
    api_id = r.get("api_id", str, "")
    opts = r.child("coproc")
    hook_defaults = HookDef(
        name="",
        timeout_ms=opts.number("hook_timeout_ms", int, cfg.hooks.timeout_ms, 1),
        failure_policy=opts.choice("failure_policy", FAILURE_POLICIES, cfg.hooks.failure_policy),
    )
    bundle = r.get("custom_middleware_bundle", str, "")
    if r.get("custom_middleware_bundle_disabled", bool, False):
        bundle = ""  # Tyk: the API's own custom_middleware applies
    # With a bundle, the manifest replaces the definition's hooks: Tyk never
    # looks at their paths (often written for the Tyk node), nor does Coproc.
    middleware = _middleware(r.child("custom_middleware"), cfg, path, hook_defaults,
                             resolve_paths=not bundle)
    if not bundle and middleware.driver in JS_DRIVERS:
        middleware = _with_folder_hooks(middleware, cfg, api_id, hook_defaults)
    bundle_dirs: tuple[Path, ...] = ()
    bundle_error = ""
    analytics = _analytics_plugin(r.child("analytics_plugin"), cfg, path)
    if bundle:
        bundle_dirs, manifests, bundle_error = _find_bundles(cfg, api_id, bundle)
        try:
            middleware = (_merge_manifests(manifests, cfg, hook_defaults) if manifests
                          else middleware)
            # Tyk: an enabled `traffic_logs` in a manifest replaces analytics_plugin.
            for directory, manifest in zip(bundle_dirs, manifests, strict=True):
                analytics = _traffic_logs(manifest, directory) or analytics
        except ConfigError as exc:  # a bad bundle fails its API, never the gateway
            bundle_dirs, bundle_error = (), str(exc)
    token_auth, plugin_auth, strip_auth = _auth_configs(r)
    driver_file = Path(bundle_dirs[0] / "manifest.json") if bundle_dirs else path
    check_driver(driver_file, "custom_middleware.driver", middleware.driver,
                 bool(middleware.all_hooks()) or bool(bundle))
    return APIDefinition(
        api_id=api_id,
        name=r.get("name", str, api_id),
        org_id=r.get("org_id", str, ""),
        active=r.get("active", bool, True),
        use_keyless=r.get("use_keyless", bool, False),
        proxy=_proxy(r.child("proxy")),
        custom_middleware=middleware,
        custom_middleware_bundle=bundle,
        bundle_dir=bundle_dirs[0] if bundle_dirs else None,
        bundle_error=bundle_error,
        bundle_dirs=bundle_dirs,
        config_data=r.get("config_data", dict, {}),
        config_data_disabled=r.get("config_data_disabled", bool, False),
        enable_coprocess_auth=r.get("enable_coprocess_auth", bool, False)
        or r.get("custom_plugin_auth_enabled", bool, False),
        domain=r.get("domain", str, ""),
        source=path,
        raw=raw,
        token_auth=token_auth,
        plugin_auth=plugin_auth,
        strip_auth=strip_auth,
        disable_rate_limit=r.get("disable_rate_limit", bool, False),
        disable_quota=r.get("disable_quota", bool, False),
        use_standard_auth=r.get("use_standard_auth", bool, False),
        base_identity_provided_by=r.get("base_identity_provided_by", str, ""),
        event_handlers=_event_handlers(r.child("event_handlers")),
        analytics_plugin=analytics,
    )


def _auth_configs(r: Reader) -> tuple[AuthConfig, AuthConfig, tuple[AuthConfig, ...]]:
    """(token auth's AuthConfig, the auth plugin's, what strip_auth_data strips), as
    Tyk picks them: `auth_configs` (its `authToken` entry for keys) when set, else
    the older `auth`; the plugin's only from `auth_configs.coprocess`."""
    configs = r.child("auth_configs")
    by_type = {name: _auth_config(configs.child(name))
               for name, value in configs.data.items() if isinstance(value, dict)}
    legacy = _auth_config(r.child("auth"))
    token, plugin = by_type.get("authToken", legacy), by_type.get("coprocess", AuthConfig())
    if not r.get("strip_auth_data", bool, False):
        return token, plugin, ()
    return token, plugin, tuple(by_type.values()) or (legacy,)


def _auth_config(r: Reader) -> AuthConfig:
    return AuthConfig(
        auth_header_name=r.get("auth_header_name", str, ""),
        disable_header=r.get("disable_header", bool, False),
        use_param=r.get("use_param", bool, False),
        param_name=r.get("param_name", str, ""),
        use_cookie=r.get("use_cookie", bool, False),
        cookie_name=r.get("cookie_name", str, ""),
    )


def _analytics_plugin(r: Reader, cfg: GatewayConfig, source: Path) -> AnalyticsPlugin | None:
    """`analytics_plugin {enable, plugin_path, func_name}`; a `.py` file here, not a `.so`."""
    if not r.get("enable", bool, False):
        return None
    func = r.get("func_name", str, "")
    if not func.isidentifier():
        raise r.error("func_name", f"{func!r} is not a Python function name",
                      "name the function in plugin_path that takes each analytics record")
    value = r.get("plugin_path", str, "")
    if not value.endswith(".py"):
        raise r.error("plugin_path", f"{value!r} is not a Python file (Coproc runs analytics "
                      "plugins in Python, not Go .so files)", "point plugin_path at a .py file")
    candidate = Path(value)
    options = ([candidate] if candidate.is_absolute()
               else [cfg.middleware_path / candidate, source.parent / candidate])
    for option in options:
        if option.is_file():
            return AnalyticsPlugin(str(option.resolve()), func)
    raise r.error("plugin_path", f"no such file: tried {', '.join(str(o) for o in options)}",
                  "point plugin_path at the .py file (relative to middleware_path or to "
                  "this API definition's directory)")


def _traffic_logs(manifest: Reader, directory: Path) -> AnalyticsPlugin | None:
    """A manifest's `custom_middleware.traffic_logs {name, path, disabled}` (Tyk's shape)."""
    t = manifest.child("custom_middleware").child("traffic_logs")
    name = t.get("name", str, "")
    if t.get("disabled", bool, False) or not name:
        return None
    if not name.isidentifier():
        raise t.error("name", f"{name!r} is not a Python function name",
                      "name the analytics function of the bundle")
    file = directory / (t.get("path", str, "") or "middleware.py")
    if not file.resolve().is_relative_to(directory.resolve()) or not file.is_file():
        raise t.error("path", f"no such file in the bundle: {file}",
                      "name the bundle's .py file holding the analytics function")
    return AnalyticsPlugin(str(file.resolve()), name)


_ID_SOURCES = ("header", "form", "body")
_ID_METHODS = ("value", "regex", "xpath")
_EVENT_HANDLERS = ("eh_log_handler", "eh_web_hook_handler", "cp_dynamic_handler")


def _id_extractor(r: Reader) -> dict[str, Any]:
    """Tyk's id_extractor object, validated; {} when not configured."""
    # Exported Tyk definitions carry the object with empty strings: not configured.
    if not (r.data.get("extract_from") or r.data.get("extract_with")):
        return {}
    source = r.choice("extract_from", _ID_SOURCES, "header")
    method = r.choice("extract_with", _ID_METHODS, "value")
    if source == "body" and method == "value":
        raise r.error("extract_with", "\"value\" with extract_from \"body\" would use the "
                      "whole body as the credential", "use regex or xpath to pick the "
                      "credential out of the body, or extract from a header or form field")
    ec = r.child("extractor_config")
    if source == "header" and not ec.get("header_name", str, ""):
        raise ec.error("header_name", "is required to extract from a header",
                       "set extractor_config.header_name")
    # Tyk's field is `param_name` (apidef.IDExtractorConfig); `form_param_name` is
    # the name Coproc used first, still read.
    if source == "form" and not (ec.get("param_name", str, "")
                                 or ec.get("form_param_name", str, "")):
        raise ec.error("param_name", "is required to extract from a form",
                       "set extractor_config.param_name to the form field's name")
    if method == "regex":
        expression = ec.get("regex_expression", str, "")
        try:
            re.compile(expression)
        except re.error as exc:
            raise ec.error("regex_expression", f"invalid regular expression: {exc}",
                           "correct the expression") from None
        if not expression:
            raise ec.error("regex_expression", "is required with extract_with regex",
                           "set extractor_config.regex_expression")
        ec.number("regex_match_index", int, 0, 0)
    if method == "xpath" and not ec.get("xpath_expression", str, ""):
        raise ec.error("xpath_expression", "is required with extract_with xpath",
                       "set extractor_config.xpath_expression")
    return dict(r.data)


def _event_handlers(r: Reader) -> dict[str, Any]:
    events = r.child("events")
    out: dict[str, Any] = {}
    for name in events.data:
        def handler(h: Reader) -> dict[str, Any]:
            h.choice("handler_name", _EVENT_HANDLERS, "")
            return {"handler_name": h.get("handler_name", str),
                    "handler_meta": h.get("handler_meta", dict, {})}
        out[name] = list(events.items(name, handler))
    return out


def _proxy(r: Reader) -> ProxyDef:
    listen_path = r.get("listen_path", str)
    if not listen_path.startswith("/"):
        raise r.error("listen_path", f"must start with '/', got {listen_path!r}",
                      f"use \"/{listen_path}\"")
    target = r.get("target_url", str)
    if not target.startswith(("http://", "https://")):
        raise r.error("target_url", f"must be an http:// or https:// URL, got {target!r}",
                      "set the upstream's base URL, e.g. http://127.0.0.1:8081/")
    return ProxyDef(
        listen_path=listen_path,
        target_url=target,
        strip_listen_path=r.get("strip_listen_path", bool, False),
        preserve_host_header=r.get("preserve_host_header", bool, False),
    )


def _middleware(r: Reader, cfg: GatewayConfig, source: Path, d: HookDef,
                resolve_paths: bool = True) -> CustomMiddleware:
    """`resolve_paths=False`: bundle hooks, whose module is the bundle's (no path used)."""
    driver = r.get("driver", str, "")
    if driver == GRPC_DRIVER and cfg.enable_coprocess:
        _check_grpc(r, cfg)

    def hook(h: Reader) -> HookDef:
        name = h.get("name", str)
        if driver == GRPC_DRIVER:
            if not name:  # the server dispatches on it: any non-empty name will do
                raise h.error("name", "must not be empty", "name the hook as the gRPC "
                              "server knows it")
        elif not name.isidentifier():
            raise h.error("name", f"{name!r} is not a Python function name",
                          "name the decorated hook function")
        code = _inline_code(h, driver)
        if code:
            path = ""  # Tyk does not look at a path beside code
        elif resolve_paths:
            path = _hook_path(h, cfg, source, driver)
        else:
            path = _bundle_hook_path(h, source, driver)
        return HookDef(
            name=name,
            path=path,
            code=code,
            disabled=h.get("disabled", bool, False),
            raw_body_only=h.get("raw_body_only", bool, False),
            require_session=h.get("require_session", bool, False),
            timeout_ms=h.number("timeout_ms", int, d.timeout_ms, 1),
            failure_policy=h.choice("failure_policy", FAILURE_POLICIES, d.failure_policy),
            driver=driver,
        )

    auth = r.get("auth_check", dict, {})
    return CustomMiddleware(
        driver=driver,
        pre=r.items("pre", hook),
        post_key_auth=r.items("post_key_auth", hook),
        post=r.items("post", hook),
        response=r.items("response", hook),
        # Auth is always fail-closed: a broken auth plugin must never let a request in.
        auth_check=(
            _with_policy(hook(r.child("auth_check")), "fail_closed")
            if auth.get("name") else None
        ),
        id_extractor=_id_extractor(r.child("id_extractor")),
    )


#: Tyk's per-API JS folders under middleware_path/<api_id>/: folder -> phase.
_FOLDER_PHASES = {"pre": "pre", "auth": "auth_check", "post_auth": "post_key_auth",
                  "post": "post"}


def _with_folder_hooks(m: CustomMiddleware, cfg: GatewayConfig, api_id: str,
                       d: HookDef) -> CustomMiddleware:
    """Add the JS files Tyk loads for a JS-driver API from middleware_path/<api_id>/
    {pre,auth,post_auth,post}/*.js, after the definition's own: each file is one
    hook named by its file name up to the first dot, "_with_session" at the end of
    the name asks for the session, and a file in auth/ replaces auth_check."""
    if not api_id or Path(api_id).name != api_id:
        return m  # no folder of its own (and never a path outside middleware_path)
    changes: dict[str, Any] = {}
    for folder, phase in _FOLDER_PHASES.items():
        found = []
        for file in sorted((cfg.middleware_path / api_id / folder).glob("*.js")):
            name = file.name.split(".")[0]
            if not name.isidentifier():
                raise ConfigError(file, "", f"a per-API JS hook is named by its file, and "
                                  f"{name!r} is not a JS function name",
                                  "rename the file to <hook name>.js")
            policy = "fail_closed" if phase == "auth_check" else d.failure_policy
            found.append(dataclasses.replace(
                d, name=name, path=str(file.resolve()), failure_policy=policy,
                require_session=name.endswith("_with_session"), driver=m.driver))
        if found:
            changes[phase] = found[-1] if phase == "auth_check" else \
                getattr(m, phase) + tuple(found)
    return dataclasses.replace(m, **changes) if changes else m


def _with_policy(h: HookDef, policy: str) -> HookDef:
    return dataclasses.replace(h, failure_policy=policy)


def _check_grpc(r: Reader, cfg: GatewayConfig) -> None:
    """A `grpc` API needs a server address and the grpcio extra: say so at load."""
    if not cfg.grpc.server and not cfg.grpc_server.enabled:
        raise r.error("driver", "\"grpc\" needs a gRPC plugin server, but "
                      "coprocess_options.coprocess_grpc_server is not set",
                      f"set coprocess_options.coprocess_grpc_server in {cfg.path} "
                      "(e.g. tcp://127.0.0.1:5555)")
    if not _grpc_installed():
        raise r.error("driver", "\"grpc\" needs the grpcio and protobuf packages, which "
                      "are not installed", "pip install 'coproc[grpc]'")


def _grpc_installed() -> bool:
    try:
        return (importlib.util.find_spec("grpc") is not None
                and importlib.util.find_spec("google.protobuf") is not None)
    except ModuleNotFoundError:  # no `google` namespace at all
        return False


def _inline_code(h: Reader, driver: str) -> str:
    """Tyk's `code`: base64 JS that the goja driver runs instead of a file."""
    encoded = h.get("code", str, "")
    if not encoded or driver not in JS_DRIVERS:
        return ""  # coprocess drivers call hooks by name; Tyk never reads `code` there
    if driver != GOJA_DRIVER:
        raise h.error("code", "inline code runs only under the \"javascript\" driver",
                      "set custom_middleware.driver to \"javascript\", or put the code in "
                      "a file named by path")
    try:
        # Go's StdEncoding: the standard alphabet, padded; it skips line breaks.
        raw = base64.b64decode(encoded.replace("\r", "").replace("\n", ""), validate=True)
        return raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise h.error("code", "is not base64 of UTF-8 JS source (standard alphabet, padded)",
                      "set code to base64 of the hook's JS, e.g. `base64 -w0 hook.js`") from None


def _bundle_hook_path(h: Reader, manifest: Path, driver: str) -> str:
    """A goja bundle hook's file: its `path` inside the bundle ("" when none).  Only
    the goja driver uses it (to tell apart hooks of one name in several files);
    the others load the bundle's file_list and call hooks by name."""
    value = h.get("path", str, "")
    if driver != GOJA_DRIVER or not value:
        return ""
    return str((manifest.parent / value).resolve())


#: The file a hook's `path` names, per driver (for the fix in an error).
_HOOK_FILE_KIND = {"lua": ".lua", **dict.fromkeys(JS_DRIVERS, ".js")}


def _hook_path(h: Reader, cfg: GatewayConfig, source: Path, driver: str) -> str:
    """A hook's file.  Tyk opens a relative path from its working directory, its
    install directory (where tyk.conf and middleware/ live), so definitions say
    "./middleware/x.js"; Coproc tries middleware_path, the definition's directory,
    then the directories that stand for Tyk's: the gateway config's, the one above
    middleware_path and the working directory."""
    value = h.get("path", str, "")
    if not value:
        return ""
    candidate = Path(value)
    if candidate.is_absolute():
        options = [candidate]
    else:
        bases = [cfg.middleware_path, source.parent, cfg.path.parent,
                 cfg.middleware_path.parent, *_working_directory()]
        options = list(dict.fromkeys(base / candidate for base in bases))
    for option in options:
        if option.is_file():
            return str(option.resolve())
    kind = _HOOK_FILE_KIND.get(driver, ".py")
    raise h.error("path", f"no such file: tried {', '.join(str(o) for o in options)}",
                  f"point path at the hook's {kind} file (relative to middleware_path, "
                  "to this API definition's directory or to the gateway config's)")


def _working_directory() -> list[Path]:
    try:
        return [Path.cwd()]
    except OSError:  # removed under the running gateway
        return []


def _find_bundles(cfg: GatewayConfig, api_id: str,
                  value: str) -> tuple[tuple[Path, ...], list[Reader], str]:
    """(directories, manifest readers, error) of the API's bundles (all or nothing)."""
    refs = read_refs(cfg.middleware_path)
    directories, manifests, errors = [], [], []
    for name in bundle_names(value):
        ref = resolve_bundle(cfg.middleware_path, api_id, value, name, refs)
        if ref.directory is None:
            errors.append(f"bundle {name!r}: {ref.error}")
            continue
        manifest = ref.directory / "manifest.json"
        try:
            manifests.append(Reader(load_json(manifest), manifest))
        except ConfigError as exc:
            errors.append(f"bundle {name!r}: {exc.problem}")
            continue
        directories.append(ref.directory)
    if errors:
        return (), [], "; ".join(errors)
    return tuple(directories), manifests, ""


def _merge_manifests(manifests: list[Reader], cfg: GatewayConfig, d: HookDef) -> CustomMiddleware:
    """One manifest's hooks replace the definition's; several are merged as Tyk does."""
    parts = [_middleware(m.child("custom_middleware"), cfg, Path(m.file), d, resolve_paths=False)
             for m in manifests]
    if len(parts) == 1:
        return parts[0]
    drivers = {p.driver for p in parts if p.driver}
    auths = [p.auth_check for p in parts if p.auth_check is not None]
    if len(drivers) > 1 or len(auths) > 1:
        what = "drivers " + ", ".join(sorted(drivers)) if len(drivers) > 1 else \
            "more than one auth_check hook"
        raise ConfigError(manifests[-1].file, "custom_middleware",
                          f"the API's bundles declare {what}",
                          "give one bundle the auth_check and one driver to all")
    return CustomMiddleware(
        driver=next(iter(drivers), ""),
        pre=tuple(h for p in parts for h in p.pre),
        post_key_auth=tuple(h for p in parts for h in p.post_key_auth),
        post=tuple(h for p in parts for h in p.post),
        response=tuple(h for p in parts for h in p.response),
        auth_check=auths[0] if auths else None,
        id_extractor=next((p.id_extractor for p in parts if p.id_extractor), {}),
    )
