"""Consumers in the config: who a request belongs to once a credential policy identified it.

A consumer (`Consumer`) has a name, an optional ``tier`` (which rate-limit tier applies to it),
``tags`` and its credentials: API keys (`ConsumerKey`). Consumers come from the YAML file
(top-level ``consumers:``) and from the store (``/api/consumers``); the worker keeps the running
set in `isekai.policies.environment.ConsumerDirectory`, where the credential families look
them up.

`IdentityHeaders` is the ``upstream_headers`` setting of every credential family: which
headers carry the resolved consumer and selected claims to the upstream. Whatever names it
lists are removed from every client request, on every route, before any policy runs: a client
cannot claim an identity by sending the header itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config import defaults
from isekai.config.meta import item, setting
from isekai.config.rules import Where

__all__ = ["Consumer", "ConsumerKey", "IdentityHeaders"]


def _key(values: dict[str, Any], where: Where) -> None:
    if (values.get("key") is None) == (values.get("hash") is None):
        raise where.error(None, "needs exactly one of 'key' (the key itself) or 'hash'")


@dataclass(frozen=True, slots=True)
class ConsumerKey:
    """One API key of a consumer. In YAML the key itself is given (usually from the
    environment: ``key: "${ACME_KEY}"``); keys made through the API are stored as ``hash``
    only (HMAC-SHA256 of the key with the server-side pepper, hex)."""

    id: str = setting("name", "The key's id (unique within its consumer); shown in logs.")
    key: str | None = setting(
        "string",
        "The key itself (YAML only; at least 16 characters). Hashed when loaded.",
        default=None,
        default_doc="—",
        schema={"minLength": 16, "maxLength": 256},
    )
    hash: str | None = setting(
        "string",
        "The key's hash: 64 lower-case hex digits (how the API stores keys).",
        default=None,
        default_doc="—",
        schema={"pattern": "^[0-9a-f]{64}$"},
    )
    prefix: str | None = setting(
        "string",
        "The key's first characters, shown to tell keys apart.",
        default=None,
        default_doc="—",
        schema={"maxLength": 16},
    )
    created_at: float | None = setting(
        "number", "When the key was made (unix seconds).", default=None, default_doc="—"
    )
    expires_at: float | None = setting(
        "number",
        "When the key stops working (unix seconds); a rotated key's end of grace.",
        default=None,
        default_doc="never",
    )

    validate = staticmethod(_key)


@dataclass(frozen=True, slots=True)
class Consumer:
    """The identity a request resolves to (an application, a partner, a user)."""

    entity: ClassVar[str] = "consumer"

    name: str = setting("name", "Unique among consumers; `X-Consumer-ID` carries it upstream.")
    tier: str | None = setting(
        "name",
        "Its rate-limit tier (e.g. `free`, `premium`).",
        default=None,
        default_doc="none",
    )
    tags: tuple[str, ...] = setting(
        "list",
        "Free-form labels (logs, admin API filters).",
        default=(),
        item=item("name", what="a tag"),
        what="a list of tags",
        unique="tag {text!r} is listed twice",
        default_doc="none",
    )
    keys: tuple[ConsumerKey, ...] = setting(
        "list",
        "Its API keys (for the `api_key` policy).",
        default=(),
        item=item("object", cls=ConsumerKey),
        unique="key id {text!r} is listed twice",
        unique_by="id",
        default_doc="none",
    )


@dataclass(frozen=True, slots=True)
class IdentityHeaders:
    """Headers that carry the identity a credential policy resolved to the upstream."""

    consumer: str | None = setting(
        "header_name",
        "Carries the consumer's name (absent when no consumer was resolved).",
        default=defaults.CONSUMER_HEADER,
        nullable=True,
        default_doc="`X-Consumer-ID`",
    )
    claims: tuple[tuple[str, str], ...] = setting(
        "header_map",
        "Claim name → header name: verified claims sent upstream (lists joined with commas).",
        default=(),
        item=item("header_name"),
        default_doc="none",
    )
