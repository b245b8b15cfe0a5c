"""Every exception Isekai raises.

    IsekaiError
    ├── ConfigError            a configuration file or value is wrong; carries file, line and path
    │   └── RouteConflictError two routes match exactly the same requests
    └── ProtocolError          an HTTP message broke a rule; carries the status to answer with
        ├── LocalProtocolError   we were about to send something invalid
        └── RemoteProtocolError  the peer sent something invalid

The data plane never raises these across a request: `_core` turns protocol errors into responses.
"""

from __future__ import annotations


class IsekaiError(Exception):
    """Base class of every Isekai error."""


class ConfigError(IsekaiError):
    """A configuration mistake, located as ``file:line: path: message``."""

    def __init__(
        self, message: str, *, path: str = "", file: str | None = None, line: int | None = None
    ) -> None:
        self.message = message
        self.path = path
        self.file = file
        self.line = line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{self.message}"


class RouteConflictError(ConfigError):
    """Two routes have the same host, path pattern and method: neither is more specific."""


class ProtocolError(IsekaiError):
    """An HTTP message broke a rule; ``status`` is what the gateway answers with."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class LocalProtocolError(ProtocolError):
    """We were about to send something invalid."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid."""
