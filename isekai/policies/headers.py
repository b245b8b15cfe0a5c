"""The ``headers`` family: edit request and response header fields (`HeadersConfig`).

Templates are compiled here, once per policy instance, into literal and placeholder parts;
`isekai._core.families.HeadersPolicy` renders them per request.
"""

from __future__ import annotations

import re
from typing import Any

from isekai._core.families import HeaderEdits, HeadersPolicy, Template

PLACEHOLDER = re.compile(r"\$\{(client_ip|request_id|route|param\.([A-Za-z_][A-Za-z0-9_]*))\}")
"""``${client_ip}``, ``${request_id}``, ``${route}``, ``${param.NAME}``; any other ``${...}``
is literal text (the config loader refuses unknown dotted names)."""

Part = tuple[str, Any]


def compile_template(text: str) -> tuple[Part, ...]:
    """A header value template as parts: ``("literal", bytes)``, ``("client_ip", None)``,
    ``("request_id", None)``, ``("route", None)``, ``("param", name)``; adjacent literals are
    merged and empty ones dropped. Literal text is encoded as latin-1 (header values are
    ISO-8859-1 on the wire), a character outside it as UTF-8."""
    parts: list[Part] = []
    pos = 0

    def literal(chunk: str) -> None:
        if not chunk:
            return
        try:
            data = chunk.encode("latin-1")
        except UnicodeEncodeError:
            data = chunk.encode("utf-8")
        if parts and parts[-1][0] == "literal":
            parts[-1] = ("literal", parts[-1][1] + data)
        else:
            parts.append(("literal", data))

    for m in PLACEHOLDER.finditer(text):
        literal(text[pos : m.start()])
        if m.group(2) is not None:
            parts.append(("param", m.group(2)))
        else:
            parts.append((m.group(1), None))
        pos = m.end()
    literal(text[pos:])
    return tuple(parts)


def compile_edits(edits: Any) -> HeaderEdits:
    """A `HeaderEdits` config (or None) as the compiled `_core` edits."""
    if edits is None:
        return HeaderEdits()
    return HeaderEdits(
        remove=tuple(edits.remove),
        rename=tuple(edits.rename),
        set=tuple((name, Template(compile_template(value))) for name, value in edits.set),
        add=tuple((name, Template(compile_template(value))) for name, value in edits.add),
    )


def build(config: Any, env: Any = None) -> HeadersPolicy:
    """A `HeadersPolicy` from a `HeadersConfig`."""
    return HeadersPolicy(compile_edits(config.request), compile_edits(config.response))
