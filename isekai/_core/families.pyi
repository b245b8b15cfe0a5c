"""The hot policy families: headers, cors, ip_filter (compiled; see families.pyx)."""

from collections.abc import Iterable
from typing import Any

from isekai._core.iptrie import IpSet
from isekai._core.policy import Answer, CorePolicy

def percent_visible(raw: bytes) -> bytes:
    """`raw` with every byte outside visible ASCII (0x21-0x7E) written as %XX."""

class Template:
    constant: bytes | None
    def __init__(self, parts: Iterable[tuple[str, Any]]) -> None: ...

class HeaderEdits:
    empty: bool
    def __init__(
        self,
        remove: Iterable[str | bytes] = (),
        rename: Iterable[tuple[str | bytes, str | bytes]] = (),
        set: Iterable[tuple[str | bytes, Template | Iterable[tuple[str, Any]]]] = (),
        add: Iterable[tuple[str | bytes, Template | Iterable[tuple[str, Any]]]] = (),
    ) -> None: ...

class HeadersPolicy(CorePolicy):
    request_edits: HeaderEdits
    response_edits: HeaderEdits
    def __init__(self, request: HeaderEdits, response: HeaderEdits) -> None: ...

class CorsPolicy(CorePolicy):
    def __init__(
        self,
        any_origin: bool,
        exact: Iterable[str | bytes],
        patterns: Iterable[tuple[str | bytes | None, str | bytes]],
        methods: Iterable[str | bytes],
        headers: Iterable[str | bytes],
        expose_headers: Iterable[str | bytes],
        credentials: bool,
        max_age: float | None,
    ) -> None: ...
    def origin_allowed(self, origin: str | bytes) -> bool: ...

class IpFilterPolicy(CorePolicy):
    allow: IpSet | None
    deny: IpSet | None
    refused: Answer
    def __init__(self, allow: IpSet | None, deny: IpSet | None) -> None: ...
    def allows(self, address: str | bytes) -> bool: ...
