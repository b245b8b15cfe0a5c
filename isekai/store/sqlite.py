"""The embedded store: one SQLite file, shared safely by several processes.

Strategy: stdlib ``sqlite3`` on one connection owned by one worker thread per ``Store`` (a
single-thread executor), so the event loop never blocks on disk and calls are serialised
without a lock. The file is in WAL mode with a busy timeout, so the master (admin changes) and
the workers (request logs) can write to it from their own processes: readers never block,
writers queue for up to ``busy_timeout``. Every write is one ``BEGIN IMMEDIATE`` transaction,
taking the write lock up front so a read-check-write (``if_version``) is atomic across
processes. ``wait_for_change`` polls the persisted revision every ``poll_interval`` seconds
(other processes' changes) and also wakes at once on this instance's own changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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
from isekai.store.log_sinks import SQLiteLogSink
from isekai.store.oauth_sqlite import SQLiteOAuth

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_ITEM_COLUMNS = "kind, name, doc, version, created_at, updated_at"
_LOG_COLUMNS = ", ".join(LOG_KEYS)
_INSERT_LOG = f"INSERT INTO request_logs ({_LOG_COLUMNS}) VALUES ({', '.join('?' * len(LOG_KEYS))})"
_INSERT_AUDIT = (
    f"INSERT INTO audit_log ({', '.join(AUDIT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})"
)
_PURGE_CHUNK = 10_000  # rows per delete, so writers in other processes wait briefly


def _item(row: tuple[Any, ...]) -> StoredItem:
    kind, name, doc, version, created_at, updated_at = row
    return StoredItem(kind, name, json.loads(doc), version, created_at, updated_at)


class SQLiteStore(SQLiteOAuth, Store):
    """A store in the SQLite file at ``path`` (``":memory:"`` for a private in-memory one).

    The file's parent directories are created on ``open()``.
    """

    def __init__(self, path: str, *, busy_timeout: float = 5.0, poll_interval: float = 0.2) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self.poll_interval = poll_interval
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._changed: asyncio.Event | None = None
        self._memory_lock = asyncio.Lock()  # the writer lock of a private in-memory store

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path!r}>"

    @contextlib.asynccontextmanager
    async def exclusive(self, timeout: float = EXCLUSIVE_TIMEOUT) -> AsyncIterator[None]:
        # flock on a file beside the database: SQLite itself uses POSIX record locks, which
        # closing another descriptor of the database file would release
        self._connection()
        if self.path == ":memory:":
            async with self._memory_lock:
                yield
            return
        try:
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"SQLite store {self.path}: cannot open its lock file: {exc}") from exc
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if loop.time() >= deadline:
                        raise StoreError(
                            f"SQLite store {self.path}: another writer held it for {timeout:g}s"
                        ) from None
                    await asyncio.sleep(EXCLUSIVE_POLL)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StoreError(f"the store {self.url} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store {self.url} is not open")
        return self._conn

    @staticmethod
    def _bump(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE store_state SET revision = revision + 1 WHERE id = 1")
        return conn.execute("SELECT revision FROM store_state WHERE id = 1").fetchone()[0]

    def _changed_locally(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="isekai-store")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(executor, self._connect)
        except BaseException as exc:
            executor.shutdown(wait=False)
            if isinstance(exc, (sqlite3.Error, OSError)):
                raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc
            raise
        self._executor = executor
        self._changed = asyncio.Event()

    def _connect(self) -> sqlite3.Connection:
        memory = self.path == ":memory:"
        if not memory:
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            if not memory:
                _set_wal(conn, self.busy_timeout)
                conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
            migrations.apply_sqlite(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        if executor is None:
            return
        self._executor = None
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            self._conn = None
            executor.shutdown(wait=False)
            self._changed_locally()  # waiters find the store closed instead of sleeping on

    # -- routes and upstreams ---------------------------------------------------------------

    async def list_items(self, kind: str) -> list[StoredItem]:
        check_kind(kind)

        def run() -> list[StoredItem]:
            rows = self._connection().execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE kind = ? ORDER BY name", (kind,)
            )
            return [_item(row) for row in rows]

        return await self._run(run)

    async def list_versions(self, kind: str) -> dict[str, int]:
        check_kind(kind)

        def run() -> dict[str, int]:
            rows = self._connection().execute(
                "SELECT name, version FROM items WHERE kind = ?", (kind,)
            )
            return dict(rows.fetchall())

        return await self._run(run)

    async def get_item(self, kind: str, name: str) -> StoredItem | None:
        check_kind(kind)

        def run() -> StoredItem | None:
            row = (
                self._connection()
                .execute(
                    f"SELECT {_ITEM_COLUMNS} FROM items WHERE kind = ? AND name = ?", (kind, name)
                )
                .fetchone()
            )
            return None if row is None else _item(row)

        return await self._run(run)

    async def create_item(self, kind: str, name: str, doc: Mapping[str, Any]) -> StoredItem:
        text = encode_doc(kind, name, doc)

        def run() -> StoredItem:
            now = time.time()
            with self._write() as conn:
                try:
                    conn.execute(
                        f"INSERT INTO items ({_ITEM_COLUMNS}) VALUES (?, ?, ?, 1, ?, ?)",
                        (kind, name, text, now, now),
                    )
                except sqlite3.IntegrityError:
                    raise AlreadyExists(kind, name) from None
                self._bump(conn)
            return StoredItem(kind, name, json.loads(text), 1, now, now)

        item = await self._run(run)
        self._changed_locally()
        return item

    async def replace_item(
        self, kind: str, name: str, doc: Mapping[str, Any], if_version: int | None = None
    ) -> StoredItem:
        text = encode_doc(kind, name, doc)
        check_version(if_version)

        def run() -> StoredItem:
            with self._write() as conn:
                version, created_at = self._current(conn, kind, name, if_version)
                now = time.time()
                conn.execute(
                    "UPDATE items SET doc = ?, version = ?, updated_at = ? "
                    "WHERE kind = ? AND name = ?",
                    (text, version + 1, now, kind, name),
                )
                self._bump(conn)
            return StoredItem(kind, name, json.loads(text), version + 1, created_at, now)

        item = await self._run(run)
        self._changed_locally()
        return item

    async def delete_item(self, kind: str, name: str, if_version: int | None = None) -> None:
        check_kind(kind)
        check_version(if_version)

        def run() -> None:
            with self._write() as conn:
                self._current(conn, kind, name, if_version)
                conn.execute("DELETE FROM items WHERE kind = ? AND name = ?", (kind, name))
                self._bump(conn)

        await self._run(run)
        self._changed_locally()

    @staticmethod
    def _current(
        conn: sqlite3.Connection, kind: str, name: str, if_version: int | None
    ) -> tuple[int, float]:
        row = conn.execute(
            "SELECT version, created_at FROM items WHERE kind = ? AND name = ?", (kind, name)
        ).fetchone()
        if row is None:
            raise NotFound(kind, name)
        if if_version is not None and row[0] != if_version:
            raise VersionMismatch(kind, name, row[0], if_version)
        return row[0], row[1]

    async def revision(self) -> int:
        def run() -> int:
            conn = self._connection()
            return conn.execute("SELECT revision FROM store_state WHERE id = 1").fetchone()[0]

        return await self._run(run)

    async def wait_for_change(self, since: int, timeout: float) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        while True:
            changed = self._changed  # taken before reading, so no local change is missed
            current = await self.revision()
            remaining = deadline - loop.time()
            if current > since or remaining <= 0 or changed is None:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(self.poll_interval, remaining))

    # -- users ------------------------------------------------------------------------------

    # usernames are ASCII (check_user) and compared case-insensitively: NOCASE folds ASCII

    _USER_KEYS = ("username", "password_hash", "role", "created_at", "token_version")

    async def get_user(self, username: str) -> dict[str, Any] | None:
        def run() -> dict[str, Any] | None:
            row = self._find_user(self._connection(), username)
            return None if row is None else dict(zip(self._USER_KEYS, row, strict=True))

        return await self._run(run)

    async def list_users(self) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            rows = self._connection().execute(
                "SELECT username, role, created_at, token_version FROM users "
                "ORDER BY username COLLATE NOCASE"
            )
            keys = ("username", "role", "created_at", "token_version")
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self._run(run)

    @staticmethod
    def _find_user(conn: sqlite3.Connection, username: str) -> tuple[Any, ...] | None:
        return conn.execute(
            "SELECT username, password_hash, role, created_at, token_version FROM users "
            "WHERE username = ? COLLATE NOCASE ORDER BY created_at LIMIT 1",
            (username,),
        ).fetchone()

    @staticmethod
    def _check_admins_left(conn: sqlite3.Connection, username: str) -> None:
        # inside the write transaction (BEGIN IMMEDIATE): no other writer counts meanwhile
        admins = conn.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0]
        if admins <= 1:
            raise LastAdmin(username)

    @staticmethod
    def _audit(conn: sqlite3.Connection, record: AuditRecord | None) -> None:
        if record is not None:
            conn.execute(_INSERT_AUDIT, record.encoded())

    async def create_user(
        self, username: str, password_hash: str, role: str, *, audit: AuditRecord | None = None
    ) -> None:
        check_user(username, password_hash, role)

        def run() -> None:
            with self._write() as conn:
                if self._find_user(conn, username) is not None:
                    raise AlreadyExists("user", username)
                conn.execute(
                    "INSERT INTO users (username, password_hash, role, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (username, password_hash, role, time.time()),
                )
                self._audit(conn, audit)

        await self._run(run)

    async def set_user(
        self,
        username: str,
        password_hash: str | None,
        role: str | None,
        *,
        audit: AuditRecord | None = None,
    ) -> None:
        check_user(username, password_hash, role, keep=True)

        def run() -> None:
            with self._write() as conn:
                found = self._find_user(conn, username)
                if found is not None:  # keeps the stored spelling and created_at
                    new_hash = found[1] if password_hash is None else password_hash
                    new_role = found[2] if role is None else role
                    if found[2] == "admin" and new_role != "admin":
                        self._check_admins_left(conn, found[0])
                    bump = int(found[1] != new_hash or found[2] != new_role)
                    conn.execute(
                        "UPDATE users SET password_hash = ?, role = ?, "
                        "token_version = token_version + ? WHERE username = ?",
                        (new_hash, new_role, bump, found[0]),
                    )
                else:
                    check_user(username, password_hash, role)
                    conn.execute(
                        "INSERT INTO users (username, password_hash, role, created_at) "
                        "VALUES (?, ?, ?, ?)",
                        (username, password_hash, role, time.time()),
                    )
                self._audit(conn, audit)

        await self._run(run)

    async def delete_user(self, username: str, *, audit: AuditRecord | None = None) -> None:
        def run() -> None:
            with self._write() as conn:
                found = self._find_user(conn, username)
                if found is None:
                    raise NotFound("user", username)
                if found[2] == "admin":
                    self._check_admins_left(conn, found[0])
                conn.execute("DELETE FROM users WHERE username = ?", (found[0],))
                self._audit(conn, audit)

        await self._run(run)

    async def bump_token_version(self, username: str, *, audit: AuditRecord | None = None) -> int:
        def run() -> int:
            with self._write() as conn:
                found = self._find_user(conn, username)
                if found is None:
                    raise NotFound("user", username)
                conn.execute(
                    "UPDATE users SET token_version = token_version + 1 WHERE username = ?",
                    (found[0],),
                )
                self._audit(conn, audit)
                return found[4] + 1

        return await self._run(run)

    async def count_users(self) -> int:
        def run() -> int:
            return self._connection().execute("SELECT count(*) FROM users").fetchone()[0]

        return await self._run(run)

    # -- admin audit log and login attempts -------------------------------------------------

    async def record_audit(self, record: AuditRecord) -> None:
        def run() -> None:
            with self._write() as conn:
                self._audit(conn, record)

        await self._run(run)

    async def query_audit(self, q: AuditQuery) -> tuple[list[AuditRecord], int]:
        conditions = q.conditions()
        where = " AND ".join(f"{condition} ?" for condition, _ in conditions) or "1"
        params = [value for _, value in conditions]

        def run() -> tuple[list[AuditRecord], int]:
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot for the page and the total
            try:
                rows = conn.execute(
                    f"SELECT id, {', '.join(AUDIT_COLUMNS)} FROM audit_log WHERE {where} "
                    "ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
                    (*params, q.limit, q.offset),
                ).fetchall()
                total = conn.execute(
                    f"SELECT count(*) FROM audit_log WHERE {where}", params
                ).fetchone()[0]
            finally:
                conn.execute("COMMIT")
            return [audit_from_row(row) for row in rows], total

        return await self._run(run)

    async def take_login_attempt(
        self, limits: list[tuple[str, int]], window: float
    ) -> float | None:
        def run() -> float | None:
            now = time.time()
            with self._write() as conn:  # BEGIN IMMEDIATE: read and count as one step
                conn.execute("DELETE FROM login_failures WHERE window_start <= ?", (now - window,))
                wait = 0.0
                for key, limit in limits:
                    row = conn.execute(
                        "SELECT window_start, count FROM login_failures WHERE key = ?", (key,)
                    ).fetchone()
                    if row is not None and row[1] >= limit:
                        wait = max(wait, row[0] + window - now)
                if wait > 0:
                    return wait
                for key, _ in limits:
                    conn.execute(
                        "INSERT INTO login_failures (key, window_start, count) VALUES (?, ?, 1) "
                        "ON CONFLICT (key) DO UPDATE SET count = count + 1",
                        (key, now),
                    )
                return None

        return await self._run(run)

    async def login_succeeded(self, reset: list[str], refund: list[str]) -> None:
        def run() -> None:
            with self._write() as conn:
                for key in reset:
                    conn.execute("DELETE FROM login_failures WHERE key = ?", (key,))
                for key in refund:
                    conn.execute(
                        "UPDATE login_failures SET count = max(count - 1, 0) WHERE key = ?",
                        (key,),
                    )

        await self._run(run)

    # -- request logs -----------------------------------------------------------------------

    async def insert_request_logs(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return

        def run() -> None:
            values = [normalize_log_row(row) for row in rows]
            with self._write() as conn:
                conn.executemany(_INSERT_LOG, values)

        await self._run(run)

    def request_log_sink(self) -> SQLiteLogSink | None:
        if self.path == ":memory:":  # private to the store's own connection
            return None
        return SQLiteLogSink(self.path, self.busy_timeout)

    async def query_request_logs(self, q: RequestLogQuery) -> tuple[list[dict[str, Any]], int]:
        conditions = q.conditions()
        where = " AND ".join(f"{condition} ?" for condition, _ in conditions) or "1"
        params = [value for _, value in conditions]

        def run() -> tuple[list[dict[str, Any]], int]:
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot for the page and the total
            try:
                rows = conn.execute(
                    f"SELECT {_LOG_COLUMNS} FROM request_logs WHERE {where} "
                    "ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?",
                    (*params, q.limit, q.offset),
                ).fetchall()
                total = conn.execute(
                    f"SELECT count(*) FROM request_logs WHERE {where}", params
                ).fetchone()[0]
            finally:
                conn.execute("COMMIT")
            return [dict(zip(LOG_KEYS, row, strict=True)) for row in rows], total

        return await self._run(run)

    async def purge_request_logs(self, older_than: float) -> int:
        cutoff = float(older_than)

        def run() -> int:
            deleted = 0
            while True:
                with self._write() as conn:
                    count = conn.execute(
                        "DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs "
                        "WHERE ts < ? LIMIT ?)",
                        (cutoff, _PURGE_CHUNK),
                    ).rowcount
                deleted += count
                if count < _PURGE_CHUNK:
                    return deleted

        return await self._run(run)


def _set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock, and SQLite may answer "database is
    # locked" at once (without its busy handler) while another process opens the same file.
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
