"""The clustered store: PostgreSQL through an asyncpg pool, changes announced by NOTIFY.

Strategy: every change is one transaction that updates the item (row-locked with ``FOR
UPDATE`` when ``if_version`` must be checked), bumps the single-row ``store_state.revision``
and calls ``pg_notify(channel, revision)``. PostgreSQL delivers the notification only if and
when the transaction commits, so a listener never hears of a change it cannot read yet. Each
``PostgresStore`` keeps one dedicated connection that LISTENs on the channel (one channel per
schema); a supervisor task checks it every few seconds and reconnects with backoff when it is
lost. While it is down ``wait_for_change`` falls back to polling, and after a reconnect every
waiter re-reads the revision, since notifications sent meanwhile are gone.

asyncpg is imported on ``open()``, so the package imports without the ``postgres`` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from isekai.store import migrations
from isekai.store.base import (
    AUDIT_COLUMNS,
    EXCLUSIVE_POLL,
    EXCLUSIVE_TIMEOUT,
    LOG_KEYS,
    AlreadyExists,
    AuditQuery,
    AuditRecord,
    LastAdmin,
    NotFound,
    RequestLogQuery,
    Store,
    StoredItem,
    StoreError,
    VersionMismatch,
    audit_from_row,
    check_kind,
    check_user,
    check_version,
    encode_doc,
    normalize_log_row,
)
from isekai.store.log_sinks import PostgresLogSink
from isekai.store.oauth_postgres import PostgresOAuth
from isekai.store.urls import redact_url

__all__ = ["PostgresStore"]

logger = logging.getLogger("isekai.store")

_ITEM_COLUMNS = "kind, name, doc::text, version, created_at, updated_at"
_LOG_COLUMNS = ", ".join(LOG_KEYS)
_INSERT_AUDIT = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) VALUES "
    "($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)"
)
_AUDIT_SELECT = (
    "id, ts, actor, action, kind, name, before::text, after::text, client_ip, request_id"
)


def _item(row: Any) -> StoredItem:
    kind, name, doc, version, created_at, updated_at = row
    return StoredItem(kind, name, json.loads(doc), version, created_at, updated_at)


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:
        raise StoreError(
            "a postgresql:// store needs asyncpg: pip install 'isekai[postgres]'"
        ) from None
    return asyncpg


class PostgresStore(PostgresOAuth, Store):
    """A store in a PostgreSQL database; ``schema``, if given, holds its tables (created if
    missing). Several gateways on one database see each other's changes via LISTEN/NOTIFY.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 10.0,
        poll_interval: float = 0.5,
        check_interval: float = 5.0,
        reconnect_delay: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.url = redact_url(dsn) + (f" (schema {schema})" if schema else "")
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.poll_interval = poll_interval  # wait_for_change while the listener is down
        self.check_interval = check_interval  # listener health checks
        self.reconnect_delay = reconnect_delay
        self.channel = ""
        # one writer lock per database and schema (advisory locks are per database)
        self._lock_key = zlib.crc32(f"isekai.store:{schema or ''}".encode())
        self._asyncpg: Any = None
        self._errors: tuple[type[BaseException], ...] = ()
        self._pool: Any = None
        self._listener: Any = None
        self._lost: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<PostgresStore {self.url}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": "isekai"}
        if self.schema is not None:
            settings["search_path"] = self.schema  # validated: lower-case identifier
        return settings

    @contextlib.asynccontextmanager
    async def _connection(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"the store {self.url} is not open")
        try:
            async with pool.acquire(timeout=self.connect_timeout) as conn:
                if transaction:
                    async with conn.transaction():
                        yield conn
                else:
                    yield conn
        except self._errors as exc:
            raise StoreError(f"PostgreSQL store {self.url}: {exc}") from exc

    @contextlib.asynccontextmanager
    async def exclusive(self, timeout: float = EXCLUSIVE_TIMEOUT) -> AsyncIterator[None]:
        # a session-level advisory lock, held on one pooled connection; the server releases
        # it if that connection dies
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self._connection() as conn:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key):
                if loop.time() >= deadline:
                    raise StoreError(
                        f"PostgreSQL store {self.url}: another writer held it for {timeout:g}s"
                    )
                await asyncio.sleep(EXCLUSIVE_POLL)
            try:
                yield
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", self._lock_key)

    async def _bump(self, conn: Any) -> int:
        revision = await conn.fetchval(
            "UPDATE store_state SET revision = revision + 1 WHERE id = 1 RETURNING revision"
        )
        # delivered to listeners (this instance included) when the transaction commits
        await conn.execute("SELECT pg_notify($1, $2)", self.channel, str(revision))
        return revision

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        asyncpg = self._asyncpg = _import_asyncpg()
        self._errors = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
        try:
            pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.min_size,
                max_size=self.max_size,
                timeout=self.connect_timeout,
                server_settings=self._server_settings(),
            )
        except self._errors as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.url}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await migrations.apply_postgres(conn, schema=self.schema)
                schema = await conn.fetchval("SELECT current_schema()")
            self.channel = f"isekai_store_{schema}"[:63]
            self._changed = asyncio.Event()
            self._lost = asyncio.Event()
            await self._listen()
        except BaseException as exc:
            await self._close_listener()
            pool.terminate()
            if isinstance(exc, self._errors):
                raise StoreError(f"cannot open the store at {self.url}: {exc}") from exc
            raise
        self._pool = pool
        self._supervisor = asyncio.create_task(
            self._supervise(), name=f"isekai-store-listener-{self.channel}"
        )

    async def _listen(self) -> None:
        conn = await self._asyncpg.connect(
            self.dsn, timeout=self.connect_timeout, server_settings=self._server_settings()
        )
        try:
            conn.add_termination_listener(self._on_listener_lost)
            await conn.add_listener(self.channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn
        self._wake()  # changes made while nobody listened are only seen by re-reading

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wake()

    def _on_listener_lost(self, conn: Any) -> None:
        if self._lost is not None and conn is self._listener:
            self._lost.set()

    def _listening(self) -> bool:
        return self._listener is not None and not self._listener.is_closed()

    async def _supervise(self) -> None:
        lost = self._lost
        assert lost is not None
        low, high = self.reconnect_delay
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self.check_interval)
            if not lost.is_set() and await self._listener_alive():
                continue
            lost.clear()
            await self._close_listener()
            delay, failures, last_logged = low, 0, 0.0
            while True:
                try:
                    await self._listen()
                except Exception as exc:  # keep trying whatever the driver raises
                    failures += 1
                    now = time.monotonic()
                    if now - last_logged >= 30.0:
                        last_logged = now
                        logger.warning(
                            "store %s: change listener lost, reconnecting (%d failures): %s",
                            self.url,
                            failures,
                            exc,
                        )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, high)
                    continue
                if failures:
                    logger.info("store %s: change listener reconnected", self.url)
                break

    async def _listener_alive(self) -> bool:
        if not self._listening():
            return False
        try:
            await self._listener.fetchval("SELECT 1", timeout=self.check_interval)
        except self._errors:
            return False
        return True

    async def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), 2.0)
        except Exception:  # timed out or already broken: just drop it
            conn.terminate()
        except BaseException:
            conn.terminate()
            raise

    async def close(self) -> None:
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._close_listener()
        try:
            await asyncio.wait_for(pool.close(), 10.0)
        except Exception:  # timed out or the server is gone: close without the goodbyes
            pool.terminate()
        self._wake()

    # -- routes and upstreams ---------------------------------------------------------------

    async def list_items(self, kind: str) -> list[StoredItem]:
        check_kind(kind)
        async with self._connection() as conn:
            rows = await conn.fetch(
                f'SELECT {_ITEM_COLUMNS} FROM items WHERE kind = $1 ORDER BY name COLLATE "C"',
                kind,
            )
        return [_item(row) for row in rows]

    async def list_versions(self, kind: str) -> dict[str, int]:
        check_kind(kind)
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT name, version FROM items WHERE kind = $1", kind)
        return {row[0]: row[1] for row in rows}

    async def get_item(self, kind: str, name: str) -> StoredItem | None:
        check_kind(kind)
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE kind = $1 AND name = $2", kind, name
            )
        return None if row is None else _item(row)

    async def create_item(self, kind: str, name: str, doc: Mapping[str, Any]) -> StoredItem:
        text = encode_doc(kind, name, doc)
        now = time.time()
        async with self._connection(transaction=True) as conn:
            created = await conn.fetchval(
                "INSERT INTO items (kind, name, doc, version, created_at, updated_at) "
                "VALUES ($1, $2, $3::jsonb, 1, $4, $4) ON CONFLICT DO NOTHING RETURNING 1",
                kind,
                name,
                text,
                now,
            )
            if created is None:
                raise AlreadyExists(kind, name)
            await self._bump(conn)
        return StoredItem(kind, name, json.loads(text), 1, now, now)

    async def replace_item(
        self, kind: str, name: str, doc: Mapping[str, Any], if_version: int | None = None
    ) -> StoredItem:
        text = encode_doc(kind, name, doc)
        check_version(if_version)
        async with self._connection(transaction=True) as conn:
            version, created_at = await self._current(conn, kind, name, if_version)
            now = time.time()
            await conn.execute(
                "UPDATE items SET doc = $3::jsonb, version = $4, updated_at = $5 "
                "WHERE kind = $1 AND name = $2",
                kind,
                name,
                text,
                version + 1,
                now,
            )
            await self._bump(conn)
        return StoredItem(kind, name, json.loads(text), version + 1, created_at, now)

    async def delete_item(self, kind: str, name: str, if_version: int | None = None) -> None:
        check_kind(kind)
        check_version(if_version)
        async with self._connection(transaction=True) as conn:
            await self._current(conn, kind, name, if_version)
            await conn.execute("DELETE FROM items WHERE kind = $1 AND name = $2", kind, name)
            await self._bump(conn)

    @staticmethod
    async def _current(
        conn: Any, kind: str, name: str, if_version: int | None
    ) -> tuple[int, float]:
        row = await conn.fetchrow(
            "SELECT version, created_at FROM items WHERE kind = $1 AND name = $2 FOR UPDATE",
            kind,
            name,
        )
        if row is None:
            raise NotFound(kind, name)
        if if_version is not None and row[0] != if_version:
            raise VersionMismatch(kind, name, row[0], if_version)
        return row[0], row[1]

    async def revision(self) -> int:
        async with self._connection() as conn:
            return await conn.fetchval("SELECT revision FROM store_state WHERE id = 1")

    async def wait_for_change(self, since: int, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            changed = self._changed  # taken before reading, so no notification is missed
            current = await self.revision()
            remaining = deadline - loop.time()
            if current > since or remaining <= 0 or changed is None:
                return current
            if not self._listening():
                remaining = min(remaining, self.poll_interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    # -- users ------------------------------------------------------------------------------

    # usernames are ASCII (check_user) and compared case-insensitively; writers of users
    # serialise on a transaction-level advisory lock, so two spellings cannot both be created

    _FIND_USER = (
        "SELECT username, password_hash, role, created_at, token_version FROM users "
        "WHERE lower(username) = lower($1) ORDER BY created_at LIMIT 1"
    )

    async def get_user(self, username: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(self._FIND_USER, username)
        return None if row is None else dict(row)

    async def list_users(self) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT username, role, created_at, token_version FROM users "
                'ORDER BY lower(username) COLLATE "C"'
            )
        return [dict(row) for row in rows]

    async def _lock_users(self, conn: Any) -> None:
        # writers of users serialise on a transaction-level advisory lock: the last-admin
        # count and the change it guards are one step
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key + 1)

    @staticmethod
    async def _check_admins_left(conn: Any, username: str) -> None:
        admins = await conn.fetchval("SELECT count(*) FROM users WHERE role = 'admin'")
        if admins <= 1:
            raise LastAdmin(username)

    @staticmethod
    async def _audit(conn: Any, record: AuditRecord | None) -> None:
        if record is not None:
            await conn.execute(_INSERT_AUDIT, *record.encoded())

    async def create_user(
        self, username: str, password_hash: str, role: str, *, audit: AuditRecord | None = None
    ) -> None:
        check_user(username, password_hash, role)
        async with self._connection(transaction=True) as conn:
            await self._lock_users(conn)
            if await conn.fetchrow(self._FIND_USER, username) is not None:
                raise AlreadyExists("user", username)
            await conn.execute(
                "INSERT INTO users (username, password_hash, role, created_at) "
                "VALUES ($1, $2, $3, $4)",
                username,
                password_hash,
                role,
                time.time(),
            )
            await self._audit(conn, audit)

    async def set_user(
        self,
        username: str,
        password_hash: str | None,
        role: str | None,
        *,
        audit: AuditRecord | None = None,
    ) -> None:
        check_user(username, password_hash, role, keep=True)
        async with self._connection(transaction=True) as conn:
            await self._lock_users(conn)
            found = await conn.fetchrow(self._FIND_USER, username)
            if found is not None:  # keeps the stored spelling and created_at
                new_hash = found["password_hash"] if password_hash is None else password_hash
                new_role = found["role"] if role is None else role
                if found["role"] == "admin" and new_role != "admin":
                    await self._check_admins_left(conn, found["username"])
                bump = int(found["password_hash"] != new_hash or found["role"] != new_role)
                await conn.execute(
                    "UPDATE users SET password_hash = $1, role = $2, "
                    "token_version = token_version + $3 WHERE username = $4",
                    new_hash,
                    new_role,
                    bump,
                    found["username"],
                )
            else:
                check_user(username, password_hash, role)
                await conn.execute(
                    "INSERT INTO users (username, password_hash, role, created_at) "
                    "VALUES ($1, $2, $3, $4)",
                    username,
                    password_hash,
                    role,
                    time.time(),
                )
            await self._audit(conn, audit)

    async def delete_user(self, username: str, *, audit: AuditRecord | None = None) -> None:
        async with self._connection(transaction=True) as conn:
            await self._lock_users(conn)
            found = await conn.fetchrow(self._FIND_USER, username)
            if found is None:
                raise NotFound("user", username)
            if found["role"] == "admin":
                await self._check_admins_left(conn, found["username"])
            await conn.execute("DELETE FROM users WHERE username = $1", found["username"])
            await self._audit(conn, audit)

    async def bump_token_version(self, username: str, *, audit: AuditRecord | None = None) -> int:
        async with self._connection(transaction=True) as conn:
            version = await conn.fetchval(
                "UPDATE users SET token_version = token_version + 1 WHERE username = "
                "(SELECT username FROM users WHERE lower(username) = lower($1) "
                "ORDER BY created_at LIMIT 1) RETURNING token_version",
                username,
            )
            if version is None:
                raise NotFound("user", username)
            await self._audit(conn, audit)
        return version

    async def count_users(self) -> int:
        async with self._connection() as conn:
            return await conn.fetchval("SELECT count(*) FROM users")

    # -- admin audit log and login attempts -------------------------------------------------

    async def record_audit(self, record: AuditRecord) -> None:
        async with self._connection() as conn:
            await self._audit(conn, record)

    async def query_audit(self, q: AuditQuery) -> tuple[list[AuditRecord], int]:
        conditions = q.conditions()
        where = (
            " AND ".join(f"{condition} ${i}" for i, (condition, _) in enumerate(conditions, 1))
            or "true"
        )
        params = [value for _, value in conditions]
        n = len(params)
        async with self._connection(transaction=True) as conn:
            rows = await conn.fetch(
                f"SELECT {_AUDIT_SELECT} FROM audit_log WHERE {where} "
                f"ORDER BY ts DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
                *params,
                q.limit,
                q.offset,
            )
            total = await conn.fetchval(f"SELECT count(*) FROM audit_log WHERE {where}", *params)
        return [audit_from_row(row) for row in rows], total

    async def take_login_attempt(
        self, limits: list[tuple[str, int]], window: float
    ) -> float | None:
        now = time.time()
        async with self._connection(transaction=True) as conn:
            # one counter update at a time across every gateway on the database
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key + 2)
            await conn.execute("DELETE FROM login_failures WHERE window_start <= $1", now - window)
            wait = 0.0
            for key, limit in limits:
                row = await conn.fetchrow(
                    "SELECT window_start, count FROM login_failures WHERE key = $1", key
                )
                if row is not None and row["count"] >= limit:
                    wait = max(wait, row["window_start"] + window - now)
            if wait > 0:
                return wait
            for key, _ in limits:
                await conn.execute(
                    "INSERT INTO login_failures (key, window_start, count) VALUES ($1, $2, 1) "
                    "ON CONFLICT (key) DO UPDATE SET count = login_failures.count + 1",
                    key,
                    now,
                )
        return None

    async def login_succeeded(self, reset: list[str], refund: list[str]) -> None:
        async with self._connection(transaction=True) as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key + 2)
            for key in reset:
                await conn.execute("DELETE FROM login_failures WHERE key = $1", key)
            for key in refund:
                await conn.execute(
                    "UPDATE login_failures SET count = greatest(count - 1, 0) WHERE key = $1",
                    key,
                )

    # -- request logs -----------------------------------------------------------------------

    async def insert_request_logs(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        records = [normalize_log_row(row) for row in rows]
        async with self._connection() as conn:
            await conn.copy_records_to_table(
                "request_logs", records=records, columns=LOG_KEYS, schema_name=self.schema
            )

    def request_log_sink(self) -> PostgresLogSink:
        if self._asyncpg is None:
            raise StoreError(f"the store {self.url} is not open")
        return PostgresLogSink(
            self._asyncpg, self.dsn, self._server_settings(), self.connect_timeout
        )

    async def query_request_logs(self, q: RequestLogQuery) -> tuple[list[dict[str, Any]], int]:
        conditions = q.conditions()
        where = (
            " AND ".join(f"{condition} ${i}" for i, (condition, _) in enumerate(conditions, 1))
            or "true"
        )
        params = [value for _, value in conditions]
        n = len(params)
        async with self._connection(transaction=True) as conn:
            rows = await conn.fetch(
                f"SELECT {_LOG_COLUMNS} FROM request_logs WHERE {where} "
                f"ORDER BY ts DESC, id DESC LIMIT ${n + 1} OFFSET ${n + 2}",
                *params,
                q.limit,
                q.offset,
            )
            total = await conn.fetchval(f"SELECT count(*) FROM request_logs WHERE {where}", *params)
        return [dict(row) for row in rows], total

    async def purge_request_logs(self, older_than: float) -> int:
        async with self._connection() as conn:
            status = await conn.execute("DELETE FROM request_logs WHERE ts < $1", float(older_than))
        return int(status.rsplit(" ", 1)[-1])
