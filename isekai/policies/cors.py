"""The ``cors`` family: cross-origin resource sharing (`CorsConfig`).

Origins are sorted here, once per policy instance, into "any", an exact set and subdomain
patterns; `isekai._core.families.CorsPolicy` matches them per request and answers preflights.
"""

from __future__ import annotations

from typing import Any

from isekai._core.families import CorsPolicy

Pattern = tuple[str | None, str]


def compile_origins(origins: Any) -> tuple[bool, frozenset[str], tuple[Pattern, ...]]:
    """``(any, exact, patterns)`` from configured origins: ``*`` sets `any`;
    ``https://app.example.com`` goes to `exact` (lower-case, no trailing "/");
    ``*.example.org`` becomes ``(None, ".example.org")`` (any scheme) and
    ``https://*.example.org`` ``("https", ".example.org")``. A pattern stands for one or more
    labels ("a.example.org", "a.b.example.org"), never the bare domain; a port in the origin
    must be written in the pattern (``*.example.org:8443``)."""
    any_origin = False
    exact: set[str] = set()
    patterns: list[Pattern] = []
    for raw in origins:
        origin = raw.strip().lower().rstrip("/")
        if origin == "*":
            any_origin = True
            continue
        scheme, sep, rest = origin.rpartition("://")
        if rest.startswith("*."):
            if sep and not scheme:
                raise ValueError(f"bad origin pattern {raw!r}")
            pattern = (scheme or None, rest[1:])
            if len(rest) < 3 or "*" in rest[1:]:
                raise ValueError(f"bad origin pattern {raw!r}")
            if pattern not in patterns:
                patterns.append(pattern)
            continue
        if "*" in origin:
            raise ValueError(f"'*' may only stand for subdomains ('*.example.org'): {raw!r}")
        exact.add(origin)
    return any_origin, frozenset(exact), tuple(patterns)


def build(config: Any, env: Any = None) -> CorsPolicy:
    """A `CorsPolicy` from a `CorsConfig`."""
    any_origin, exact, patterns = compile_origins(config.origins)
    return CorsPolicy(
        any_origin,
        exact,
        patterns,
        tuple(m.upper() if m != "*" else m for m in config.methods),
        tuple(config.headers),
        tuple(config.expose_headers),
        bool(config.credentials),
        config.max_age,
    )
