"""The ``security_headers`` family: browser security headers on responses
(`SecurityHeadersConfig`).

The config holds the resolved ``(name, value)`` pairs. With ``override_upstream`` (the
default) they become the response ``set`` edits of a `isekai._core.families.HeadersPolicy`,
so a response costs what a ``headers`` policy costs (no Python call): every field of those
names the upstream sent is replaced. Without it, `KeepUpstream` (a Python response phase)
adds each field only where the response has none of that name.
"""

from __future__ import annotations

from typing import Any

from isekai._core.families import HeaderEdits, HeadersPolicy, Template

__all__ = ["KeepUpstream", "build"]


def _literal(value: str) -> Template:
    # values are checked header values (Latin-1); no placeholders: `${...}` stays as written
    return Template((("literal", value.encode("latin-1")),))


class KeepUpstream:
    """The response phase of ``override_upstream: false``: a field is added only when the
    response carries none of that name (the upstream's own value wins)."""

    def __init__(self, fields: tuple[tuple[str, str], ...]) -> None:
        self.fields = fields

    def on_response(self, req: Any, head: Any) -> None:
        for name, value in self.fields:
            if head.header(name) is None:
                head.set_header(name, value)


def build(config: Any, env: Any = None) -> Any:
    """The policy for a `SecurityHeadersConfig`."""
    fields = tuple(config.fields)
    if not config.override_upstream:
        return KeepUpstream(fields)
    response = HeaderEdits(set=tuple((name, _literal(value)) for name, value in fields))
    return HeadersPolicy(HeaderEdits(), response)
