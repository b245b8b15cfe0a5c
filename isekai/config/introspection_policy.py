"""The ``oauth2_introspection`` policy family's config: `IntrospectionConfig` (RFC 7662).

The gateway asks the authorization server whether an opaque token is active (a POST of
``token=...`` with HTTP Basic client authentication), caches the answer for ``cache_ttl``
(never past the token's ``exp``) and then applies the same ``require`` as the ``jwt`` family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config.access import (
    REALM_PATTERN,
    AccessRequirement,
    TokenSources,
    bearer_header,
    check_realm,
    check_url,
)
from isekai.config.consumers import IdentityHeaders
from isekai.config.jwt_policy import MAX_TOKEN_SIZE, TOKEN_CACHE_SIZE
from isekai.config.meta import setting

Where = Any  # isekai.config.rules.Where

__all__ = ["IntrospectionConfig"]

CACHE_TTL = 60.0
TIMEOUT = 5.0


def _introspection(values: dict[str, Any], where: Where) -> None:
    check_realm(values, where)
    problem = check_url(values["introspection_url"], "introspection_url")
    if problem:
        raise where.error("introspection_url", problem)
    if ":" in values["client_id"]:
        # RFC 7617: the user-id of Basic authentication cannot hold a colon
        raise where.error("client_id", "must not contain ':' (HTTP Basic authentication)")


@dataclass(frozen=True, slots=True)
class IntrospectionConfig:
    """Accept opaque OAuth2 access tokens an authorization server says are active (RFC 7662
    token introspection, cached): 401 for inactive tokens, 403 when ``require`` is not met,
    503 when the server cannot be asked."""

    family: ClassVar[str] = "oauth2_introspection"

    introspection_url: str = setting(
        "string", "The introspection endpoint (`https://auth.example.com/oauth2/introspect`)."
    )
    client_id: str = setting(
        "string",
        "The gateway's client id at the authorization server (HTTP Basic user).",
        schema={"minLength": 1, "maxLength": 256},
    )
    client_secret: str = setting(
        "string",
        'Its client secret (HTTP Basic password); write `"${ENV_VAR}"`.',
        repr=False,
        schema={"minLength": 1, "maxLength": 1024},
    )
    cache_ttl: float = setting(
        "duration",
        "How long an answer is kept (never past the token's `exp`); `0s`: ask every time.",
        default=CACHE_TTL,
        minimum=0,
        maximum=86400,
        default_doc="`60s`",
    )
    timeout: float = setting(
        "duration",
        "How long one introspection call may take; then 503.",
        default=TIMEOUT,
        maximum=60,
        default_doc="`5s`",
    )
    require: AccessRequirement | None = setting(
        "object",
        "Roles, scopes and claims an active token needs on these routes (else 403).",
        default=None,
        cls=AccessRequirement,
        default_doc="none",
    )
    consumer_claim: str | None = setting(
        "string",
        "The answer's member naming the consumer.",
        default=None,
        schema={"minLength": 1, "maxLength": 256},
        default_doc="`client_id`, else `sub`",
    )
    consumer_required: bool = setting(
        "bool",
        "Refuse (403) an active token whose consumer is not a configured consumer.",
        default=False,
    )
    roles_claim: str = setting(
        "string",
        "The answer's member holding roles (a list or a space-separated string).",
        default="roles",
        schema={"minLength": 1, "maxLength": 256},
    )
    scopes_claim: str = setting(
        "string",
        "The answer's member holding scopes (RFC 7662: `scope`, space-separated).",
        default="scope",
        schema={"minLength": 1, "maxLength": 256},
    )
    token: TokenSources = setting(
        "object",
        "Where the token comes from: `{header: Authorization, cookie: NAME, query: NAME}`.",
        default_factory=bearer_header,
        cls=TokenSources,
        default_doc="`Authorization: Bearer`",
    )
    hide_credentials: bool = setting("bool", "Remove the token before upstream.", default=False)
    max_token_size: int = setting(
        "size",
        "Longer tokens are refused (401) without asking the server.",
        default=MAX_TOKEN_SIZE,
        maximum=1 << 20,
        default_doc="`8KiB`",
    )
    cache_size: int = setting(
        "int",
        "Answers kept (by the token's SHA-256).",
        default=TOKEN_CACHE_SIZE,
        minimum=0,
        maximum=10_000_000,
        default_doc="`10000`",
    )
    realm: str = setting(
        "string",
        "The realm named in `WWW-Authenticate`.",
        default="isekai",
        schema={"pattern": REALM_PATTERN},
    )
    upstream_headers: IdentityHeaders = setting(
        "object",
        "Headers carrying the consumer and selected claims upstream.",
        default_factory=IdentityHeaders,
        cls=IdentityHeaders,
        default_doc="`X-Consumer-ID`",
    )

    validate = staticmethod(_introspection)
