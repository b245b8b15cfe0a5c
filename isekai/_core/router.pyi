"""Host + path + method route table (compiled; see router.pyx for the matching rules)."""

from typing import Any, Protocol

class ParsedPattern(Protocol):
    """What ``isekai.config.units.parse_path_pattern`` returns (a ``PathPattern``)."""

    segments: tuple[str | None, ...]  # static text; None for a {param}; last "*": wildcard
    params: tuple[str, ...]
    wildcard: bool
    text: str

class Router:
    def __init__(self) -> None: ...
    def add(
        self, host: str | None, methods: tuple[str, ...] | None, pattern: ParsedPattern, value: Any
    ) -> None:
        """Add a route.

        host: None (any), "api.example.com" (exact) or "*.example.com" (any subdomain depth,
        not the bare domain). methods: None (any) or method names; GET also answers HEAD unless
        HEAD is routed separately. pattern: parsed by the config's one grammar
        (``parse_path_pattern("/users/{id}")``; "/files/*" matches "/files/" + anything, not
        "/files").

        Raises RouteConflictError when the entry would replace another (same host, same shape
        ignoring param names, overlapping methods; the config loader reports these first with
        file and line), ConfigError on malformed host or methods, TypeError on a str pattern.
        """
    def remove(
        self, host: str | None, methods: tuple[str, ...] | None, pattern: ParsedPattern
    ) -> Any:
        """Remove the route added with these host, methods and pattern shape; return its value.

        KeyError (and no change) when there is none. With `add`, changes one route in place.
        """
    def match(
        self, host: bytes, method: bytes, path: bytes
    ) -> tuple[Any, dict[str, str] | None] | tuple[None, bytes] | None:
        """Match a request.

        host is the raw Host header (port and case ignored); path excludes the query string.
        Returns (value, params) on a match (params None when the pattern has no params or
        wildcard; the wildcard tail is under "*"), (None, b"GET, HEAD, ...") when only the
        method is wrong (405), or None (404).
        """
    def __len__(self) -> int: ...
