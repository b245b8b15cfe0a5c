"""What the bearer-token families (``jwt``, ``oauth2_introspection``) share in the config.

`AccessRequirement` is the ``require`` setting: the roles, scopes and claim values a verified
token must carry on the routes of that policy (per-route RBAC: a valid token without them is
answered 403). `TokenSources` is the ``token`` setting: where the token is read from (the
``Authorization: Bearer`` header, a cookie, a query parameter). `check_url` checks an
``http(s)://`` URL where it enters (JWKS, discovery and introspection endpoints).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from isekai.config.meta import item, setting

Where = Any  # isekai.config.rules.Where

__all__ = [
    "CLAIM_VALUES_SCHEMA",
    "REALM_PATTERN",
    "STRINGS_SCHEMA",
    "AccessRequirement",
    "TokenSources",
    "bearer_header",
    "check_realm",
    "check_url",
    "strings",
]

# a string, or a list of strings (issuer, audience)
STRINGS_SCHEMA = {
    "anyOf": [
        {"type": "string", "minLength": 1, "maxLength": 1024},
        {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 1024},
            "minItems": 1,
        },
    ]
}
_SCALAR = {"type": ["string", "number", "boolean"]}
# claim name -> a value, or a list of values (any of them)
CLAIM_VALUES_SCHEMA = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [_SCALAR, {"type": "array", "items": _SCALAR, "minItems": 1}]
    },
}
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}")
_QUERY_NAME = re.compile(r"[A-Za-z0-9._~\-]{1,128}")
REALM_PATTERN = "^[\\x20\\x21\\x23-\\x5b\\x5d-\\x7e]{1,128}$"
_REALM = re.compile(REALM_PATTERN[1:-1])
_CONTROL = re.compile(r"[\x00-\x20\x7f]")


def strings(value: Any) -> tuple[str, ...] | None:
    """A string or a non-empty list of non-empty strings as a tuple; None when it is neither."""
    if isinstance(value, str):
        return (value,) if value else None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    return None


def check_url(url: str, what: str) -> str | None:
    """None when ``url`` is an absolute ``http``/``https`` URL with a host and no spaces or
    control characters; else the message saying what is wrong."""
    if _CONTROL.search(url):
        return f"{what} must not contain spaces or control characters"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"{what} must be an http:// or https:// URL with a host, got {url!r}"
    if parts.username or parts.password:
        return f"{what} must not carry credentials in the URL"
    if parts.fragment:
        return f"{what} must not have a #fragment"
    return None


def check_realm(values: dict[str, Any], where: Where) -> None:
    """The ``realm`` goes into a quoted ``WWW-Authenticate`` parameter: printable ASCII
    without quotes or backslashes."""
    realm = values.get("realm")
    if realm is not None and not _REALM.fullmatch(realm):
        raise where.error("realm", "expected 1-128 printable ASCII characters without '\"' or '\\'")


def _requirement(values: dict[str, Any], where: Where) -> None:
    claims = values.get("claims")
    if claims is not None:
        if not isinstance(claims, dict) or not claims:
            raise where.error("claims", "expected a mapping of claim name -> value or list")
        pairs = []
        for name, wanted in claims.items():
            options = wanted if isinstance(wanted, list) else [wanted]
            if (
                not name
                or not options
                or not all(isinstance(v, (str, int, float, bool)) for v in options)
            ):
                raise where.error(
                    "claims",
                    f"claim {name!r}: expected a string, number, boolean or a list of them",
                )
            pairs.append((name, tuple(options)))
        values["claims"] = tuple(pairs)
    if not (values.get("roles") or values.get("scopes") or values.get("claims")):
        raise where.error(None, "needs at least one of 'roles', 'scopes' or 'claims'")


@dataclass(frozen=True, slots=True)
class AccessRequirement:
    """What a verified token must carry to pass (else 403 ``insufficient_scope``)."""

    roles: tuple[str, ...] = setting(
        "list",
        "Roles (from the token's roles claim).",
        default=(),
        item=item("string", schema={"minLength": 1, "maxLength": 256}),
        what="a list of role names",
        unique="role {text!r} is listed twice",
        default_doc="none",
    )
    scopes: tuple[str, ...] = setting(
        "list",
        "Scopes (from the token's scope claim).",
        default=(),
        item=item("string", schema={"minLength": 1, "maxLength": 256}),
        what="a list of scopes",
        unique="scope {text!r} is listed twice",
        default_doc="none",
    )
    claims: Any = setting(
        "json",
        "Claim name → the value it must have, or a list of accepted values "
        "(a list-valued claim passes when it holds one of them).",
        default=None,
        schema=CLAIM_VALUES_SCHEMA,
        default_doc="none",
    )
    match: str = setting(
        "enum",
        "`all`: every listed role, scope and claim is needed; `any`: one of them is enough.",
        default="all",
        choices=("any", "all"),
        case="lower",
    )

    validate = staticmethod(_requirement)


def _sources(values: dict[str, Any], where: Where) -> None:
    cookie, query = values.get("cookie"), values.get("query")
    if cookie is not None and not _COOKIE_NAME.fullmatch(cookie):
        raise where.error("cookie", f"not a cookie name: {cookie!r}")
    if query is not None and not _QUERY_NAME.fullmatch(query):
        raise where.error("query", f"not a query parameter name: {query!r}")
    if values.get("header") is None and cookie is None and query is None:
        values["header"] = "Authorization"


@dataclass(frozen=True, slots=True)
class TokenSources:
    """Where the token is read from, tried in this order: header, cookie, query parameter.
    Only the sources written are used (``{cookie: session}``: the cookie alone); none written
    means the ``Authorization: Bearer`` header."""

    header: str | None = setting(
        "header_name",
        "The header carrying the token: `Authorization` expects `Bearer <token>`; any other "
        "header carries the token alone.",
        default=None,
        default_doc="`Authorization` when neither `cookie` nor `query` is given",
    )
    cookie: str | None = setting(
        "string",
        "The cookie carrying the token.",
        default=None,
        default_doc="none",
    )
    query: str | None = setting(
        "string",
        "The query parameter carrying the token.",
        default=None,
        default_doc="none",
    )

    validate = staticmethod(_sources)


def bearer_header() -> TokenSources:
    """The default source: ``Authorization: Bearer``."""
    return TokenSources(header="Authorization")
