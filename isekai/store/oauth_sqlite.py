"""The OAuth2 authorization server's tables in the SQLite store (`SQLiteOAuth`, a mixin of
``SQLiteStore``). Every method that reads and then writes does it in one ``BEGIN IMMEDIATE``
transaction, which takes the database's write lock first: atomic across processes."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
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

__all__ = ["SQLiteOAuth"]


def _marks(columns: str) -> str:
    return ", ".join("?" * len(columns.split(",")))


class SQLiteOAuth(OAuthStore):
    """`OAuthStore` on the SQLite store's connection (its ``_run``/``_write``/``_connection``)."""

    _run: Callable[..., Any]
    _write: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _connection: Callable[[], sqlite3.Connection]

    # -- clients ------------------------------------------------------------------------------

    async def create_oauth_client(self, client: OAuthClient) -> None:
        def run() -> None:
            with self._write() as conn:
                try:
                    conn.execute(
                        f"INSERT INTO oauth_clients ({CLIENT_COLUMNS}) "
                        f"VALUES ({_marks(CLIENT_COLUMNS)})",
                        client_values(client),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists("OAuth client", client.client_id) from None

        await self._run(run)

    async def get_oauth_client(self, client_id: str) -> OAuthClient | None:
        def run() -> OAuthClient | None:
            row = (
                self._connection()
                .execute(
                    f"SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = ?", (client_id,)
                )
                .fetchone()
            )
            return None if row is None else client_from_row(row)

        result: OAuthClient | None = await self._run(run)
        return result

    async def list_oauth_clients(self) -> list[OAuthClient]:
        def run() -> list[OAuthClient]:
            rows = self._connection().execute(
                f"SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at, client_id"
            )
            return [client_from_row(row) for row in rows]

        result: list[OAuthClient] = await self._run(run)
        return result

    @staticmethod
    def _client_version(conn: sqlite3.Connection, client_id: str, if_version: int | None) -> int:
        row = conn.execute(
            "SELECT version FROM oauth_clients WHERE client_id = ?", (client_id,)
        ).fetchone()
        if row is None:
            raise NotFound("OAuth client", client_id)
        if if_version is not None and row[0] != if_version:
            raise VersionMismatch("OAuth client", client_id, row[0], if_version)
        return int(row[0])

    async def delete_oauth_client(self, client_id: str, if_version: int | None = None) -> None:
        check_version(if_version)

        def run() -> None:
            with self._write() as conn:
                self._client_version(conn, client_id, if_version)
                conn.execute("DELETE FROM oauth_refresh_tokens WHERE client_id = ?", (client_id,))
                conn.execute("DELETE FROM oauth_clients WHERE client_id = ?", (client_id,))

        await self._run(run)

    async def set_oauth_client_secret(
        self, client_id: str, secret_hash: str, if_version: int | None = None
    ) -> OAuthClient:
        check_version(if_version)

        def run() -> OAuthClient:
            with self._write() as conn:
                version = self._client_version(conn, client_id, if_version)
                conn.execute(
                    "UPDATE oauth_clients SET secret_hash = ?, version = ?, updated_at = ? "
                    "WHERE client_id = ?",
                    (secret_hash, version + 1, time.time(), client_id),
                )
                row = conn.execute(
                    f"SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = ?", (client_id,)
                ).fetchone()
            return client_from_row(row)

        result: OAuthClient = await self._run(run)
        return result

    # -- signing keys -------------------------------------------------------------------------

    @staticmethod
    def _current_key(conn: sqlite3.Connection, algorithm: str) -> SigningKey | None:
        row = conn.execute(
            f"SELECT {KEY_COLUMNS} FROM oauth_signing_keys WHERE algorithm = ? "
            "AND retired_at IS NULL ORDER BY created_at DESC, kid LIMIT 1",
            (algorithm,),
        ).fetchone()
        return None if row is None else key_from_row(row)

    @staticmethod
    def _insert_key(conn: sqlite3.Connection, key: SigningKey) -> None:
        conn.execute(
            f"INSERT INTO oauth_signing_keys ({KEY_COLUMNS}) VALUES ({_marks(KEY_COLUMNS)})",
            key_values(key),
        )

    async def ensure_signing_key(self, candidate: SigningKey) -> SigningKey:
        def run() -> SigningKey:
            with self._write() as conn:
                current = self._current_key(conn, candidate.algorithm)
                if current is not None:
                    return current
                self._insert_key(conn, candidate)
                return candidate

        result: SigningKey = await self._run(run)
        return result

    async def rotate_signing_key(self, candidate: SigningKey, verify_until: float) -> SigningKey:
        def run() -> SigningKey:
            with self._write() as conn:
                conn.execute(
                    "UPDATE oauth_signing_keys SET retired_at = ?, verify_until = ? "
                    "WHERE algorithm = ? AND retired_at IS NULL",
                    (candidate.created_at, verify_until, candidate.algorithm),
                )
                self._insert_key(conn, candidate)
            return candidate

        result: SigningKey = await self._run(run)
        return result

    async def list_signing_keys(self) -> list[SigningKey]:
        def run() -> list[SigningKey]:
            rows = self._connection().execute(
                f"SELECT {KEY_COLUMNS} FROM oauth_signing_keys ORDER BY created_at DESC, kid"
            )
            return [key_from_row(row) for row in rows]

        result: list[SigningKey] = await self._run(run)
        return result

    # -- refresh tokens -----------------------------------------------------------------------

    @staticmethod
    def _insert_refresh(conn: sqlite3.Connection, token: RefreshToken) -> None:
        conn.execute(
            f"INSERT INTO oauth_refresh_tokens ({REFRESH_COLUMNS}) "
            f"VALUES ({_marks(REFRESH_COLUMNS)})",
            refresh_values(token),
        )

    async def add_refresh_token(self, token: RefreshToken) -> None:
        def run() -> None:
            with self._write() as conn:
                self._insert_refresh(conn, token)

        await self._run(run)

    async def get_refresh_token(self, token_hash: str) -> RefreshToken | None:
        def run() -> RefreshToken | None:
            row = (
                self._connection()
                .execute(
                    f"SELECT {REFRESH_COLUMNS} FROM oauth_refresh_tokens WHERE token_hash = ?",
                    (token_hash,),
                )
                .fetchone()
            )
            return None if row is None else refresh_from_row(row)

        result: RefreshToken | None = await self._run(run)
        return result

    async def consume_refresh_token(
        self, token_hash: str, client_id: str, replacement: RefreshToken, now: float
    ) -> RefreshOutcome:
        def run() -> RefreshOutcome:
            with self._write() as conn:  # BEGIN IMMEDIATE: one consumer at a time
                row = conn.execute(
                    f"SELECT {REFRESH_COLUMNS} FROM oauth_refresh_tokens WHERE token_hash = ?",
                    (token_hash,),
                ).fetchone()
                if row is None:
                    return RefreshOutcome("unknown")
                token = refresh_from_row(row)
                why = refused(token, client_id, now)
                if why == "reused":
                    self._revoke_family(conn, token.family, now)
                if why is not None:
                    return RefreshOutcome(why, token if why != "unknown" else None)
                conn.execute(
                    "UPDATE oauth_refresh_tokens SET consumed_at = ? WHERE token_hash = ?",
                    (now, token_hash),
                )
                self._insert_refresh(
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

        result: RefreshOutcome = await self._run(run)
        return result

    @staticmethod
    def _revoke_family(conn: sqlite3.Connection, family: str, now: float) -> int:
        return conn.execute(
            "UPDATE oauth_refresh_tokens SET revoked_at = ? WHERE family = ? "
            "AND revoked_at IS NULL",
            (now, family),
        ).rowcount

    async def revoke_refresh_family(self, family: str, now: float) -> int:
        def run() -> int:
            with self._write() as conn:
                return self._revoke_family(conn, family, now)

        result: int = await self._run(run)
        return result

    # -- revoked access tokens ----------------------------------------------------------------

    async def revoke_access_token(self, jti: str, expires_at: float) -> None:
        def run() -> None:
            with self._write() as conn:
                conn.execute(
                    "INSERT INTO oauth_revoked_tokens (jti, expires_at) VALUES (?, ?) "
                    "ON CONFLICT (jti) DO NOTHING",
                    (jti, expires_at),
                )

        await self._run(run)

    async def is_access_token_revoked(self, jti: str) -> bool:
        def run() -> bool:
            row = (
                self._connection()
                .execute("SELECT 1 FROM oauth_revoked_tokens WHERE jti = ?", (jti,))
                .fetchone()
            )
            return row is not None

        result: bool = await self._run(run)
        return result

    async def prune_oauth(self, now: float) -> int:
        def run() -> int:
            with self._write() as conn:
                return sum(
                    conn.execute(sql, (now,)).rowcount
                    for sql in (
                        "DELETE FROM oauth_revoked_tokens WHERE expires_at < ?",
                        "DELETE FROM oauth_refresh_tokens WHERE expires_at < ?",
                        "DELETE FROM oauth_signing_keys WHERE verify_until < ?",
                    )
                )

        result: int = await self._run(run)
        return result
