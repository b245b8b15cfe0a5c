"""API keys in the config: the ``api_key`` policy family's settings (`ApiKeyConfig`) and how a
key is made and hashed (`make_key`, `key_hash`).

A key is stored and compared only as its hash: ``HMAC-SHA256(pepper, key)`` in lower-case hex,
the pepper being ``security.api_key_pepper`` (a secret of the gateway, never stored beside the
hashes). Every gateway that shares a store needs the same pepper, or the keys made through one
are unknown to the others. Without a pepper the hash is keyed with the empty string: YAML keys
still work (the gateway warns at startup), but the admin API refuses to make keys, so that
setting a pepper later cannot silently invalidate keys already handed out.

Keys made by the gateway are ``isk_`` followed by 32 random bytes in url-safe base64 (43
characters); ``prefix`` (the first 8 characters) is kept to tell keys apart in listings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config.consumers import IdentityHeaders
from isekai.config.meta import setting
from isekai.config.rules import Where

__all__ = [
    "KEY_PREFIX",
    "PREFIX_LENGTH",
    "QUERY_NAME_PATTERN",
    "REALM_PATTERN",
    "ApiKeyConfig",
    "key_hash",
    "make_key",
]

KEY_PREFIX = "isk_"  # what every key the gateway makes starts with (secret scanners find them)
KEY_BYTES = 32  # random bytes per key made by the gateway
PREFIX_LENGTH = 8  # characters of a key kept in the clear (`prefix`)
DEFAULT_HEADER = "X-API-Key"
DEFAULT_REALM = "isekai"
# a query parameter name: RFC 3986 unreserved characters (no encoding needed)
QUERY_NAME_PATTERN = r"^[A-Za-z0-9._~-]{1,64}$"
# a realm goes into a quoted-string of WWW-Authenticate: printable ASCII without " and \
REALM_PATTERN = r"^[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}$"
_QUERY_NAME = re.compile(QUERY_NAME_PATTERN[1:-1])
_REALM = re.compile(REALM_PATTERN[1:-1])


def key_hash(pepper: str | bytes | None, key: str | bytes) -> str:
    """``HMAC-SHA256(pepper, key)`` as 64 lower-case hex digits (no pepper: the empty key)."""
    if isinstance(pepper, str):
        pepper = pepper.encode()
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogateescape")
    return hmac.new(pepper or b"", key, hashlib.sha256).hexdigest()


def make_key() -> str:
    """A new key: ``isk_`` + 32 random bytes, url-safe base64 without padding."""
    random_part = base64.urlsafe_b64encode(secrets.token_bytes(KEY_BYTES)).rstrip(b"=")
    return KEY_PREFIX + random_part.decode("ascii")


def _api_key(values: dict[str, Any], where: Where) -> None:
    header = values.get("header")
    query = values.get("query")
    if query is not None and not _QUERY_NAME.fullmatch(query):
        message = (
            f"not a query parameter name: {query!r} (1 to 64 letters, digits and any of '._~-')"
        )
        raise where.error("query", message)
    if "realm" in values and not _REALM.fullmatch(values["realm"]):
        message = (
            f"not a realm: {values['realm']!r} (1 to 64 printable ASCII characters, without "
            "'\"' and '\\')"
        )
        raise where.error("realm", message)
    if header is not None:
        managed = {"host", "content-length", "transfer-encoding", "connection", "x-request-id"}
        headers: IdentityHeaders = values.get("upstream_headers") or IdentityHeaders()
        identity = {(headers.consumer or "").lower()} | {h.lower() for _, h in headers.claims}
        if header.lower() in managed or header.lower() in identity:
            message = (
                f"{header} cannot carry the key: it is managed by the gateway or is an identity "
                "header (stripped from client requests)"
            )
            raise where.error("header", message)


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    """Requests must carry an API key of a consumer (in a header or a query parameter); a
    missing, unknown, expired or revoked key is answered 401."""

    family: ClassVar[str] = "api_key"

    header: str = setting(
        "header_name",
        "The request header carrying the key (looked at first).",
        default=DEFAULT_HEADER,
        default_doc="`X-API-Key`",
    )
    query: str | None = setting(
        "string",
        "A query parameter that may carry the key when the header is absent (e.g. `api_key`); "
        "keys in URLs end up in logs, so it is off unless named.",
        default=None,
        what="a query parameter name",
        schema={"pattern": QUERY_NAME_PATTERN},
        default_doc="off",
    )
    hide_credentials: bool = setting(
        "bool",
        "Remove the key (header and query parameter) before the request goes upstream.",
        default=True,
    )
    realm: str = setting(
        "string",
        "The realm named in the `WWW-Authenticate` challenge of a 401.",
        default=DEFAULT_REALM,
        schema={"pattern": REALM_PATTERN},
        default_doc="`isekai`",
    )
    upstream_headers: IdentityHeaders = setting(
        "object",
        "Headers carrying the identity upstream (the consumer's name in `X-Consumer-ID` by "
        "default); clients cannot send them.",
        default_factory=IdentityHeaders,
        cls=IdentityHeaders,
        default_doc="`{consumer: X-Consumer-ID}`",
    )

    validate = staticmethod(_api_key)
