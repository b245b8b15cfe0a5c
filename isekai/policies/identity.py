"""What a credential policy does once it has verified a request: `identify`.

Every credential family (``jwt``, ``oauth2_introspection``, ``api_key``, ``hmac``) ends its
accepting path here, so the facts a request carries afterwards are the same whoever proved
them:

- ``req.ctx``: ``consumer`` (the consumer's name, or absent), ``consumer_tier``,
  ``consumer_tags``, ``credential`` (the family: ``jwt``, ``api_key``, ...),
  ``credential_id`` (a key id, a ``kid``, an HMAC ``keyid``), ``claims`` (verified claims, a
  dict), ``roles`` and ``scopes`` (lists, when the family knows them);
- upstream headers per the policy's ``upstream_headers`` (`IdentityHeaders`): the consumer's
  name and selected claims. The same names are stripped from every client request before any
  policy runs (`isekai.gateway.stripped_headers`), so a value seen upstream is the gateway's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["claim_text", "identify"]

_FORBIDDEN = frozenset("\r\n\x00")


def claim_text(value: Any) -> str | None:
    """A claim as a header value: strings as they are, lists joined with ", ", other values
    as JSON; None when it cannot travel in a header (control characters, not latin-1)."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)):
        parts = [claim_text(part) for part in value]
        if any(part is None for part in parts):
            return None
        text = ", ".join(part for part in parts if part is not None)
    else:
        text = json.dumps(value, separators=(",", ":"))
    if any(c in _FORBIDDEN for c in text):
        return None
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return None
    return text


def _copy(value: Any) -> Any:
    """``value`` with its lists and dicts copied (JSON-shaped claims): a verdict cached for a
    token is given to many requests, and one request's edits must not reach the next."""
    if isinstance(value, list):
        return [_copy(item) for item in value]
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value


def identify(
    req: Any,
    consumer: Any | None,
    *,
    credential: str,
    credential_id: str | None = None,
    claims: Mapping[str, Any] | None = None,
    roles: list[str] | None = None,
    scopes: list[str] | None = None,
    headers: Any | None = None,
) -> None:
    """Record who ``req`` belongs to (see the module's text). ``consumer`` is a
    `isekai.config.consumers.Consumer` or None; ``headers`` an `IdentityHeaders` or None."""
    ctx = req.ctx
    ctx["credential"] = credential
    if credential_id is not None:
        ctx["credential_id"] = credential_id
    if consumer is not None:
        ctx["consumer"] = consumer.name
        if consumer.tier is not None:
            ctx["consumer_tier"] = consumer.tier
        if consumer.tags:
            ctx["consumer_tags"] = list(consumer.tags)
    # copies: the families pass what they cached for a token (see `_copy`)
    if claims is not None:
        ctx["claims"] = {key: _copy(value) for key, value in claims.items()}
    if roles is not None:
        ctx["roles"] = list(roles)
    if scopes is not None:
        ctx["scopes"] = list(scopes)
    if headers is None:
        return
    if consumer is not None and headers.consumer:
        req.set_header(headers.consumer, consumer.name)
    if claims:
        for claim, header in headers.claims:
            if claim in claims:
                text = claim_text(claims[claim])
                if text is not None:
                    req.set_header(header, text)
