"""SQLiteStore: the shared store contract, plus what is particular to one SQLite file."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sqlite3
import threading
import time

import pytest

from isekai.store import RequestLogQuery, StoreError, open_store
from isekai.store.migrations import SQLITE_MIGRATIONS, apply_sqlite
from isekai.store.sqlite import SQLiteStore
from tests.unit.store.store_contract import ROUTE, StoreContract, async_test, log_row


class SQLiteBackend:
    """A fresh database file for one test (its directory does not exist yet)."""

    all_versions = [version for version, _ in SQLITE_MIGRATIONS]

    def __init__(self, path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"  # path is absolute: sqlite:////tmp/...

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(self.path, isolation_level=None)

    async def migrate_to(self, version: int) -> None:
        conn = self._connect()
        try:
            apply_sqlite(conn, target=version)
        finally:
            conn.close()

    async def seed_v1_route(self, name: str, doc: dict) -> None:
        conn = self._connect()
        try:
            conn.execute(
                "INSERT INTO items VALUES ('route', ?, ?, 1, 1.0, 1.0)", (name, json.dumps(doc))
            )
        finally:
            conn.close()

    async def applied_versions(self) -> list[int]:
        conn = self._connect()
        try:
            rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            return [version for (version,) in rows]
        finally:
            conn.close()


@pytest.fixture
def backend(tmp_path):
    return SQLiteBackend(tmp_path / "state" / "isekai.db")


class TestSQLiteStore(StoreContract):
    """Every contract test, against a SQLite file."""


# -- particular to SQLite ------------------------------------------------------------------------


@async_test
async def test_sqlite_store_creates_parent_directories_and_uses_wal(tmp_path):
    path = tmp_path / "a" / "b" / "store.db"
    async with open_store(f"sqlite:///{path}") as store:
        assert isinstance(store, SQLiteStore)
        busy = await store._run(lambda: store._conn.execute("PRAGMA busy_timeout").fetchone()[0])
        assert busy == 5000
    assert path.exists()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


@async_test
async def test_sqlite_store_relative_path_is_relative_to_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:///data/rel.db") as store:
        await store.create_item("route", "users", ROUTE)
    assert (tmp_path / "data" / "rel.db").exists()


@async_test
async def test_sqlite_store_in_memory_works_and_is_private(tmp_path):
    async with open_store("sqlite:///:memory:") as store, open_store("sqlite:///:memory:") as other:
        await store.create_item("route", "users", ROUTE)
        assert await store.wait_for_change(0, timeout=1) == 1
        assert await other.get_item("route", "users") is None
        await store.insert_request_logs([log_row(1.0)])
        assert (await store.query_request_logs(RequestLogQuery()))[1] == 1


@async_test
async def test_sqlite_store_runs_queries_off_the_event_loop_thread(tmp_path):
    async with open_store(f"sqlite:///{tmp_path / 's.db'}") as store:
        ident = await store._run(threading.get_ident)
        assert ident != threading.get_ident()
        assert await store._run(threading.get_ident) == ident  # always the same one thread


@async_test
async def test_sqlite_store_open_fails_with_store_error_on_unusable_path(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    store = open_store(f"sqlite:///{tmp_path / 'file' / 'store.db'}")
    with pytest.raises(StoreError, match="cannot open the SQLite store"):
        await store.open()
    with pytest.raises(StoreError, match="not open"):
        await store.revision()


@async_test
async def test_sqlite_store_open_fails_with_store_error_on_a_non_database_file(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        await open_store(f"sqlite:///{path}").open()


def _hold_write_lock(path, seconds: float, locked: threading.Event) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


@async_test
async def test_sqlite_store_write_waits_for_another_writer(tmp_path):
    path = tmp_path / "busy.db"
    async with open_store(f"sqlite:///{path}") as store:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 0.5, locked))
        holder.start()
        locked.wait()
        started = time.monotonic()
        await store.create_item("route", "users", ROUTE)  # blocks until the lock is free
        assert time.monotonic() - started >= 0.3
        holder.join()
        assert await store.revision() == 1


@async_test
async def test_sqlite_store_reports_a_lock_held_too_long_as_store_error(tmp_path):
    path = tmp_path / "busy.db"
    store = SQLiteStore(str(path), busy_timeout=0.1)
    async with store:
        locked = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 1.0, locked))
        holder.start()
        locked.wait()
        try:
            with pytest.raises(StoreError, match="locked"):
                await store.create_item("route", "users", ROUTE)
        finally:
            holder.join()
        await store.create_item("route", "users", ROUTE)  # fine once released
        assert await store.revision() == 1


def _write_from_another_process(url: str, worker: int, batches: int) -> None:
    async def main() -> None:
        async with open_store(url) as store:
            for batch in range(batches):
                await store.insert_request_logs(
                    [
                        log_row(worker * 10_000 + batch * 20 + i, route=f"w{worker}")
                        for i in range(20)
                    ]
                )
            await store.create_item("upstream", f"up{worker}", {"targets": [f"h{worker}:1"]})

    asyncio.run(main())


@async_test
async def test_sqlite_store_file_is_shared_by_several_processes(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    async with open_store(url) as store:
        since = await store.revision()
        context = multiprocessing.get_context("spawn")
        workers = [
            context.Process(target=_write_from_another_process, args=(url, worker, 25))
            for worker in range(3)
        ]
        for process in workers:
            process.start()
        loop = asyncio.get_running_loop()
        for process in workers:
            await loop.run_in_executor(None, process.join, 60)
            assert process.exitcode == 0
        assert await store.wait_for_change(since, timeout=1) == since + 3
        assert [item.name for item in await store.list_items("upstream")] == ["up0", "up1", "up2"]
        _, total = await store.query_request_logs(RequestLogQuery())
        assert total == 3 * 25 * 20
        _, total = await store.query_request_logs(RequestLogQuery(route="w1"))
        assert total == 25 * 20
