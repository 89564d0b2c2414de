"""Per-API plans: everything about an API the chain needs, worked out once at load.

The request path then only reads attributes: the hooks of each stage in the
groups that share a CALL (gateway/hook_groups.py),
the auth mode, whether the body must be buffered, the `spec` record hooks
receive and the parsed upstream target.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from config.apidef import APIDefinition, AuthConfig, HookDef
from config.gateway import GatewayConfig
from gateway.hook_groups import HookGroup, Step, group_hooks
from gateway.id_extractor import IdExtractor
from gateway.proxy import Target
from gateway.router import Router

__all__ = ["PLUGINS_DISABLED", "ApiPlan", "AuthMode", "api_spec", "build_plan", "build_router",
           "bundle_hash"]

log = logging.getLogger("coproc.gateway.plan")

#: The reason an API with plugins is closed when coprocess is switched off.
PLUGINS_DISABLED = "plugins disabled (enable_coprocess is false)"


class AuthMode(enum.Enum):
    KEYLESS = "keyless"
    PLUGIN = "plugin"  # the auth_check hook (enable_coprocess_auth)
    BUILTIN = "builtin"  # Tyk's key auth: the key in a header, its session in storage
    BOTH = "both"  # key auth and the plugin; base_identity_provided_by picks the session


@dataclass(frozen=True, slots=True)
class ApiPlan:
    api: APIDefinition
    target: Target
    spec: dict[str, str]  # shared by every call: never mutated
    auth: AuthMode
    auth_hook: HookDef | None
    response: tuple[HookDef, ...]
    needs_body: bool  # a request-phase hook runs: read the body whole
    log_fields: dict[str, str]
    # The hooks of each stage in call groups (one CALL each), in order.  The
    # gateway does nothing between pre and post on a keyless API, nor between
    # post_key_auth and post; the upstream sits between post and response.
    before_auth: tuple[HookGroup, ...] = ()  # pre (and post, keyless)
    after_auth: tuple[HookGroup, ...] = ()  # post_key_auth and post (protected)
    # strip_auth_data: the credentials taken off once after_auth ran (it then holds
    # the post_key_auth hooks only: Tyk's StripAuth sits there), and the post hooks
    # that run after that.
    strip_auth: tuple[AuthConfig, ...] = ()
    after_strip: tuple[HookGroup, ...] = ()
    response_groups: tuple[HookGroup, ...] = ()
    # Why the API's plugins cannot run: it then answers every request with
    # `broken_status` rather than letting it through unchecked.  An unusable
    # bundle is Tyk's 500; plugins switched off (`enable_coprocess: false`) is
    # 503, and never a change of auth method (a plugin-protected API must not
    # fall back to built-in key auth).
    broken: str = ""
    broken_status: int = 500
    id_extractor: IdExtractor | None = None
    base_identity: str = ""  # Tyk's base_identity_provided_by

    @property
    def api_id(self) -> str:
        return self.api.api_id


def bundle_hash(api: APIDefinition) -> str:
    """sha256 of the bundle's manifest.json, "" when there is none (yet)."""
    if api.bundle_dir is None:
        return ""
    try:
        return hashlib.sha256((api.bundle_dir / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return ""


def api_spec(api: APIDefinition) -> dict[str, str]:
    """The `spec` map hooks and event handlers receive."""
    spec = {"APIID": api.api_id, "OrgID": api.org_id, "bundle_hash": bundle_hash(api)}
    if not api.config_data_disabled:
        spec["config_data"] = json.dumps(api.config_data)
    return spec


def build_plan(api: APIDefinition, coprocess: bool = True, merge: bool = True) -> ApiPlan:
    """The API's plan; `merge`: hooks with no gateway work between them share a CALL."""
    mw = api.custom_middleware
    if coprocess and api.bundle_error:
        log.error("API %s answers 500 until its bundle is usable: %s", api.api_id,
                  api.bundle_error)
    if not coprocess and api.has_plugins:
        log.error("coprocess is disabled: API %s has plugins, so it answers 503 until "
                  "coprocess_options.enable_coprocess is true", api.api_id)
        return _plugins_off(api)
    auth_hook = mw.auth_check if coprocess and api.enable_coprocess_auth else None
    if auth_hook is not None and auth_hook.disabled:
        auth_hook = None
    if api.use_keyless:
        auth, auth_hook = AuthMode.KEYLESS, None
    elif auth_hook:
        auth = AuthMode.BOTH if api.use_standard_auth else AuthMode.PLUGIN
    else:
        auth = AuthMode.BUILTIN

    def phase(name: str) -> tuple[HookDef, ...]:
        return mw.phase(name) if coprocess else ()

    # post_key_auth hooks run only on protected APIs.
    post_key_auth = () if auth is AuthMode.KEYLESS else phase("post_key_auth")
    pre, post = phase("pre"), phase("post")
    pre_steps = [Step("pre", h) for h in pre]
    post_steps = [Step("post_key_auth", h) for h in post_key_auth] + [Step("post", h)
                                                                      for h in post]
    response = phase("response")
    keyless = auth is AuthMode.KEYLESS
    strip_auth = () if keyless else api.strip_auth
    # Stripping is gateway work between post_key_auth and post: no call spans it.
    split = len(post_key_auth) if strip_auth else len(post_steps)
    return ApiPlan(
        api=api,
        target=Target.from_proxy(api.proxy),
        spec=api_spec(api),
        auth=auth,
        auth_hook=auth_hook,
        response=response,
        needs_body=bool(pre or auth_hook or post_key_auth or post),
        log_fields={"api_id": api.api_id},
        before_auth=group_hooks(pre_steps + post_steps if keyless else pre_steps, merge),
        after_auth=() if keyless else group_hooks(post_steps[:split], merge),
        response_groups=group_hooks((Step("response", h) for h in response), merge),
        broken=api.bundle_error,
        strip_auth=strip_auth,
        after_strip=group_hooks(post_steps[split:], merge) if strip_auth else (),
        id_extractor=IdExtractor.from_config(mw.id_extractor) if auth_hook else None,
        base_identity=api.base_identity_provided_by,
    )


def _plugins_off(api: APIDefinition) -> ApiPlan:
    """An API whose plugins cannot run: closed, whatever its auth settings say."""
    return ApiPlan(api=api, target=Target.from_proxy(api.proxy), spec=api_spec(api),
                   auth=AuthMode.PLUGIN, auth_hook=None, response=(), needs_body=False,
                   log_fields={"api_id": api.api_id}, broken=PLUGINS_DISABLED,
                   broken_status=503)


def build_router(cfg: GatewayConfig, apis: Iterable[APIDefinition]) -> Router[ApiPlan]:
    """A router over the active APIs' plans."""
    return Router((api.domain, api.proxy.listen_path,
                   build_plan(api, cfg.enable_coprocess, cfg.hooks.merge))
                  for api in apis if api.active)
