"""Request-log sinks: how a writer thread puts `_core` records into each backend.

A sink is used by one thread only (`RequestLogWriter`'s), with a database connection of its own,
so inserts never touch the event loop. It takes the records as `_core` made them: the
request-log columns first, in `LOG_COLUMNS` order, already decoded and bounded
(`LOG_TEXT_LIMITS`), then fields only the access log reads; a statement binds the first
``len(LOG_KEYS)`` values of each (a slice made in C, freed at once). SQLite takes up to
`ROWS_PER_INSERT` rows per INSERT; PostgreSQL gets a binary COPY (asyncpg's
``copy_records_to_table``). Nothing here is called per request.

CPython's sqlite3 (3.11) adapts every parameter that is not exactly int, float, str or
bytearray by looking up ``__adapt__`` on its protocol type, which raises and formats an
AttributeError each time: about 2,000 instructions per None. Registering an adapter for None
(a C method returning None) takes it off that path; the value bound is still NULL, for every
sqlite3 connection of the process.

A sink opens its connection on first use, and drops it after a failure so the next batch
reconnects; errors propagate to the writer, which counts and reports them.
"""

from __future__ import annotations

import asyncio
import itertools
import operator
import sqlite3
from collections.abc import Sequence
from typing import Any, Protocol

from isekai.store.base import LOG_KEYS

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


_HEAD = operator.itemgetter(slice(0, len(LOG_KEYS)))  # a record's request-log columns
_flat = itertools.chain.from_iterable
_COLUMNS = ", ".join(LOG_KEYS)
sqlite3.register_adapter(type(None), {}.get)  # None -> None (NULL), off the slow path


class LoopSink:
    """For a store without a sink of its own (an in-memory one): each batch becomes dict rows
    for ``store.insert_request_logs``, run on ``loop`` (the slow way; it still never blocks
    the loop, the writer thread waits)."""

    def __init__(self, store: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.store = store
        self.loop = loop

    def write(self, records: Sequence[tuple]) -> None:
        rows = [dict(zip(LOG_KEYS, _HEAD(record), strict=True)) for record in records]
        asyncio.run_coroutine_threadsafe(self.store.insert_request_logs(rows), self.loop).result()

    def purge(self, older_than: float) -> int:
        coro = self.store.purge_request_logs(older_than)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        pass


def _rows_statement(rows: int) -> str:
    row = "(" + ", ".join("?" * len(LOG_KEYS)) + ")"
    return f"INSERT INTO request_logs ({_COLUMNS}) VALUES " + ", ".join([row] * rows)


# rows per INSERT: one statement per 128 records (SQLite >= 3.32 takes 32766 parameters, older
# ones 999); a remainder goes in power-of-two pieces, so a few cached statements serve any batch
ROWS_PER_INSERT = 128 if sqlite3.sqlite_version_info >= (3, 32) else 64


class SQLiteLogSink:
    """Inserts on its own connection to the store's file, many rows per INSERT: each
    ``sqlite3_step`` releases and retakes the GIL and ends a statement, which costs more
    per row than the row itself when done once per row (``executemany``)."""

    _STATEMENTS = {rows: _rows_statement(rows) for rows in (1 << i for i in range(8))}

    def __init__(self, path: str, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")  # the file is in WAL mode
            self._conn = conn
        return self._conn

    def write(self, records: Sequence[tuple]) -> None:
        if not records:
            return
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                start, left = 0, len(records)
                while left:
                    rows = min(ROWS_PER_INSERT, 1 << (left.bit_length() - 1))
                    chunk = records[start : start + rows]
                    conn.execute(self._STATEMENTS[rows], tuple(_flat(map(_HEAD, chunk))))
                    start += rows
                    left -= rows
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
    """Inserts with asyncpg's ``copy_records_to_table`` (binary COPY: one round trip, no
    statement per row) on a connection of its own, driven by a private event loop in the
    writer thread; the table is found through the connection's ``search_path``."""

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

    async def _write(self, records: Any) -> None:
        conn = await self._connection()
        await conn.copy_records_to_table("request_logs", records=records, columns=LOG_KEYS)

    def write(self, records: Sequence[tuple]) -> None:
        if not records:
            return
        try:
            self._run(self._write(map(_HEAD, records)))
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
