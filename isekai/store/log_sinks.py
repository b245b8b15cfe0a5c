"""Request-log sinks: how a writer thread puts `_core` records into each backend.

A sink is used by one thread only (`RequestLogWriter`'s), with a database connection of its own,
so inserts never touch the event loop. It takes the records exactly as `_core` made them (the
request-log columns first, in `LOG_COLUMNS` order and already decoded, then fields only the
access log reads) and makes no Python object per record on the SQLite path: the statement
names every parameter by number, so SQLite binds the record as it is and ignores the tail, and
`substr` bounds the text columns (`LOG_TEXT_LIMITS`) inside SQLite. Nothing here is called per
request.

A sink opens its connection on first use, and drops it after a failure so the next batch
reconnects; errors propagate to the writer, which counts and reports them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from isekai.store.base import LOG_COLUMNS, LOG_KEYS, LOG_TEXT_DEFAULT_LIMIT, LOG_TEXT_LIMITS

__all__ = ["LoopSink", "PostgresLogSink", "RequestLogSink", "SQLiteLogSink"]

PURGE_CHUNK = 10_000  # rows per delete, so writers in other processes wait briefly


class RequestLogSink(Protocol):
    """What `RequestLogWriter` needs of a backend; every call comes from its thread."""

    def write(self, records: Sequence[tuple]) -> None:
        """Insert ``records`` (`_core` records, all of one length) in one transaction."""

    def purge(self, older_than: float) -> int:
        """Delete rows with ``ts < older_than``; return how many."""

    def close(self) -> None:
        """Close the connection (if any)."""


def _bounded(column: str, to: type, param: str, text: str) -> str:
    if to is not str:
        return param
    return f"{text}({param}, 1, {LOG_TEXT_LIMITS.get(column, LOG_TEXT_DEFAULT_LIMIT)})"


class LoopSink:
    """For a store without a sink of its own (an in-memory one): each batch becomes dict rows
    for ``store.insert_request_logs``, run on ``loop`` (the slow way; it still never blocks
    the loop, the writer thread waits)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def write(self, records: Sequence[tuple]) -> None:
        width = len(LOG_KEYS)
        rows = [dict(zip(LOG_KEYS, record[:width], strict=True)) for record in records]
        asyncio.run_coroutine_threadsafe(self.store.insert_request_logs(rows), self.loop).result()

    def purge(self, older_than: float) -> int:
        coro = self.store.purge_request_logs(older_than)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        pass


class SQLiteLogSink:
    """Inserts with ``executemany`` on its own connection to the store's file."""

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._statements: dict[int, str] = {}

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")  # the file is in WAL mode
            self._conn = conn
        return self._conn

    def _statement(self, width: int) -> str:
        """INSERT taking a whole record of ``width`` values: SQLite binds parameters 1 to the
        highest number used, so the (always true) WHERE names the last one."""
        sql = self._statements.get(width)
        if sql is None:
            values = ", ".join(
                _bounded(column, to, f"?{i}", "substr")
                for i, (column, to) in enumerate(LOG_COLUMNS, 1)
            )
            sql = f"INSERT INTO request_logs ({', '.join(LOG_KEYS)}) SELECT {values}" + (
                f" WHERE ?{width} IS NULL OR 1" if width > len(LOG_KEYS) else ""
            )
            self._statements[width] = sql
        return sql

    def write(self, records: Sequence[tuple]) -> None:
        if not records:
            return
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(self._statement(len(records[0])), records)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error:
            self.close()
            raise

    def purge(self, older_than: float) -> int:
        conn = self._connection()
        deleted = 0
        while True:
            conn.execute("BEGIN IMMEDIATE")
            count = conn.execute(
                "DELETE FROM request_logs WHERE id IN (SELECT id FROM request_logs "
                "WHERE ts < ? LIMIT ?)",
                (float(older_than), PURGE_CHUNK),
            ).rowcount
            conn.execute("COMMIT")
            deleted += count
            if count < PURGE_CHUNK:
                return deleted

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class PostgresLogSink:
    """Inserts with asyncpg's ``executemany`` (one pipelined round of binds) on a connection
    of its own, driven by a private event loop in the writer thread."""

    _SQL = "INSERT INTO request_logs ({}) VALUES ({})".format(
        ", ".join(LOG_KEYS),
        ", ".join(
            f"{_bounded(column, to, f'${i}', 'substr')}"
            for i, (column, to) in enumerate(LOG_COLUMNS, 1)
        ),
    )

    def __init__(
        self, asyncpg: Any, dsn: str, settings: dict[str, str], connect_timeout: float
    ) -> None:
        self._asyncpg = asyncpg
        self.dsn = dsn
        self.settings = settings
        self.connect_timeout = connect_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None

    def _run(self, coro: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._asyncpg.connect(
                self.dsn, timeout=self.connect_timeout, server_settings=self.settings
            )
        return self._conn

    async def _write(self, records: Iterable[tuple]) -> None:
        conn = await self._connection()
        await conn.executemany(self._SQL, records)

    def write(self, records: Sequence[tuple]) -> None:
        if not records:
            return
        width = len(LOG_KEYS)
        try:
            # asyncpg takes exactly the statement's arguments: the request-log part of each
            self._run(self._write(record[:width] for record in records))
        except BaseException:
            self._drop()
            raise

    async def _purge(self, older_than: float) -> int:
        conn = await self._connection()
        status = await conn.execute("DELETE FROM request_logs WHERE ts < $1", float(older_than))
        return int(status.split()[-1])

    def purge(self, older_than: float) -> int:
        try:
            return self._run(self._purge(older_than))
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._loop is not None:
            conn.terminate()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        loop, self._loop = self._loop, None
        if loop is None:
            return
        try:
            if conn is not None:
                try:
                    loop.run_until_complete(asyncio.wait_for(conn.close(), 5))
                except Exception:
                    conn.terminate()
        finally:
            loop.close()
