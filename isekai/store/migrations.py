"""Versioned schema migrations for the store backends.

Each backend has an ordered list of ``(version, sql)``. Opening a store applies, in one
transaction, every migration whose version is not yet in the ``schema_migrations`` table, and
records it there; re-running applies nothing. Concurrent openers serialise on a lock (SQLite:
``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory lock), so several gateway
processes can start against one database at once.

Migrations are append-only: never edit a released one, add the next version instead. A
database whose schema is newer than this code knows is used as is (with a warning), so a
rolling upgrade can run old and new gateways side by side as long as migrations only add.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

__all__ = [
    "POSTGRES_MIGRATIONS",
    "SQLITE_MIGRATIONS",
    "apply_postgres",
    "apply_sqlite",
    "latest_version",
]

logger = logging.getLogger("isekai.store")

Migration = tuple[int, str]

SQLITE_MIGRATIONS: list[Migration] = [
    (
        1,  # routes and upstreams, the change counter, admin accounts
        """
        CREATE TABLE items (
            kind TEXT NOT NULL CHECK (kind IN ('route', 'upstream')),
            name TEXT NOT NULL,
            doc TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, name)
        );
        CREATE TABLE store_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            revision INTEGER NOT NULL
        );
        INSERT INTO store_state (id, revision) VALUES (1, 0);
        CREATE TABLE users (
            username TEXT PRIMARY KEY,
            password_hash TEXT NOT NULL,
            role TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
    (
        2,  # request logs
        """
        CREATE TABLE request_logs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            route TEXT,
            method TEXT,
            path TEXT,
            status INTEGER,
            upstream TEXT,
            latency_ms REAL,
            bytes_in INTEGER,
            bytes_out INTEGER,
            client_ip TEXT,
            user_agent TEXT,
            request_id TEXT
        );
        CREATE INDEX request_logs_ts ON request_logs (ts);
        CREATE INDEX request_logs_route_ts ON request_logs (route, ts);
        CREATE INDEX request_logs_status_ts ON request_logs (status, ts);
        """,
    ),
    (
        3,  # policies: a third kind of item (SQLite cannot change a CHECK: copy the table)
        """
        CREATE TABLE items_v3 (
            kind TEXT NOT NULL CHECK (kind IN ('route', 'upstream', 'policy')),
            name TEXT NOT NULL,
            doc TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, name)
        );
        INSERT INTO items_v3 (kind, name, doc, version, created_at, updated_at)
            SELECT kind, name, doc, version, created_at, updated_at FROM items;
        DROP TABLE items;
        ALTER TABLE items_v3 RENAME TO items;
        """,
    ),
    (
        4,  # consumers: a fourth kind of item; the consumer a logged request resolved to
        """
        CREATE TABLE items_v4 (
            kind TEXT NOT NULL CHECK (kind IN ('route', 'upstream', 'policy', 'consumer')),
            name TEXT NOT NULL,
            doc TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, name)
        );
        INSERT INTO items_v4 (kind, name, doc, version, created_at, updated_at)
            SELECT kind, name, doc, version, created_at, updated_at FROM items;
        DROP TABLE items;
        ALTER TABLE items_v4 RENAME TO items;
        ALTER TABLE request_logs ADD COLUMN consumer TEXT;
        CREATE INDEX request_logs_consumer_ts ON request_logs (consumer, ts);
        """,
    ),
    (
        6,  # the OAuth2 authorization server: clients, signing keys, refresh tokens, revocations
        """
        CREATE TABLE oauth_clients (
            client_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            secret_hash TEXT NOT NULL,
            scopes TEXT NOT NULL,
            grant_types TEXT NOT NULL,
            consumer TEXT,
            access_token_ttl REAL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE oauth_signing_keys (
            kid TEXT PRIMARY KEY,
            algorithm TEXT NOT NULL,
            private_key TEXT NOT NULL,
            public_jwk TEXT NOT NULL,
            created_at REAL NOT NULL,
            retired_at REAL,
            verify_until REAL
        );
        CREATE TABLE oauth_refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            family TEXT NOT NULL,
            client_id TEXT NOT NULL,
            scope TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            consumed_at REAL,
            revoked_at REAL
        );
        CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family);
        CREATE INDEX oauth_refresh_tokens_client ON oauth_refresh_tokens (client_id);
        CREATE INDEX oauth_refresh_tokens_expires ON oauth_refresh_tokens (expires_at);
        CREATE TABLE oauth_revoked_tokens (
            jti TEXT PRIMARY KEY,
            expires_at REAL NOT NULL
        );
        CREATE INDEX oauth_revoked_tokens_expires ON oauth_revoked_tokens (expires_at);
        """,
    ),
]

POSTGRES_MIGRATIONS: list[Migration] = [
    (
        1,  # routes and upstreams, the change counter, admin accounts
        """
        CREATE TABLE items (
            kind text NOT NULL CHECK (kind IN ('route', 'upstream')),
            name text NOT NULL,
            doc jsonb NOT NULL,
            version integer NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            PRIMARY KEY (kind, name)
        );
        CREATE TABLE store_state (
            id smallint PRIMARY KEY CHECK (id = 1),
            revision bigint NOT NULL
        );
        INSERT INTO store_state (id, revision) VALUES (1, 0);
        CREATE TABLE users (
            username text PRIMARY KEY,
            password_hash text NOT NULL,
            role text NOT NULL,
            created_at double precision NOT NULL
        );
        """,
    ),
    (
        2,  # request logs
        """
        CREATE TABLE request_logs (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            ts double precision NOT NULL,
            route text,
            method text,
            path text,
            status integer,
            upstream text,
            latency_ms double precision,
            bytes_in bigint,
            bytes_out bigint,
            client_ip text,
            user_agent text,
            request_id text
        );
        CREATE INDEX request_logs_ts ON request_logs (ts);
        CREATE INDEX request_logs_route_ts ON request_logs (route, ts);
        CREATE INDEX request_logs_status_ts ON request_logs (status, ts);
        """,
    ),
    (
        3,  # policies: a third kind of item
        """
        ALTER TABLE items DROP CONSTRAINT IF EXISTS items_kind_check;
        ALTER TABLE items ADD CONSTRAINT items_kind_check
            CHECK (kind IN ('route', 'upstream', 'policy'));
        """,
    ),
    (
        4,  # consumers: a fourth kind of item; the consumer a logged request resolved to
        """
        ALTER TABLE items DROP CONSTRAINT IF EXISTS items_kind_check;
        ALTER TABLE items ADD CONSTRAINT items_kind_check
            CHECK (kind IN ('route', 'upstream', 'policy', 'consumer'));
        ALTER TABLE request_logs ADD COLUMN consumer text;
        CREATE INDEX request_logs_consumer_ts ON request_logs (consumer, ts);
        """,
    ),
    (
        6,  # the OAuth2 authorization server: clients, signing keys, refresh tokens, revocations
        """
        CREATE TABLE oauth_clients (
            client_id text PRIMARY KEY,
            name text NOT NULL,
            secret_hash text NOT NULL,
            scopes text NOT NULL,
            grant_types text NOT NULL,
            consumer text,
            access_token_ttl double precision,
            version integer NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL
        );
        CREATE TABLE oauth_signing_keys (
            kid text PRIMARY KEY,
            algorithm text NOT NULL,
            private_key text NOT NULL,
            public_jwk text NOT NULL,
            created_at double precision NOT NULL,
            retired_at double precision,
            verify_until double precision
        );
        CREATE TABLE oauth_refresh_tokens (
            token_hash text PRIMARY KEY,
            family text NOT NULL,
            client_id text NOT NULL,
            scope text NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            consumed_at double precision,
            revoked_at double precision
        );
        CREATE INDEX oauth_refresh_tokens_family ON oauth_refresh_tokens (family);
        CREATE INDEX oauth_refresh_tokens_client ON oauth_refresh_tokens (client_id);
        CREATE INDEX oauth_refresh_tokens_expires ON oauth_refresh_tokens (expires_at);
        CREATE TABLE oauth_revoked_tokens (
            jti text PRIMARY KEY,
            expires_at double precision NOT NULL
        );
        CREATE INDEX oauth_revoked_tokens_expires ON oauth_revoked_tokens (expires_at);
        """,
    ),
]

_SQLITE_BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
)
_POSTGRES_BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version integer PRIMARY KEY, applied_at double precision NOT NULL)"
)


def latest_version(migrations: list[Migration]) -> int:
    return migrations[-1][0] if migrations else 0


def _pending(migrations: list[Migration], done: set[int], target: int | None) -> list[Migration]:
    versions = [version for version, _ in migrations]
    if versions != sorted(set(versions)):
        raise RuntimeError("migration versions must be unique and increasing")
    newest = max(done, default=0)
    if newest > latest_version(migrations):
        logger.warning(
            "store schema is at version %d, newer than this Isekai knows (%d); using it as is",
            newest,
            latest_version(migrations),
        )
    return [
        (version, sql)
        for version, sql in migrations
        if version not in done and (target is None or version <= target)
    ]


def split_statements(sql: str) -> list[str]:
    """SQLite statements of a script, one by one (``executescript`` would commit midway)."""
    statements: list[str] = []
    current = ""
    *pieces, tail = sql.split(";")
    for piece in pieces:
        current += piece + ";"
        if sqlite3.complete_statement(current):  # not a ';' inside a literal or trigger
            statements.append(current.strip())
            current = ""
    if (current + tail).strip():
        raise ValueError(f"incomplete SQL statement: {(current + tail).strip()[:60]!r}")
    return statements


def apply_sqlite(
    conn: sqlite3.Connection,
    migrations: list[Migration] | None = None,
    *,
    target: int | None = None,
) -> list[int]:
    """Apply pending migrations (up to ``target``) on an autocommit connection.

    Returns the versions applied, oldest first; ``[]`` when the schema was up to date.
    """
    migrations = SQLITE_MIGRATIONS if migrations is None else migrations
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SQLITE_BOOTSTRAP)
        done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        pending = _pending(migrations, done, target)
        for version, sql in pending:
            for statement in split_statements(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    applied = [version for version, _ in pending]
    if applied:
        logger.info("store schema migrated to version %d (applied %s)", applied[-1], applied)
    return applied


async def apply_postgres(
    conn: Any,
    migrations: list[Migration] | None = None,
    *,
    target: int | None = None,
    schema: str | None = None,
) -> list[int]:
    """Apply pending migrations on an asyncpg connection whose search_path is set.

    ``schema``, if given, is created first. Returns the versions applied, oldest first.
    """
    migrations = POSTGRES_MIGRATIONS if migrations is None else migrations
    async with conn.transaction():
        lock = "isekai.store.migrations:" + (schema or "")
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", lock)
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(_POSTGRES_BOOTSTRAP)
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        pending = _pending(migrations, done, target)
        for version, sql in pending:
            await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                version,
                time.time(),
            )
    applied = [version for version, _ in pending]
    if applied:
        logger.info("store schema migrated to version %d (applied %s)", applied[-1], applied)
    return applied
