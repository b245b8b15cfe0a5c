"""Isekai: a high-throughput API gateway. This module is the public plugin API."""

from isekai.config.meta import item, setting
from isekai.errors import ConfigError, IsekaiError, ProtocolError
from isekai.policy import Policy, PolicyFamily, Response, register

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "IsekaiError",
    "Policy",
    "PolicyFamily",
    "ProtocolError",
    "Response",
    "__version__",
    "item",
    "register",
    "setting",
]
