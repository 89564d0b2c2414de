"""A request's API key where Tyk's AuthConfig says it is, and `strip_auth_data`.

The key is read from the header (unless `disable_header`); a query parameter
(`use_param`) and then a cookie (`use_cookie`) replace it when they hold a
value, as in Tyk's `getAuthToken`.  `strip_auth_data` takes every configured
credential off the request before the upstream sees it: the header, the query
parameter when parameters are used, and the cookie.
"""

from __future__ import annotations

from collections.abc import Iterable

from config.apidef import AuthConfig
from gateway.tyk_object import RequestState
from ipc.merged import rebuild_query

__all__ = ["find_key", "strip_credentials"]


def find_key(state: RequestState, auth: AuthConfig) -> str:
    """The credential as the request carries it ("" when it has none)."""
    key = "" if auth.disable_header else state.headers.get(auth.header, "")
    if auth.use_param:
        key = state.params_view().get(auth.param_name or auth.default_name) or key
    if auth.use_cookie:
        key = _cookie(state, auth.cookie_name or auth.default_name) or key
    return key


def strip_credentials(state: RequestState, configs: Iterable[AuthConfig]) -> None:
    """Remove each config's credential (Tyk's StripAuth, run once a key is accepted)."""
    for auth in configs:
        if auth.use_param:
            name = auth.param_name or auth.auth_header_name or "Authorization"
            if name in state.params_view():
                state.query = rebuild_query(state.query, (name,), {})
                state._params_view = None
        headers = state.writable_headers()
        headers.popall(auth.header, None)
        _drop_cookie(state, auth.cookie_name or auth.header)


def _cookie(state: RequestState, name: str) -> str:
    """The first cookie called `name` over all Cookie headers (Go's Request.Cookie)."""
    for line in state.headers.getall("Cookie", ()):
        for part in line.split(";"):
            cookie_name, _, value = part.strip().partition("=")
            if cookie_name == name:
                value = value.strip()
                if len(value) > 1 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                return value
    return ""


def _drop_cookie(state: RequestState, name: str) -> None:
    """Take the cookie(s) called `name` out of the Cookie headers.  Tyk removes the
    first cookie whose text starts with `name`, which also drops a cookie whose
    name merely begins with it; Coproc matches the name exactly."""
    lines = state.headers.getall("Cookie", ())
    if not lines:
        return
    kept = [part.strip() for line in lines for part in line.split(";")
            if part.strip() and part.strip().partition("=")[0] != name]
    headers = state.writable_headers()
    headers.popall("Cookie", None)
    if kept:
        headers["Cookie"] = "; ".join(kept)
