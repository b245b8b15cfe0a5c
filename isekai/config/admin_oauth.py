"""``admin.oauth``: the OAuth2 authorization server on the admin listener (docs/oauth2.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from isekai.config.meta import setting
from isekai.config.rules import Where

__all__ = ["SIGNING_ALGORITHMS", "AdminOAuth"]

SIGNING_ALGORITHMS = ("RS256", "ES256")
ACCESS_TOKEN_TTL = 3600.0
ACCESS_TOKEN_TTL_LIMIT = 86400.0  # the longest access token: a day
REFRESH_TOKEN_TTL = 30 * 86400.0
REFRESH_TOKEN_TTL_LIMIT = 365 * 86400.0
MIN_PASSPHRASE = 16
_PRINTABLE = re.compile(r"[\x21-\x7e]{1,512}")  # visible ASCII: no spaces or controls


def _check(values: dict[str, Any], where: Where) -> None:
    issuer = values.get("issuer")
    if issuer is not None:
        parsed = urlsplit(issuer)
        if (
            not _PRINTABLE.fullmatch(issuer)
            or parsed.scheme not in ("http", "https")
            or not parsed.hostname
            or parsed.query
            or parsed.fragment
            or parsed.username is not None
        ):
            message = (
                "expected an http:// or https:// URL without query, fragment or user info "
                f"(RFC 8414), got {issuer!r}"
            )
            raise where.error("issuer", message)
        try:
            parsed.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise where.error("issuer", f"bad port in {issuer!r}") from None
        values["issuer"] = issuer.rstrip("/")
    audience = values.get("audience")
    if audience is not None and not _PRINTABLE.fullmatch(audience):
        message = f"expected 1-512 visible ASCII characters (no spaces), got {audience!r}"
        raise where.error("audience", message)
    passphrase = values.get("key_passphrase")
    if passphrase is not None and len(passphrase) < MIN_PASSPHRASE:
        message = f"must be at least {MIN_PASSPHRASE} characters long, got {len(passphrase)}"
        raise where.error("key_passphrase", message)


@dataclass(frozen=True, slots=True)
class AdminOAuth:
    """The OAuth2 authorization server (client credentials and refresh tokens) served on the
    admin listener under ``/oauth/``; its clients are registered through ``/api/oauth/``."""

    enabled: bool = setting("bool", "Serve the authorization server.", default=False)
    issuer: str | None = setting(
        "string",
        "The `iss` of its tokens and the base of its endpoint URLs (http/https, no query); "
        "set it when the admin listener binds every interface or sits behind a proxy.",
        default=None,
        what="a URL",
        default_doc="the admin listener's URL (`http://<admin.bind>`)",
    )
    access_token_ttl: float = setting(
        "duration",
        "How long an access token is valid (a client may have its own, up to a day).",
        default=ACCESS_TOKEN_TTL,
        maximum=ACCESS_TOKEN_TTL_LIMIT,
    )
    refresh_token_ttl: float = setting(
        "duration",
        "How long a refresh token is valid (each refresh makes a new one).",
        default=REFRESH_TOKEN_TTL,
        maximum=REFRESH_TOKEN_TTL_LIMIT,
    )
    signing_algorithm: str = setting(
        "enum",
        "How access tokens are signed: RSA 2048 (`RS256`) or P-256 (`ES256`).",
        default="RS256",
        choices=SIGNING_ALGORITHMS,
        case="upper",
        unsupported="algorithm {value!r} is not supported (supported: {choices})",
    )
    audience: str | None = setting(
        "string",
        "The `aud` claim of every access token.",
        default=None,
        what="a string",
        default_doc="no `aud` claim",
    )
    key_passphrase: str | None = setting(
        "string",
        "Encrypts the private signing keys kept in the store (at least 16 characters; give "
        'it from the environment: `"${ISEKAI_OAUTH_KEY_PASSPHRASE}"`); every gateway on the '
        "store needs the same one.",
        default=None,
        repr=False,
        what="a secret string",
        default_doc="keys stored unencrypted",
    )

    validate = staticmethod(_check)
