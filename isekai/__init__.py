"""Isekai: a high-throughput API gateway. This module is the public plugin API."""

from isekai.errors import ConfigError, IsekaiError, ProtocolError
from isekai.policy import Policy, Response

__version__ = "0.1.0"

__all__ = ["ConfigError", "IsekaiError", "Policy", "ProtocolError", "Response", "__version__"]
