"""RequestLogWriter: bounded, batched, never blocking or raising into the request path."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time

import pytest

from isekai.store import RequestLogQuery, RequestLogWriter, StoreError, open_store
from tests.unit.store.store_contract import async_test, log_row


class FakeStore:
    """Records batches; ``fail`` makes the next that many inserts raise."""

    def __init__(self) -> None:
        self.batches: list[list[dict]] = []
        self.purges: list[float] = []
        self.fail = 0
        self.fail_purges = False
        self.hang = False

    async def insert_request_logs(self, rows):
        if self.hang:
            await asyncio.sleep(3600)
        if self.fail:
            self.fail -= 1
            raise StoreError("database is down")
        self.batches.append(list(rows))

    async def purge_request_logs(self, older_than):
        if self.fail_purges:
            raise StoreError("database is down")
        self.purges.append(older_than)
        return 3

    @property
    def rows(self) -> list[dict]:
        return [row for batch in self.batches for row in batch]


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_request_log_writer_offer_is_plain_and_drops_when_full():
    writer = RequestLogWriter(FakeStore(), capacity=3)
    assert not inspect.iscoroutinefunction(writer.offer)
    assert [writer.offer({"i": i}) for i in range(5)] == [True, True, True, False, False]
    assert (writer.dropped, writer.pending) == (2, 3)
    assert writer.offer_many([{"i": 9}]) == 0
    assert writer.dropped == 3


def test_request_log_writer_rejects_bad_settings():
    for kwargs in ({"capacity": 0}, {"batch_size": 0}, {"interval": 0}, {"retention": 0}):
        with pytest.raises(ValueError):
            RequestLogWriter(FakeStore(), **kwargs)


@async_test
async def test_request_log_writer_writes_every_interval():
    store = FakeStore()
    writer = RequestLogWriter(store, interval=0.05)
    await writer.start()
    try:
        assert writer.offer(log_row(1.0))
        await _until(lambda: writer.written == 1)
        assert store.rows == [log_row(1.0)]
    finally:
        await writer.stop()


@async_test
async def test_request_log_writer_writes_a_full_batch_without_waiting_for_the_interval():
    store = FakeStore()
    writer = RequestLogWriter(store, batch_size=3, interval=60)
    await writer.start()
    try:
        assert writer.offer_many([log_row(float(i)) for i in range(2)]) == 2
        await asyncio.sleep(0.1)
        assert writer.written == 0  # no full batch yet: waits for the interval
        assert writer.offer_many([log_row(float(i)) for i in range(2, 7)]) == 5
        await _until(lambda: writer.written == 7, timeout=2)  # woken by the full batch
        assert [len(batch) for batch in store.batches] == [3, 3, 1]
    finally:
        await writer.stop()
    assert [row["ts"] for row in store.rows] == [float(i) for i in range(7)]  # order kept
    assert writer.pending == 0


@async_test
async def test_request_log_writer_flushes_on_stop_then_refuses_rows():
    store = FakeStore()
    writer = RequestLogWriter(store, batch_size=2, interval=60)
    await writer.start()
    writer.offer_many([log_row(float(i)) for i in range(5)])
    await writer.stop()
    assert (writer.written, writer.pending, len(store.rows)) == (5, 0, 5)
    assert writer.offer(log_row(9.0)) is False
    assert writer.dropped == 1
    await writer.stop()  # twice is harmless


@async_test
async def test_request_log_writer_stop_without_start_still_flushes():
    store = FakeStore()
    writer = RequestLogWriter(store, batch_size=2)
    writer.offer_many([log_row(1.0), log_row(2.0), log_row(3.0)])
    await writer.stop()
    assert writer.written == 3 and len(store.batches) == 2


@async_test
async def test_request_log_writer_survives_a_failing_store(caplog):
    store = FakeStore()
    store.fail = 3
    writer = RequestLogWriter(store, batch_size=1, interval=0.02, error_log_interval=60)
    with caplog.at_level(logging.WARNING, logger="isekai.store.request_log_writer"):
        await writer.start()
        try:
            for i in range(3):
                assert writer.offer(log_row(float(i)))  # the caller never sees the errors
                await _until(lambda i=i: writer.failed_batches == i + 1)
            assert writer.offer(log_row(10.0))
            await _until(lambda: writer.written == 1)
        finally:
            await writer.stop()
    assert (writer.failed_batches, writer.lost, writer.written) == (3, 3, 1)
    assert store.rows == [log_row(10.0)]
    warnings = [r for r in caplog.records if "cannot write" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one report for three failures
    assert "database is down" in warnings[0].getMessage()


@async_test
async def test_request_log_writer_stop_gives_up_on_a_hung_store():
    store = FakeStore()
    store.hang = True
    writer = RequestLogWriter(store, batch_size=2, interval=60)
    await writer.start()
    writer.offer_many([log_row(float(i)) for i in range(5)])
    started = time.monotonic()
    await writer.stop(timeout=0.2)
    assert time.monotonic() - started < 2
    assert writer.written == 0 and writer.pending == 0 and writer.lost >= 3


@async_test
async def test_request_log_writer_stop_with_failing_store_discards_the_rest():
    store = FakeStore()
    store.fail = 100
    writer = RequestLogWriter(store, batch_size=2, interval=60)
    writer.offer_many([log_row(float(i)) for i in range(5)])
    await writer.stop()
    assert (writer.failed_batches, writer.lost, writer.pending) == (1, 5, 0)


@async_test
async def test_request_log_writer_purges_with_retention():
    store = FakeStore()
    writer = RequestLogWriter(store, interval=0.02, retention=3600, purge_interval=0.05)
    await writer.start()
    try:
        await _until(lambda: len(store.purges) >= 2)
        store.fail_purges = True
        await _until(lambda: writer.failed_purges >= 1)
    finally:
        await writer.stop()
    assert abs(store.purges[0] - (time.time() - 3600)) < 5
    assert writer.purged == 3 * len(store.purges)


@async_test
async def test_request_log_writer_without_retention_never_purges():
    store = FakeStore()
    writer = RequestLogWriter(store, interval=0.01, purge_interval=0.01)
    await writer.start()
    await asyncio.sleep(0.1)
    await writer.stop()
    assert store.purges == []


@async_test
async def test_request_log_writer_into_a_sqlite_store(tmp_path):
    async with open_store(f"sqlite:///{tmp_path / 'logs.db'}") as store:
        writer = RequestLogWriter(store, capacity=5000, batch_size=500, interval=0.05)
        await writer.start()
        accepted = writer.offer_many([log_row(1000.0 + i) for i in range(1200)])
        await writer.stop()
        assert accepted == 1200 and writer.written == 1200
        rows, total = await store.query_request_logs(RequestLogQuery(limit=1))
        assert total == 1200 and rows[0]["ts"] == 2199.0
