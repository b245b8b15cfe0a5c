"""Request logs leave the request path through a bounded queue and are written in batches.

``offer()`` is what the request path calls: it appends to a deque and returns, never awaiting
and never raising; when the queue is full the row is dropped and ``dropped`` counts it (a
degraded mode that costs nothing, rather than memory growth or a blocked loop). A background
task writes up to ``batch_size`` rows per ``insert_request_logs`` call, every ``interval``
seconds or as soon as a full batch is waiting. A batch the store rejects is discarded: it is
counted in ``failed_batches`` (its rows in ``lost``) and logged at most once per
``error_log_interval`` seconds, so an outage neither floods the log nor stalls the gateway.
With ``retention`` set, rows older than that many seconds are purged about once a minute.

All methods are called from the event loop thread that ran ``start()``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from isekai.store.base import Store

__all__ = ["RequestLogWriter"]

logger = logging.getLogger("isekai.store.request_log_writer")


class RequestLogWriter:
    """Batches request-log rows into ``store``; see the module docstring.

    Counters: ``written`` rows stored, ``dropped`` rows refused because the queue was full
    (or the writer stopped), ``failed_batches`` batches the store rejected and ``lost`` their
    rows, ``purged`` rows deleted by retention, ``failed_purges``.
    """

    def __init__(
        self,
        store: Store,
        *,
        capacity: int = 10000,
        batch_size: int = 500,
        interval: float = 0.5,
        retention: float | None = None,
        purge_interval: float = 60.0,
        error_log_interval: float = 30.0,
    ) -> None:
        if capacity < 1 or batch_size < 1:
            raise ValueError("capacity and batch_size must be at least 1")
        if interval <= 0 or purge_interval <= 0:
            raise ValueError("interval and purge_interval must be positive")
        if retention is not None and retention <= 0:
            raise ValueError("retention must be positive (or None to keep logs forever)")
        self.store = store
        self.capacity = capacity
        self.batch_size = batch_size
        self.interval = interval
        self.retention = retention
        self.purge_interval = purge_interval
        self.error_log_interval = error_log_interval
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        self.lost = 0
        self.purged = 0
        self.failed_purges = 0
        self._queue: collections.deque[dict[str, Any]] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._accepting = True
        self._stopping = False
        self._last_error_log = float("-inf")
        self._unlogged_errors = 0

    @property
    def pending(self) -> int:
        """Rows queued and not yet written."""
        return len(self._queue)

    def offer(self, row: dict[str, Any]) -> bool:
        """Queue one row; ``False`` (and ``dropped`` + 1) if the queue is full or stopped."""
        queue = self._queue
        if not self._accepting or len(queue) >= self.capacity:
            self.dropped += 1
            return False
        queue.append(row)
        if len(queue) >= self.batch_size and self._wake is not None:
            self._wake.set()
        return True

    def offer_many(self, rows: Iterable[dict[str, Any]]) -> int:
        """Queue rows in order until the queue is full; return how many were accepted."""
        return sum(self.offer(row) for row in rows)

    async def start(self) -> None:
        """Start the background writer (rows offered before are written too)."""
        if self._task is not None:
            return
        self._accepting = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="isekai-request-log-writer")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting rows, write what is queued, and end the background task.

        Gives up after ``timeout`` seconds (rows still queued then count as ``lost``).
        """
        self._accepting = False
        task = self._task
        if task is None:
            await self._drain_on_stop()
            return
        self._stopping = True
        assert self._wake is not None
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self._discard_queue("the writer did not finish in time")
        finally:
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        wake = self._wake
        assert wake is not None
        next_purge = loop.time()
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            wake.clear()
            await self._flush()
            if self.retention is not None and loop.time() >= next_purge:
                await self._purge()
                next_purge = loop.time() + self.purge_interval
        await self._drain_on_stop()

    async def _drain_on_stop(self) -> None:
        while self._queue:
            if not await self._flush():
                self._discard_queue("the store failed while stopping")

    async def _flush(self) -> bool:
        """Write queued rows batch by batch; stop at the first failure (``False``)."""
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(self.batch_size, len(queue)))]
            try:
                await self.store.insert_request_logs(batch)
            except Exception as exc:
                self.failed_batches += 1
                self.lost += len(batch)
                self._log_error("cannot write %d request logs: %s", len(batch), exc)
                return False
            self.written += len(batch)
        return True

    async def _purge(self) -> None:
        assert self.retention is not None
        try:
            self.purged += await self.store.purge_request_logs(time.time() - self.retention)
        except Exception as exc:
            self.failed_purges += 1
            self._log_error("cannot purge old request logs: %s", exc)

    def _discard_queue(self, why: str) -> None:
        if self._queue:
            count = len(self._queue)
            self._queue.clear()
            self.lost += count
            logger.warning("%d request logs were not written: %s", count, why)

    def _log_error(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_error_log < self.error_log_interval:
            self._unlogged_errors += 1
            return
        if self._unlogged_errors:
            message += " (and %d more errors since the last report)"
            args = (*args, self._unlogged_errors)
        self._last_error_log = now
        self._unlogged_errors = 0
        logger.warning(message, *args)
