"""What Coproc does not do of Tyk's settings: said at start, never silently ignored.

One place for three lists (the README's "Tyk settings Coproc does not apply"
section is written from them):

* `UNAPPLIED_GATEWAY` / `UNAPPLIED_API`: tyk.conf and API definition fields
  Coproc knows as Tyk's but does not act on.  A file that sets one (to other
  than Tyk's default) gets one warning line per field at start
  (`unapplied_warnings`);
* `UNSUPPORTED_DRIVERS`: `custom_middleware.driver` values whose plugins
  Coproc cannot run.  Such an API is refused with a clear error, never run
  as Python (`check_driver`);
* Tyk OAS definitions (`x-tyk-api-gateway`, `openapi`, `is_oas`) are
  recognised and refused: Coproc serves classic definitions (`check_classic`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.reader import ConfigError

__all__ = [
    "SUPPORTED_DRIVERS",
    "UNAPPLIED_API",
    "UNAPPLIED_GATEWAY",
    "UNSUPPORTED_DRIVERS",
    "Unapplied",
    "check_classic",
    "check_driver",
    "find_unapplied",
    "unapplied_warnings",
]

#: Drivers whose hooks Coproc runs: the worker (Python, Lua, JavaScript), a Tyk gRPC
#: plugin server.
SUPPORTED_DRIVERS = ("", "python", "lua", "otto", "javascript", "grpc")

#: Tyk's other plugin drivers, and why Coproc refuses an API that uses one.
UNSUPPORTED_DRIVERS: dict[str, str] = {
    "goplugin": "Go plugins are not supported",
}


def _truthy(value: Any) -> bool:
    return bool(value)


def _false(value: Any) -> bool:
    return value is False


def _not_file(value: Any) -> bool:
    return value not in ("", "file", None)


def _non_http(value: Any) -> bool:
    return value not in ("", "http", "https", None)


@dataclass(frozen=True, slots=True)
class Unapplied:
    """A Tyk field Coproc does not act on: its dotted path (`*`: any key) and why it
    matters; `when` says which values are worth a warning (Tyk's defaults are not)."""

    path: str
    what: str
    when: Callable[[Any], bool] = _truthy


UNAPPLIED_GATEWAY: tuple[Unapplied, ...] = (
    Unapplied("http_server_options.use_ssl", "TLS on the gateway's listener"),
    Unapplied("control_api_hostname", "a separate host for the admin API (it is served on "
              "the main listener)"),
    Unapplied("control_api_port", "a separate port for the admin API (it is served on the "
              "main listener)"),
    Unapplied("policies.policy_source", "policies from the Dashboard or RPC (only the file "
              "source: policy_path, policy_record_name)", _not_file),
    Unapplied("use_db_app_configs", "API definitions from the Dashboard (only app_path is "
              "read)"),
    Unapplied("slave_options.use_rpc", "MDCB / RPC worker mode"),
    Unapplied("storage.tls_max_version", "a maximum TLS version to Redis (the Python ssl "
              "default maximum is used)"),
    Unapplied("storage.optimisation_max_idle", "a separate idle pool size (the pool keeps "
              "up to optimisation_max_active connections)"),
    Unapplied("global_session_lifetime", "a gateway-wide session lifetime"),
    Unapplied("force_global_session_lifetime", "a gateway-wide session lifetime"),
    Unapplied("min_token_length", "a minimum key length"),
    Unapplied("disable_key_actions_by_username", "switching off key lookups by username"),
    Unapplied("proxy_ssl_insecure_skip_verify", "skipping upstream TLS verification"),
    Unapplied("health_check.enable_health_checks", "Tyk's health check counters"),
    Unapplied("coprocess_options.python_path_prefix", "Tyk's embedded Python paths (the "
              "worker runs Coproc's Python)"),
    Unapplied("coprocess_options.python_version", "Tyk's embedded Python version (the "
              "worker runs Coproc's Python)"),
)

UNAPPLIED_API: tuple[Unapplied, ...] = (
    Unapplied("enable_jwt", "JWT authentication"),
    Unapplied("use_basic_auth", "Basic authentication"),
    Unapplied("use_oauth2", "OAuth 2.0"),
    Unapplied("use_openid", "OpenID Connect"),
    Unapplied("enable_signature_checking", "HMAC request signatures"),
    Unapplied("use_mutual_tls_auth", "mutual TLS authentication"),
    Unapplied("auth.use_certificate", "client certificate keys"),
    Unapplied("auth_configs.*.use_certificate", "client certificate keys"),
    Unapplied("auth.validate_signature", "key signature validation"),
    Unapplied("auth_configs.*.validate_signature", "key signature validation"),
    Unapplied("use_go_plugin_auth", "Go plugin authentication"),
    Unapplied("enable_ip_whitelisting", "the IP allow list"),
    Unapplied("enable_ip_blacklisting", "the IP block list"),
    Unapplied("CORS.enable", "CORS"),
    Unapplied("cache_options.enable_cache", "response caching"),
    Unapplied("global_rate_limit.rate", "the API-wide rate limit"),
    Unapplied("enable_batch_request_support", "batch requests"),
    Unapplied("enable_context_vars", "context variables"),
    Unapplied("session_lifetime", "the API's session lifetime"),
    Unapplied("internal", "internal-only APIs (this API is served publicly)"),
    Unapplied("listen_port", "a per-API listen port"),
    Unapplied("protocol", "TCP/TLS proxying", _non_http),
    Unapplied("certificates", "per-API TLS certificates"),
    Unapplied("upstream_certificates", "client certificates to the upstream"),
    Unapplied("pinned_public_keys", "upstream certificate pinning"),
    Unapplied("proxy.enable_load_balancing", "load balancing over proxy.target_list"),
    Unapplied("proxy.service_discovery.use_discovery_service", "service discovery"),
    Unapplied("proxy.check_host_against_uptime_tests", "uptime-test based host checks"),
    Unapplied("proxy.transport.proxy_url", "an outbound proxy to the upstream"),
    Unapplied("proxy.transport.ssl_insecure_skip_verify", "skipping upstream TLS "
              "verification"),
    Unapplied("uptime_tests.check_list", "uptime tests"),
    Unapplied("response_processors", "response processors"),
    Unapplied("graphql.enabled", "GraphQL"),
    Unapplied("version_data.not_versioned", "API versioning (every request is served as "
              "not versioned)", _false),
    Unapplied("version_data.versions.*.paths.*", "version path lists (ignored, white and "
              "black lists)"),
    Unapplied("version_data.versions.*.extended_paths.*", "extended paths (transforms, "
              "rewrites, mocks, validation, ...)"),
    Unapplied("version_data.versions.*.global_headers", "global request headers"),
    Unapplied("version_data.versions.*.global_headers_remove", "global header removal"),
)


def _values(data: Any, parts: list[str]) -> Iterable[Any]:
    """The values at a dotted path; `*` stands for every key of a JSON object."""
    if not parts:
        yield data
        return
    if not isinstance(data, Mapping):
        return
    head, rest = parts[0], parts[1:]
    children = list(data.values()) if head == "*" else \
        [data[head]] if head in data else []
    for child in children:
        yield from _values(child, rest)


def find_unapplied(data: Mapping[str, Any],
                   table: Iterable[Unapplied]) -> list[Unapplied]:
    """The entries of `table` that `data` sets to a value worth a warning."""
    return [entry for entry in table
            if any(entry.when(v) for v in _values(data, entry.path.split(".")))]


def unapplied_warnings(config_file: Path, config: Mapping[str, Any],
                       apis: Iterable[tuple[Path, Mapping[str, Any]]]) -> list[str]:
    """One line per field set but not applied: the gateway config's, then the
    definitions' (each line naming the files that set the field)."""
    lines = []
    for entry in find_unapplied(config, UNAPPLIED_GATEWAY):
        lines.append(f"{config_file}: {entry.path} is set, but Coproc does not apply it "
                     f"({entry.what}); see README, Tyk settings Coproc does not apply")
    by_field: dict[Unapplied, list[str]] = {}
    for path, data in apis:
        for entry in find_unapplied(data, UNAPPLIED_API):
            by_field.setdefault(entry, []).append(path.name)
    for entry, files in by_field.items():
        lines.append(f"API definition field {entry.path} is set in {', '.join(files)}, but "
                     f"Coproc does not apply it ({entry.what}); see README, Tyk settings "
                     f"Coproc does not apply")
    return lines


def check_driver(file: Path, where: str, driver: str, has_hooks: bool) -> None:
    """Refuse an API whose hooks need a plugin driver Coproc cannot run."""
    if driver in SUPPORTED_DRIVERS or not has_hooks:
        return
    why = UNSUPPORTED_DRIVERS.get(driver, f"{driver!r} is not a plugin driver Coproc knows")
    raise ConfigError(file, where, f"{driver!r}: {why}; this API's hooks cannot run, and "
                      "Coproc never runs them as Python",
                      "use a driver Coproc runs (python, lua, otto, javascript, grpc), or "
                      "serve this API from Tyk")


def check_classic(file: Path, raw: Mapping[str, Any]) -> None:
    """Refuse a Tyk OAS definition, saying that classic definitions are what Coproc serves."""
    marker = next((k for k in ("x-tyk-api-gateway", "openapi", "swagger") if k in raw), "")
    if not marker and raw.get("is_oas") is True:
        marker = "is_oas"
    if marker:
        raise ConfigError(file, marker, "this is a Tyk OAS API definition; Coproc supports "
                          "Tyk classic API definitions only",
                          "write the API as a Tyk classic definition (the classic JSON "
                          "format, without x-tyk-api-gateway or is_oas) in app_path")
