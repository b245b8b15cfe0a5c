"""What the store keeps for the OAuth2 authorization server, and the contract of its methods.

Four tables (migration 6): ``oauth_clients`` (registered clients, their secrets hashed),
``oauth_signing_keys`` (the server's signing keys, the private half PEM-encoded and encrypted
when ``admin.oauth.key_passphrase`` is set), ``oauth_refresh_tokens`` (SHA-256 of each refresh
token, never the token, with its family, scope and state) and ``oauth_revoked_tokens`` (the
``jti`` of revoked access tokens until they expire).

`OAuthStore` is a mixin of ``Store``: every backend implements these methods, each one
transaction, atomic across processes sharing the database.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from typing import Any

__all__ = [
    "OAuthClient",
    "OAuthStore",
    "RefreshOutcome",
    "RefreshToken",
    "SigningKey",
]


@dataclass(frozen=True, slots=True)
class OAuthClient:
    """A registered client. ``secret_hash`` is ``sha256$<salt hex>$<digest hex>``;
    ``access_token_ttl`` (seconds) overrides ``admin.oauth.access_token_ttl`` when set;
    ``version`` starts at 1 and grows with each change (the ETag)."""

    client_id: str
    name: str
    secret_hash: str
    scopes: tuple[str, ...]
    grant_types: tuple[str, ...]
    consumer: str | None
    access_token_ttl: float | None
    version: int
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key. ``private_key`` is PKCS#8 PEM (encrypted or not); ``public_jwk`` the
    public half as a JWK with ``kid``, ``alg`` and ``use``. A retired key signs nothing more;
    its public half is published until ``verify_until`` (unix seconds)."""

    kid: str
    algorithm: str
    private_key: str
    public_jwk: dict[str, Any]
    created_at: float
    retired_at: float | None = None
    verify_until: float | None = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """A refresh token as stored: ``token_hash`` is the SHA-256 (hex) of the token. Every
    token made by refreshing another shares its ``family`` (one grant)."""

    token_hash: str
    family: str
    client_id: str
    scope: str
    created_at: float
    expires_at: float
    consumed_at: float | None = None
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What consuming a refresh token did. ``status``: ``ok`` (consumed, the replacement
    stored), ``unknown`` (no such token for this client), ``expired``, ``revoked``, or
    ``reused`` (it had been consumed already: its whole family is now revoked)."""

    status: str
    token: RefreshToken | None = None


CLIENT_COLUMNS = (
    "client_id, name, secret_hash, scopes, grant_types, consumer, access_token_ttl, version, "
    "created_at, updated_at"
)
KEY_COLUMNS = "kid, algorithm, private_key, public_jwk, created_at, retired_at, verify_until"
REFRESH_COLUMNS = (
    "token_hash, family, client_id, scope, created_at, expires_at, consumed_at, revoked_at"
)


def client_from_row(row: Any) -> OAuthClient:
    (client_id, name, secret_hash, scopes, grants, consumer, ttl, version, created, updated) = row
    return OAuthClient(
        client_id,
        name,
        secret_hash,
        tuple(json.loads(scopes)),
        tuple(json.loads(grants)),
        consumer,
        ttl,
        version,
        created,
        updated,
    )


def client_values(client: OAuthClient) -> tuple[Any, ...]:
    return (
        client.client_id,
        client.name,
        client.secret_hash,
        json.dumps(list(client.scopes)),
        json.dumps(list(client.grant_types)),
        client.consumer,
        client.access_token_ttl,
        client.version,
        client.created_at,
        client.updated_at,
    )


def key_from_row(row: Any) -> SigningKey:
    kid, algorithm, private_key, public_jwk, created_at, retired_at, verify_until = row
    return SigningKey(
        kid, algorithm, private_key, json.loads(public_jwk), created_at, retired_at, verify_until
    )


def key_values(key: SigningKey) -> tuple[Any, ...]:
    return (
        key.kid,
        key.algorithm,
        key.private_key,
        json.dumps(key.public_jwk, separators=(",", ":")),
        key.created_at,
        key.retired_at,
        key.verify_until,
    )


def refresh_from_row(row: Any) -> RefreshToken:
    return RefreshToken(*row)


def refresh_values(token: RefreshToken) -> tuple[Any, ...]:
    return (
        token.token_hash,
        token.family,
        token.client_id,
        token.scope,
        token.created_at,
        token.expires_at,
        token.consumed_at,
        token.revoked_at,
    )


def refused(token: RefreshToken, client_id: str, now: float) -> str | None:
    """Why ``token`` may not be consumed by ``client_id`` at ``now`` (a `RefreshOutcome`
    status), or None when it may."""
    if token.client_id != client_id:
        return "unknown"
    if token.revoked_at is not None:
        return "revoked"
    if token.consumed_at is not None:
        return "reused"
    if token.expires_at <= now:
        return "expired"
    return None


class OAuthStore(abc.ABC):
    """The authorization server's part of a store (see the module docstring)."""

    # -- clients ------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create_oauth_client(self, client: OAuthClient) -> None:
        """Register ``client``; ``AlreadyExists`` if its ``client_id`` is taken."""

    @abc.abstractmethod
    async def get_oauth_client(self, client_id: str) -> OAuthClient | None:
        """The client, or ``None``."""

    @abc.abstractmethod
    async def list_oauth_clients(self) -> list[OAuthClient]:
        """Every client, oldest first."""

    @abc.abstractmethod
    async def delete_oauth_client(self, client_id: str, if_version: int | None = None) -> None:
        """Remove the client and its refresh tokens; ``NotFound``, or ``VersionMismatch``
        when ``if_version`` is given and differs."""

    @abc.abstractmethod
    async def set_oauth_client_secret(
        self, client_id: str, secret_hash: str, if_version: int | None = None
    ) -> OAuthClient:
        """Replace the client's secret hash (version + 1); ``NotFound``/``VersionMismatch``."""

    # -- signing keys -------------------------------------------------------------------------

    @abc.abstractmethod
    async def ensure_signing_key(self, candidate: SigningKey) -> SigningKey:
        """The newest unretired key of ``candidate.algorithm``; ``candidate`` is stored and
        returned when there is none (one key, however many processes ask at once)."""

    @abc.abstractmethod
    async def rotate_signing_key(self, candidate: SigningKey, verify_until: float) -> SigningKey:
        """Store ``candidate`` as the signing key of its algorithm; the keys it replaces are
        retired now and stay published until ``verify_until``."""

    @abc.abstractmethod
    async def list_signing_keys(self) -> list[SigningKey]:
        """Every stored key, newest first."""

    # -- refresh tokens -----------------------------------------------------------------------

    @abc.abstractmethod
    async def add_refresh_token(self, token: RefreshToken) -> None:
        """Store a new refresh token."""

    @abc.abstractmethod
    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        """The refresh token with that hash, or ``None``."""

    @abc.abstractmethod
    async def consume_refresh_token(
        self, token_hash: str, client_id: str, replacement: RefreshToken, now: float
    ) -> RefreshOutcome:
        """Consume the token and store ``replacement`` in its family (with its scope), as one
        atomic step: of two concurrent calls for one token exactly one gets ``ok``. A token
        consumed before is ``reused`` and revokes its whole family."""

    @abc.abstractmethod
    async def revoke_refresh_family(self, family: str, now: float) -> int:
        """Revoke every token of the family; how many were still unrevoked."""

    # -- revoked access tokens ----------------------------------------------------------------

    @abc.abstractmethod
    async def revoke_access_token(self, jti: str, expires_at: float) -> None:
        """Remember ``jti`` as revoked until ``expires_at`` (idempotent)."""

    @abc.abstractmethod
    async def is_access_token_revoked(self, jti: str) -> bool:
        """Whether ``jti`` was revoked."""

    @abc.abstractmethod
    async def prune_oauth(self, now: float) -> int:
        """Forget what has expired before ``now``: revoked ``jti``\\s, refresh tokens, and
        retired keys past ``verify_until``. How many rows went."""
