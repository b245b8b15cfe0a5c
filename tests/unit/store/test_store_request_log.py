"""RequestLogWriter: bounded, batched in a thread, never blocking or raising into the loop."""

from __future__ import annotations

import logging
import time

import pytest

from isekai._core.protocol import RECORD_EXTRAS
from isekai.store import RequestLogQuery, RequestLogWriter, open_store
from isekai.store.base import LOG_KEYS
from isekai.store.log_sinks import SQLiteLogSink
from tests.unit.store.store_contract import async_test, log_row


def record(ts: float, headers: int = 1, **extra) -> tuple:
    """A record as `_core` makes it: the request-log columns, the extras, header values."""
    row = log_row(ts, **extra)
    tail = (b"0af7651916cd43dd8448eb211c80319c", None, b"?a=1", None, b"h", "public", True)
    assert len(tail) == len(RECORD_EXTRAS)
    return tuple(row[key] for key in LOG_KEYS) + tail + (b"v",) * headers


def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _sqlite_writer(path, **kwargs) -> RequestLogWriter:
    return RequestLogWriter(lambda: SQLiteLogSink(str(path), 5.0), **kwargs)


async def _rows(url: str, **query):
    async with open_store(url) as store:
        return await store.query_request_logs(RequestLogQuery(**query))


def test_request_log_writer_offer_is_bounded_and_counts_drops(tmp_path):
    writer = _sqlite_writer(tmp_path / "x.db", capacity=3)
    assert writer.offer([record(1.0), record(2.0)]) == 2
    assert writer.offer([record(3.0), record(4.0)]) == 1  # one fits
    assert writer.offer([record(5.0)]) == 0
    assert (writer.dropped, writer.pending) == (2, 3)
    assert writer.offer([]) == 0


def test_request_log_writer_rejects_bad_settings():
    for kwargs in ({"capacity": 0}, {"batch_size": 0}, {"interval": 0}, {"retention": 0}):
        with pytest.raises(ValueError):
            RequestLogWriter(lambda: None, **kwargs)


@async_test
async def test_request_log_writer_thread_writes_core_records_to_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    async with open_store(url) as store:
        writer = RequestLogWriter(store.request_log_sink, interval=0.05)
        writer.start()
        assert writer.offer([record(1000.0 + i) for i in range(1200)]) == 1200
        assert writer.offer([record(3000.0, route=None, user_agent=None, headers=0)]) == 1
        _until(lambda: writer.written == 1201)
        await writer.aclose()
        rows, total = await store.query_request_logs(RequestLogQuery(limit=2))
    assert total == 1201 and writer.pending == 0
    assert rows[0]["ts"] == 3000.0 and rows[0]["route"] is None and rows[0]["user_agent"] is None
    assert rows[1] == log_row(2199.0)  # every column, exactly as given


@async_test
async def test_request_log_writer_flushes_on_stop_then_refuses_records(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    async with open_store(url):
        pass  # the tables
    writer = _sqlite_writer(tmp_path / "logs.db", batch_size=10_000, interval=60)
    writer.start()
    writer.offer([record(float(i)) for i in range(5)])
    await writer.aclose()
    assert (writer.written, writer.pending) == (5, 0)
    assert writer.offer([record(9.0)]) == 0 and writer.dropped == 1
    assert (await _rows(url))[1] == 5


@async_test
async def test_request_log_writer_stop_without_start_still_flushes(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    async with open_store(url):
        pass
    writer = _sqlite_writer(tmp_path / "logs.db")
    writer.offer([record(1.0), record(2.0), record(3.0)])
    writer.stop()
    assert writer.written == 3 and (await _rows(url))[1] == 3


def test_request_log_writer_survives_a_failing_database(tmp_path, caplog):
    # no request_logs table: every insert fails; the caller never sees it
    writer = _sqlite_writer(tmp_path / "empty.db", interval=0.02, error_log_interval=60)
    with caplog.at_level(logging.WARNING, logger="isekai.store.request_log_writer"):
        writer.start()
        for i in range(3):
            assert writer.offer([record(float(i))]) == 1
            _until(lambda i=i: writer.failed_batches == i + 1)
        writer.stop()
    assert (writer.failed_batches, writer.lost, writer.written) == (3, 3, 0)
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one report for three failures
    assert "no such table" in warnings[0].getMessage()


@async_test
async def test_request_log_writer_purges_past_retention(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    now = time.time()
    async with open_store(url) as store:
        await store.insert_request_logs([log_row(now - 7200), log_row(now - 10)])
    writer = _sqlite_writer(tmp_path / "logs.db", interval=0.02, retention=3600)
    writer.start()
    _until(lambda: writer.purged == 1)
    await writer.aclose()
    rows, total = await _rows(url)
    assert total == 1 and rows[0]["ts"] == now - 10


@async_test
async def test_request_log_writer_without_retention_never_purges(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    async with open_store(url) as store:
        await store.insert_request_logs([log_row(1.0)])
    writer = _sqlite_writer(tmp_path / "logs.db", interval=0.01, purge_interval=0.01)
    writer.start()
    time.sleep(0.1)
    await writer.aclose()
    assert writer.purged == 0 and (await _rows(url))[1] == 1


@async_test
async def test_request_log_writer_through_a_store_without_a_sink_of_its_own():
    import asyncio

    from isekai.store.log_sinks import LoopSink

    async with open_store("sqlite:///:memory:") as store:
        assert store.request_log_sink() is None
        sink = LoopSink(store, asyncio.get_running_loop())
        writer = RequestLogWriter(lambda: sink, interval=0.02)
        writer.start()
        writer.offer([record(5.0), record(6.0)])
        await writer.aclose()
        rows, total = await store.query_request_logs(RequestLogQuery())
    assert total == 2 and rows[0] == log_row(6.0)


@pytest.fixture
def pg_dsn(require_service) -> str:
    return require_service("postgres")


@async_test
async def test_request_log_writer_thread_writes_core_records_to_postgres(pg_dsn):
    import uuid

    dsn = pg_dsn
    schema = f"isekai_rl_{uuid.uuid4().hex[:10]}"
    url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
    async with open_store(url) as store:
        try:
            writer = RequestLogWriter(store.request_log_sink, interval=0.05, retention=3600)
            writer.start()
            now = time.time()
            assert writer.offer([record(now - 7200)]) == 1  # purged by retention
            _until(lambda: writer.written == 1)
            assert writer.offer([record(now + i, user_agent=None) for i in range(300)]) == 300
            _until(lambda: writer.written == 301 and writer.purged >= 1)
            await writer.aclose()
            rows, total = await store.query_request_logs(RequestLogQuery(limit=1))
            assert total == 300 and rows[0]["ts"] == now + 299
            assert rows[0] == log_row(now + 299, user_agent=None)
            assert (writer.failed_batches, writer.lost) == (0, 0)
        finally:
            async with store._connection() as conn:
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
