"""PostgresStore against a real PostgreSQL: the shared store contract, plus clustering.

The server comes from ``require_service("postgres")`` (``ISEKAI_TEST_POSTGRES_DSN``, default
``postgresql://postgres@127.0.0.1:5432/test``): unreachable, these tests skip, or fail under
``CI=true``. Each test works in its own schema, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest

from isekai.store import StoreError, open_store
from isekai.store.migrations import POSTGRES_MIGRATIONS, apply_postgres
from isekai.store.postgres import PostgresStore
from tests.unit.store.store_contract import (
    PROMPT,
    ROUTE,
    UPSTREAM,
    WAIT,
    StoreContract,
    async_test,
)


@pytest.fixture(scope="module")
def pg_dsn(require_service) -> str:
    return require_service("postgres")


def _asyncpg():
    import asyncpg  # installed: require_service("postgres") connected with it

    return asyncpg


class PostgresBackend:
    """A fresh schema for one test, on the test database."""

    all_versions = [version for version, _ in POSTGRES_MIGRATIONS]

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.schema = f"isekai_test_{uuid.uuid4().hex[:12]}"
        self.url = f"{dsn}{'&' if '?' in dsn else '?'}schema={self.schema}"

    async def _connect(self):
        return await _asyncpg().connect(self.dsn, server_settings={"search_path": self.schema})

    async def migrate_to(self, version: int) -> None:
        conn = await self._connect()
        try:
            await apply_postgres(conn, target=version, schema=self.schema)
        finally:
            await conn.close()

    async def seed_v1_route(self, name: str, doc: dict) -> None:
        conn = await self._connect()
        try:
            await conn.execute(
                "INSERT INTO items VALUES ('route', $1, $2::jsonb, 1, 1.0, 1.0)",
                name,
                json.dumps(doc),
            )
        finally:
            await conn.close()

    async def applied_versions(self) -> list[int]:
        conn = await self._connect()
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
            return [row[0] for row in rows]
        finally:
            await conn.close()

    async def drop(self) -> None:
        conn = await _asyncpg().connect(self.dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
def backend(pg_dsn):
    backend = PostgresBackend(pg_dsn)
    yield backend
    asyncio.run(backend.drop())


class TestPostgresStore(StoreContract):
    """Every contract test, against PostgreSQL."""


# -- particular to PostgreSQL --------------------------------------------------------------------


@async_test
async def test_postgres_store_keeps_docs_as_jsonb_in_its_own_schema(backend):
    async with open_store(backend.url) as store:
        assert isinstance(store, PostgresStore)
        await store.create_item("route", "users", ROUTE)
    conn = await backend._connect()
    try:
        where = await conn.fetchval(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'items' "
            "AND table_schema = $1",
            backend.schema,
        )
        assert where == backend.schema
        kind = await conn.fetchval("SELECT jsonb_typeof(doc -> 'match') FROM items")
        assert kind == "object"
    finally:
        await conn.close()


@async_test
async def test_postgres_store_two_instances_see_each_other_promptly(backend):
    async with open_store(backend.url) as gateway_a, open_store(backend.url) as gateway_b:
        for writer, watcher in ((gateway_a, gateway_b), (gateway_b, gateway_a)):
            since = await watcher.revision()
            waiter = asyncio.create_task(watcher.wait_for_change(since, timeout=WAIT))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await writer.create_item("upstream", f"up{since}", UPSTREAM)
            assert await waiter == since + 1
            assert time.monotonic() - started < PROMPT


@async_test
async def test_postgres_store_wakes_on_notify_not_by_polling(backend):
    async with open_store(backend.url) as watcher, open_store(backend.url) as writer:
        watcher.poll_interval = 60.0  # only a notification can wake the waiter in time
        waiter = asyncio.create_task(watcher.wait_for_change(0, timeout=WAIT))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await writer.create_item("route", "users", ROUTE)
        assert await waiter == 1
        assert time.monotonic() - started < PROMPT


@async_test
async def test_postgres_store_notifications_stay_in_their_schema(pg_dsn):
    one, two = PostgresBackend(pg_dsn), PostgresBackend(pg_dsn)
    try:
        async with open_store(one.url) as store_one, open_store(two.url) as store_two:
            assert store_one.channel != store_two.channel
            waiter = asyncio.create_task(store_two.wait_for_change(0, timeout=0.5))
            await store_one.create_item("route", "users", ROUTE)
            assert await waiter == 0
            assert await store_two.get_item("route", "users") is None
    finally:
        await one.drop()
        await two.drop()


@async_test
async def test_postgres_store_listener_reconnects_after_being_killed(backend):
    async with open_store(backend.url) as watcher, open_store(backend.url) as writer:
        watcher.check_interval = 0.2
        watcher.reconnect_delay = (0.05, 0.2)
        first = watcher._listener
        pid = first.get_server_pid()
        admin = await backend._connect()
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        # a change while the listener is down is still seen (polling, then the reconnect)
        waiter = asyncio.create_task(watcher.wait_for_change(0, timeout=WAIT))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await writer.create_item("route", "users", ROUTE)
        assert await waiter == 1
        assert time.monotonic() - started < PROMPT
        deadline = time.monotonic() + 10
        while not (watcher._listening() and watcher._listener is not first):
            assert time.monotonic() < deadline, "listener did not reconnect"
            await asyncio.sleep(0.05)
        watcher.poll_interval = 60.0  # from here on, only NOTIFY wakes it
        waiter = asyncio.create_task(watcher.wait_for_change(1, timeout=WAIT))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        await writer.delete_item("route", "users")
        assert await waiter == 2
        assert time.monotonic() - started < PROMPT


@async_test
async def test_postgres_store_survives_pool_connections_being_killed(backend):
    async with open_store(backend.url) as store:
        await store.create_item("route", "users", ROUTE)
        async with store._pool.acquire() as conn:
            pid = conn.get_server_pid()
        admin = await backend._connect()
        try:
            await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        finally:
            await admin.close()
        await asyncio.sleep(0.1)
        outcomes = []
        for _ in range(3):  # the first call may see the dead connection; later ones reconnect
            try:
                outcomes.append((await store.get_item("route", "users")).name)
            except StoreError as exc:
                outcomes.append(type(exc))
        assert outcomes[-1] == "users"


@async_test
async def test_postgres_store_open_reports_an_unreachable_server(pg_dsn):
    store = open_store("postgresql://isekai:secret@127.0.0.1:1/none")
    store.connect_timeout = 2.0
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as caught:
        await store.open()
    assert "secret" not in str(caught.value)
    with pytest.raises(StoreError, match="not open"):
        await store.revision()
