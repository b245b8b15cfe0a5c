"""Configuration: the typed schema, the YAML loader and the value parsers.

from isekai.config import load_config
config = load_config("gateway.yaml")   # raises ConfigError "file:line: path: message"
"""

from isekai.config.loader import load_config, load_config_text
from isekai.config.schema import (
    Breaker,
    Config,
    HealthCheck,
    Limits,
    Listener,
    Outlier,
    Respond,
    Retry,
    Route,
    RouteMatch,
    Target,
    Upstream,
)
from isekai.config.units import parse_duration, parse_rate, parse_size

__all__ = [
    "Breaker",
    "Config",
    "HealthCheck",
    "Limits",
    "Listener",
    "Outlier",
    "Respond",
    "Retry",
    "Route",
    "RouteMatch",
    "Target",
    "Upstream",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_rate",
    "parse_size",
]
