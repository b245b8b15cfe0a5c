"""The OAuth2 authorization server's tables in the PostgreSQL store (`PostgresOAuth`, a mixin
of ``PostgresStore``). A refresh token is consumed by one conditional ``UPDATE ... WHERE
consumed_at IS NULL ... RETURNING``: of two concurrent consumers one updates the row, the other
waits for its row lock and then finds it consumed. The first signing key is made under a
transaction-scoped advisory lock, so gateways starting together store one key."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from isekai.store.base import AlreadyExists, NotFound, VersionMismatch, check_version
from isekai.store.oauth import (
    CLIENT_COLUMNS,
    KEY_COLUMNS,
    REFRESH_COLUMNS,
    OAuthClient,
    OAuthStore,
    RefreshOutcome,
    RefreshToken,
    SigningKey,
    client_from_row,
    client_values,
    key_from_row,
    key_values,
    refresh_from_row,
    refresh_values,
    refused,
)

__all__ = ["PostgresOAuth"]

_KEY_LOCK = "isekai.store.oauth_signing_keys"


def _marks(columns: str) -> str:
    return ", ".join(f"${i}" for i in range(1, len(columns.split(",")) + 1))


class PostgresOAuth(OAuthStore):
    """`OAuthStore` on the PostgreSQL store's pool (its ``_connection``)."""

    _connection: Callable[..., AbstractAsyncContextManager[Any]]

    # -- clients ------------------------------------------------------------------------------

    async def create_oauth_client(self, client: OAuthClient) -> None:
        async with self._connection(transaction=True) as conn:
            created = await conn.fetchval(
                f"INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ({_marks(CLIENT_COLUMNS)}) "
                "ON CONFLICT DO NOTHING RETURNING 1",
                *client_values(client),
            )
        if created is None:
            raise AlreadyExists("OAuth client", client.client_id)

    async def get_oauth_client(self, client_id: str) -> OAuthClient | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1", client_id
            )
        return None if row is None else client_from_row(row)

    async def list_oauth_clients(self) -> list[OAuthClient]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {CLIENT_COLUMNS} FROM oauth_clients "
                'ORDER BY created_at, client_id COLLATE "C"'
            )
        return [client_from_row(row) for row in rows]

    @staticmethod
    async def _client_version(conn: Any, client_id: str, if_version: int | None) -> int:
        version = await conn.fetchval(
            "SELECT version FROM oauth_clients WHERE client_id = $1 FOR UPDATE", client_id
        )
        if version is None:
            raise NotFound("OAuth client", client_id)
        if if_version is not None and version != if_version:
            raise VersionMismatch("OAuth client", client_id, version, if_version)
        return int(version)

    async def delete_oauth_client(self, client_id: str, if_version: int | None = None) -> None:
        check_version(if_version)
        async with self._connection(transaction=True) as conn:
            await self._client_version(conn, client_id, if_version)
            await conn.execute("DELETE FROM oauth_refresh_tokens WHERE client_id = $1", client_id)
            await conn.execute("DELETE FROM oauth_clients WHERE client_id = $1", client_id)

    async def set_oauth_client_secret(
        self, client_id: str, secret_hash: str, if_version: int | None = None
    ) -> OAuthClient:
        check_version(if_version)
        async with self._connection(transaction=True) as conn:
            version = await self._client_version(conn, client_id, if_version)
            row = await conn.fetchrow(
                "UPDATE oauth_clients SET secret_hash = $1, version = $2, updated_at = $3 "
                f"WHERE client_id = $4 RETURNING {CLIENT_COLUMNS}",
                secret_hash,
                version + 1,
                time.time(),
                client_id,
            )
        return client_from_row(row)

    # -- signing keys -------------------------------------------------------------------------

    @staticmethod
    async def _insert_key(conn: Any, key: SigningKey) -> None:
        await conn.execute(
            f"INSERT INTO oauth_signing_keys ({KEY_COLUMNS}) VALUES ({_marks(KEY_COLUMNS)})",
            *key_values(key),
        )

    async def ensure_signing_key(self, candidate: SigningKey) -> SigningKey:
        async with self._connection(transaction=True) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _KEY_LOCK)
            row = await conn.fetchrow(
                f"SELECT {KEY_COLUMNS} FROM oauth_signing_keys WHERE algorithm = $1 "
                'AND retired_at IS NULL ORDER BY created_at DESC, kid COLLATE "C" LIMIT 1',
                candidate.algorithm,
            )
            if row is not None:
                return key_from_row(row)
            await self._insert_key(conn, candidate)
        return candidate

    async def rotate_signing_key(self, candidate: SigningKey, verify_until: float) -> SigningKey:
        async with self._connection(transaction=True) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _KEY_LOCK)
            await conn.execute(
                "UPDATE oauth_signing_keys SET retired_at = $1, verify_until = $2 "
                "WHERE algorithm = $3 AND retired_at IS NULL",
                candidate.created_at,
                verify_until,
                candidate.algorithm,
            )
            await self._insert_key(conn, candidate)
        return candidate

    async def list_signing_keys(self) -> list[SigningKey]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {KEY_COLUMNS} FROM oauth_signing_keys "
                'ORDER BY created_at DESC, kid COLLATE "C"'
            )
        return [key_from_row(row) for row in rows]

    # -- refresh tokens -----------------------------------------------------------------------

    @staticmethod
    async def _insert_refresh(conn: Any, token: RefreshToken) -> None:
        await conn.execute(
            f"INSERT INTO oauth_refresh_tokens ({REFRESH_COLUMNS}) "
            f"VALUES ({_marks(REFRESH_COLUMNS)})",
            *refresh_values(token),
        )

    async def add_refresh_token(self, token: RefreshToken) -> None:
        async with self._connection(transaction=True) as conn:
            await self._insert_refresh(conn, token)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {REFRESH_COLUMNS} FROM oauth_refresh_tokens WHERE token_hash = $1",
                token_hash,
            )
        return None if row is None else refresh_from_row(row)

    async def consume_refresh_token(
        self, token_hash: str, client_id: str, replacement: RefreshToken, now: float
    ) -> RefreshOutcome:
        async with self._connection(transaction=True) as conn:
            row = await conn.fetchrow(
                "UPDATE oauth_refresh_tokens SET consumed_at = $1 WHERE token_hash = $2 "
                "AND client_id = $3 AND consumed_at IS NULL AND revoked_at IS NULL "
                f"AND expires_at > $1 RETURNING {REFRESH_COLUMNS}",
                now,
                token_hash,
                client_id,
            )
            if row is not None:
                token = refresh_from_row(row)
                await self._insert_refresh(
                    conn,
                    RefreshToken(
                        replacement.token_hash,
                        token.family,
                        token.client_id,
                        token.scope,
                        replacement.created_at,
                        replacement.expires_at,
                    ),
                )
                return RefreshOutcome("ok", token)
            row = await conn.fetchrow(
                f"SELECT {REFRESH_COLUMNS} FROM oauth_refresh_tokens WHERE token_hash = $1",
                token_hash,
            )
            if row is None:
                return RefreshOutcome("unknown")
            token = refresh_from_row(row)
            why = refused(token, client_id, now) or "reused"  # consumed since the UPDATE
            if why == "reused":
                await self._revoke_family(conn, token.family, now)
            return RefreshOutcome(why, token if why != "unknown" else None)

    @staticmethod
    async def _revoke_family(conn: Any, family: str, now: float) -> int:
        result = await conn.execute(
            "UPDATE oauth_refresh_tokens SET revoked_at = $1 WHERE family = $2 "
            "AND revoked_at IS NULL",
            now,
            family,
        )
        return int(result.split()[-1])

    async def revoke_refresh_family(self, family: str, now: float) -> int:
        async with self._connection(transaction=True) as conn:
            return await self._revoke_family(conn, family, now)

    # -- revoked access tokens ----------------------------------------------------------------

    async def revoke_access_token(self, jti: str, expires_at: float) -> None:
        async with self._connection(transaction=True) as conn:
            await conn.execute(
                "INSERT INTO oauth_revoked_tokens (jti, expires_at) VALUES ($1, $2) "
                "ON CONFLICT (jti) DO NOTHING",
                jti,
                expires_at,
            )

    async def is_access_token_revoked(self, jti: str) -> bool:
        async with self._connection() as conn:
            found = await conn.fetchval("SELECT 1 FROM oauth_revoked_tokens WHERE jti = $1", jti)
        return found is not None

    async def prune_oauth(self, now: float) -> int:
        total = 0
        async with self._connection(transaction=True) as conn:
            for sql in (
                "DELETE FROM oauth_revoked_tokens WHERE expires_at < $1",
                "DELETE FROM oauth_refresh_tokens WHERE expires_at < $1",
                "DELETE FROM oauth_signing_keys WHERE verify_until < $1",
            ):
                total += int((await conn.execute(sql, now)).split()[-1])
        return total
