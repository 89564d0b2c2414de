"""Typed settings: the gateway config file and Tyk classic API definitions.

The shipped default configuration lives beside this module: `coproc.json`,
`apps/` (API definitions) and `middleware/` (example plugins).
"""

from config.apidef import APIDefinition, HookDef, load_api_definitions
from config.gateway import GatewayConfig, load_gateway_config
from config.reader import ConfigError

__all__ = [
    "APIDefinition",
    "ConfigError",
    "GatewayConfig",
    "HookDef",
    "load_api_definitions",
    "load_gateway_config",
]
