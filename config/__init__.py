"""Typed settings: the gateway config file and Tyk classic API definitions.

The shipped default configuration lives beside this module: `coproc.json`,
`apps/` (API definitions) and `middleware/` (example plugins).
"""

from config.apidef import (
    APIDefinition,
    BrokenDefinition,
    DefinitionSet,
    HookDef,
    load_api_definitions,
    load_definition_set,
)
from config.gateway import GatewayConfig, load_gateway_config
from config.reader import ConfigError

__all__ = [
    "APIDefinition",
    "BrokenDefinition",
    "ConfigError",
    "DefinitionSet",
    "GatewayConfig",
    "HookDef",
    "load_api_definitions",
    "load_definition_set",
    "load_gateway_config",
]
