"""Where Tyk's AuthConfig finds a key, and strip_auth_data, on a request state."""

from __future__ import annotations

from multidict import CIMultiDict

from config.apidef import AuthConfig
from gateway.credentials import find_key, strip_credentials
from gateway.tyk_object import RequestState


def _state(query: str = "", *headers: tuple[str, str]) -> RequestState:
    return RequestState(method="GET", path="/x", query=query, request_uri="/x",
                        scheme="http", headers=CIMultiDict(headers))


def test_later_places_replace_the_header_only_with_a_value() -> None:
    both = AuthConfig(use_param=True, use_cookie=True)
    state = _state("Authorization=p", ("Authorization", "h"), ("Cookie", "Authorization=c"))
    assert find_key(state, both) == "c"
    assert find_key(_state("Authorization=", ("Authorization", "h")), both) == "h"
    assert find_key(_state("Authorization=p", ("Authorization", "h")), both) == "p"
    assert find_key(_state("", ("Authorization", "h")), AuthConfig(disable_header=True)) == ""


def test_unnamed_parameters_and_cookies_follow_the_header_name() -> None:
    named = AuthConfig(auth_header_name="X-Key", use_param=True, use_cookie=True)
    assert find_key(_state("X-Key=p"), named) == "p"
    assert find_key(_state("x-key=p"), named) == ""  # parameter names are case-sensitive
    off = AuthConfig(auth_header_name="X-Key", disable_header=True, use_param=True)
    assert find_key(_state("Authorization=p", ("X-Key", "h")), off) == "p"


def test_cookies_over_several_headers_and_quoted() -> None:
    auth = AuthConfig(use_cookie=True, cookie_name="tok")
    state = _state("", ("Cookie", "a=1; tokx=no"), ("Cookie", 'b=2; tok="yes"; tok=later'))
    assert find_key(state, auth) == "yes"


def test_strip_takes_off_header_parameter_and_cookie_only() -> None:
    auth = AuthConfig(auth_header_name="X-Key", use_param=True, cookie_name="tok")
    state = _state("X-Key=1&keep=2", ("X-Key", "h"), ("Other", "o"),
                   ("Cookie", "tok=1; tokx=2"), ("Cookie", "c=3"))
    strip_credentials(state, [auth])
    assert state.query == "keep=2" and state.params_view() == {"keep": "2"}
    assert dict(state.headers) == {"Other": "o", "Cookie": "tokx=2; c=3"}
    plain = _state("Authorization=1", ("Authorization", "h"), ("Cookie", "Authorization=1"))
    strip_credentials(plain, [AuthConfig()])  # no use_param: the parameter stays
    assert plain.query == "Authorization=1" and "Cookie" not in plain.headers
    assert "Authorization" not in plain.headers
