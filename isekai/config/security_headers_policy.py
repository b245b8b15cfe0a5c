"""The ``security_headers`` policy family's config: browser security headers on every response
(`SecurityHeadersConfig`).

A preset (`PRESETS`: ``strict``, ``moderate``, ``none``) gives a value to each header; a key
per header replaces the preset's value (a string, or ``false`` to send none). The loader
resolves the whole into ``fields`` (not a YAML key): the ``(name, value)`` pairs the policy
sends, each value checked against its header's grammar, so the runtime only copies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from yaml.nodes import MappingNode

from isekai.config import units
from isekai.config.meta import setting
from isekai.config.rules import Where

__all__ = [
    "HSTS_PRELOAD_MIN_AGE",
    "PRESETS",
    "REFERRER_POLICIES",
    "SecurityHeadersConfig",
    "hsts_value",
]

_HSTS = re.compile(r"max-age=\d+(\s*;\s*(includesubdomains|preload))*", re.I)
HSTS_PRELOAD_MIN_AGE = 31_536_000  # a year: what browsers' preload lists ask for

REFERRER_POLICIES = (
    "no-referrer",
    "no-referrer-when-downgrade",
    "origin",
    "origin-when-cross-origin",
    "same-origin",
    "strict-origin",
    "strict-origin-when-cross-origin",
    "unsafe-url",
)
"""The W3C Referrer Policy tokens (https://www.w3.org/TR/referrer-policy/)."""

# key -> (header name, the accepted values as sent (None: any header value))
_HEADERS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "hsts": ("Strict-Transport-Security", None),
    "csp": ("Content-Security-Policy", None),
    "frame_options": ("X-Frame-Options", ("DENY", "SAMEORIGIN")),
    "content_type_options": ("X-Content-Type-Options", ("nosniff",)),
    "referrer_policy": ("Referrer-Policy", REFERRER_POLICIES),
    "permissions_policy": ("Permissions-Policy", None),
    "cross_origin_opener_policy": (
        "Cross-Origin-Opener-Policy",
        ("same-origin", "same-origin-allow-popups", "noopener-allow-popups", "unsafe-none"),
    ),
    "cross_origin_resource_policy": (
        "Cross-Origin-Resource-Policy",
        ("same-origin", "same-site", "cross-origin"),
    ),
    "cross_origin_embedder_policy": (
        "Cross-Origin-Embedder-Policy",
        ("require-corp", "credentialless", "unsafe-none"),
    ),
}

PRESETS: dict[str, dict[str, str]] = {
    # APIs and anything that renders nothing: refuse every browser capability
    "strict": {
        "hsts": "max-age=63072000; includeSubDomains",
        "csp": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        "frame_options": "DENY",
        "content_type_options": "nosniff",
        "referrer_policy": "no-referrer",
        "permissions_policy": (
            "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
            "microphone=(), payment=(), usb=()"
        ),
        "cross_origin_opener_policy": "same-origin",
        "cross_origin_resource_policy": "same-origin",
    },
    # web applications: same-origin framing, no CSP beyond framing (write your own `csp`)
    "moderate": {
        "hsts": "max-age=31536000",
        "csp": "frame-ancestors 'self'",
        "frame_options": "SAMEORIGIN",
        "content_type_options": "nosniff",
        "referrer_policy": "strict-origin-when-cross-origin",
        "permissions_policy": "camera=(), geolocation=(), microphone=()",
        "cross_origin_opener_policy": "same-origin-allow-popups",
    },
    "none": {},
}
"""Each preset's values by key; a key it does not name is not sent."""


def hsts_value(max_age: int, include_subdomains: bool = False, preload: bool = False) -> str:
    """``Strict-Transport-Security`` from its parts (RFC 6797)."""
    value = f"max-age={max_age}"
    if include_subdomains:
        value += "; includeSubDomains"
    if preload:
        value += "; preload"
    return value


def _sub_error(where: Where, key: str, sub: str, message: str) -> Any:
    # the error at ``key.sub`` (its own line) when the value was a mapping
    _, node = where.fields[key]
    if isinstance(node, MappingNode):
        for key_node, value_node in node.value:
            if getattr(key_node, "value", None) == sub:
                return where.builder.error(value_node, f"{where.path}.{key}.{sub}", message)
    return where.error(key, message)


_HSTS_KEYS = ("max_age", "include_subdomains", "preload")


def _hsts(value: dict[str, Any], where: Where) -> str:
    for sub in value:
        if sub not in _HSTS_KEYS:
            message = f"unknown key {sub!r} (allowed: {', '.join(_HSTS_KEYS)})"
            raise _sub_error(where, "hsts", sub, message)
    if "max_age" not in value:
        raise where.error("hsts", "needs max_age (seconds, or a duration like 365d)")
    raw = value["max_age"]
    try:
        if isinstance(raw, bool):
            raise ValueError
        max_age = int(units.parse_duration(raw))
    except (ValueError, TypeError):
        message = f"expected a duration like 365d or seconds, got {raw!r}"
        raise _sub_error(where, "hsts", "max_age", message) from None
    flags = {}
    for sub in ("include_subdomains", "preload"):
        flag = value.get(sub, False)
        if not isinstance(flag, bool):
            raise _sub_error(where, "hsts", sub, f"expected true or false, got {flag!r}")
        flags[sub] = flag
    if flags["preload"] and (not flags["include_subdomains"] or max_age < HSTS_PRELOAD_MIN_AGE):
        message = (
            "preload needs include_subdomains: true and max_age of at least a year "
            f"({HSTS_PRELOAD_MIN_AGE} s): browsers' preload lists refuse less"
        )
        raise _sub_error(where, "hsts", "preload", message)
    return hsts_value(max_age, flags["include_subdomains"], flags["preload"])


def _one(key: str, value: Any, where: Where) -> str | None:
    """The header value of ``key`` as written (None: ``false``, not sent)."""
    if value is False:
        return None
    header, choices = _HEADERS[key]
    if key == "hsts" and isinstance(value, dict):
        return _hsts(value, where)
    if key == "referrer_policy" and isinstance(value, list):
        if not value or not all(isinstance(v, str) for v in value):
            raise where.error(key, "expected a list of referrer policy tokens")
        value = ", ".join(v.strip() for v in value)
    if not isinstance(value, str):
        what = "a header value or false"
        if key == "hsts":
            what = "a header value, false or {max_age, include_subdomains, preload}"
        raise where.error(key, f"expected {what}, got {value!r}")
    value = value.strip()
    if not value:
        raise where.error(key, f"an empty {header} is not a value: write false to send none")
    try:
        units.check_header_value(value)
    except ValueError as exc:
        raise where.error(key, str(exc)) from None
    if key == "referrer_policy":
        tokens = [token.strip().lower() for token in value.split(",")]
        for token in tokens:
            if token not in REFERRER_POLICIES:
                message = f"{token!r} is not a referrer policy (one of: {', '.join(choices or ())})"
                raise where.error(key, message)
        return ", ".join(tokens)
    if choices is not None:
        by_case = {choice.lower(): choice for choice in choices}
        if value.lower() not in by_case:
            message = f"{value!r} is not one of: {', '.join(choices)} (or false)"
            raise where.error(key, message)
        return by_case[value.lower()]
    if key == "hsts" and not _HSTS.fullmatch(value):
        message = (
            "expected a Strict-Transport-Security value like "
            "'max-age=31536000; includeSubDomains; preload' (RFC 6797)"
        )
        raise where.error(key, message)
    return value


def _security_headers(values: dict[str, Any], where: Where) -> None:
    chosen = dict(PRESETS[values.get("preset", "strict")])
    for key in _HEADERS:
        if values.get(key) is not None:
            chosen[key] = _one(key, values[key], where)  # type: ignore[assignment]
            values[key] = False if chosen[key] is None else chosen[key]  # hashable, as sent
    fields = tuple((_HEADERS[key][0], value) for key, value in chosen.items() if value is not None)
    if not fields:
        raise where.error(None, "sends no header: choose a preset or give header values")
    values["fields"] = fields


def _value_schema(choices: tuple[str, ...] | None) -> dict[str, Any]:
    """A header's value in the JSON Schema: text (one of ``choices``, any case) or false."""
    text: dict[str, Any] = {"type": "string", "pattern": units.HEADER_VALUE_PATTERN, "minLength": 1}
    if choices is not None:  # any case, as the loader reads them
        words = (
            "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in choice)
            for choice in choices
        )
        text = {"type": "string", "pattern": f"^({'|'.join(words)})$"}
    return {"oneOf": [text, {"const": False}]}


_HSTS_OBJECT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["max_age"],
    "properties": {
        "max_age": {"type": ["integer", "string"], "minimum": 0},
        "include_subdomains": {"type": "boolean"},
        "preload": {"type": "boolean"},
    },
}
_REFERRER_LIST = {"type": "array", "minItems": 1, "items": {"enum": list(REFERRER_POLICIES)}}


def _header(key: str, doc: str, schema: dict[str, Any] | None = None, what: str = "") -> Any:
    return setting(
        "json",
        doc,
        default=None,
        what=what or "a header value or false",
        schema=schema or _value_schema(_HEADERS[key][1]),
        default_doc="the preset's",
    )


@dataclass(frozen=True, slots=True)
class SecurityHeadersConfig:
    """Browser security headers (HSTS, CSP, X-Frame-Options, X-Content-Type-Options,
    Referrer-Policy, Permissions-Policy, cross-origin policies) on every response of its
    routes: a preset, each header replaceable by a value of its own or `false`."""

    family: ClassVar[str] = "security_headers"

    preset: str = setting(
        "enum",
        "The values to start from: `strict` (APIs), `moderate` (web applications) or `none`.",
        default="strict",
        choices=tuple(PRESETS),
        case="lower",
        default_doc="`strict`",
    )
    hsts: Any = _header(
        "hsts",
        "`Strict-Transport-Security`: a value (`max-age=31536000`), "
        "`{max_age, include_subdomains, preload}` or `false`.",
        {
            "oneOf": [
                {"type": "string", "pattern": "^[Mm][Aa][Xx]-[Aa][Gg][Ee]=", "minLength": 1},
                {"const": False},
                _HSTS_OBJECT,
            ]
        },
        "a header value, a mapping or false",
    )
    csp: Any = _header("csp", "`Content-Security-Policy`: a policy or `false`.")
    frame_options: Any = _header(
        "frame_options", "`X-Frame-Options`: `DENY`, `SAMEORIGIN` or `false`."
    )
    content_type_options: Any = _header(
        "content_type_options", "`X-Content-Type-Options`: `nosniff` or `false`."
    )
    referrer_policy: Any = _header(
        "referrer_policy",
        "`Referrer-Policy`: a W3C token (`no-referrer`, `strict-origin-when-cross-origin`, ...), "
        "a list of them (fallbacks first) or `false`.",
        {
            "oneOf": [
                {"type": "string", "pattern": units.HEADER_VALUE_PATTERN, "minLength": 1},
                {"const": False},
                _REFERRER_LIST,
            ]
        },
        "a token, a list of tokens or false",
    )
    permissions_policy: Any = _header(
        "permissions_policy",
        "`Permissions-Policy`: a policy (`camera=(), geolocation=()`) or `false`.",
    )
    cross_origin_opener_policy: Any = _header(
        "cross_origin_opener_policy",
        "`Cross-Origin-Opener-Policy`: `same-origin`, `same-origin-allow-popups`, "
        "`noopener-allow-popups`, `unsafe-none` or `false`.",
    )
    cross_origin_resource_policy: Any = _header(
        "cross_origin_resource_policy",
        "`Cross-Origin-Resource-Policy`: `same-origin`, `same-site`, `cross-origin` or `false`.",
    )
    cross_origin_embedder_policy: Any = _header(
        "cross_origin_embedder_policy",
        "`Cross-Origin-Embedder-Policy`: `require-corp`, `credentialless`, `unsafe-none` or "
        "`false` (no preset sends it).",
    )
    override_upstream: bool = setting(
        "bool",
        "Replace the upstream's own value of these headers (`false`: keep it, add ours only "
        "where the upstream sent none).",
        default=True,
    )
    fields: tuple[tuple[str, str], ...] = setting(
        "json", "The (header, value) pairs sent, preset and keys resolved.", default=(), yaml=False
    )

    validate = staticmethod(_security_headers)
