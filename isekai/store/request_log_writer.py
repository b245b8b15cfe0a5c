"""Request logs leave the request path through a bounded queue and are written by a thread.

``offer(records)`` is what the loop calls, with the list of `_core` records it took from the
worker's buffer (one call per hand-over, not per request): it appends the list and returns,
never blocking on the database and never raising; records past ``capacity`` are dropped and
counted in ``dropped`` (a degraded mode that costs nothing, rather than memory growth or a
blocked loop). A thread of its own takes everything queued, every ``interval`` seconds or as
soon as ``batch_size`` records wait, and hands it to a sink (`log_sinks`) in one transaction:
the records go to the database as `_core` made them, with no Python object per record kept. A
batch the database rejects is discarded: counted in ``failed_batches`` (its records in
``lost``) and logged at most once per ``error_log_interval`` seconds, so an outage neither
floods the log nor stalls the gateway. With ``retention`` set, rows older than that many seconds
are purged about once per ``purge_interval``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from isekai.store.log_sinks import RequestLogSink

__all__ = ["RequestLogWriter"]

logger = logging.getLogger("isekai.store.request_log_writer")


class RequestLogWriter:
    """Writes `_core` records through ``sink`` (made in the thread by ``sink_factory``).

    Counters: ``written`` records stored, ``dropped`` records refused because the queue was
    full (or the writer stopped), ``failed_batches`` batches the database rejected and ``lost``
    their records, ``purged`` rows deleted by retention, ``failed_purges``.
    """

    def __init__(
        self,
        sink_factory: Callable[[], RequestLogSink],
        *,
        capacity: int = 10000,
        batch_size: int = 1000,
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
        self.sink_factory = sink_factory
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
        self._lists: list[list[tuple]] = []
        self._pending = 0
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._accepting = True
        self._stopping = False
        self._last_error_log = float("-inf")
        self._unlogged_errors = 0

    @property
    def pending(self) -> int:
        """Records queued and not yet taken by the thread."""
        return self._pending

    def offer(self, records: list[tuple]) -> int:
        """Queue ``records`` (kept, not copied) as far as room allows; return how many."""
        count = len(records)
        if not count:
            return 0
        with self._cond:
            room = self.capacity - self._pending if self._accepting else 0
            if room <= 0:
                self.dropped += count
                return 0
            if count > room:
                self.dropped += count - room
                records = records[:room]
                count = room
            self._lists.append(records)
            self._pending += count
            if self._pending >= self.batch_size:
                self._cond.notify()
        return count

    def start(self) -> None:
        """Start the writer thread (records offered before are written too)."""
        if self._thread is not None:
            return
        self._accepting = True
        self._stopping = False
        self._thread = threading.Thread(
            target=self._run, name="isekai-request-log-writer", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, write what is queued and end the thread, waiting up to ``timeout``
        seconds (records still queued then count as ``lost``). Blocks: see `aclose`."""
        with self._cond:
            self._accepting = False
            self._stopping = True
            self._cond.notify()
        thread, self._thread = self._thread, None
        if thread is None:
            self._run()  # never started: flush here
            return
        thread.join(timeout)
        if thread.is_alive():
            with self._cond:
                self._discard("the writer did not finish in time")

    async def aclose(self, timeout: float = 10.0) -> None:
        """`stop` without blocking the event loop."""
        await asyncio.to_thread(self.stop, timeout)

    def _take(self) -> list[tuple] | None:
        """Wait for work; the queued records, or None when stopping with nothing left."""
        with self._cond:
            if not self._stopping and self._pending < self.batch_size:
                self._cond.wait(self.interval)
            if not self._lists:
                return None if self._stopping else []
            lists, self._lists = self._lists, []
            self._pending = 0
        if len(lists) == 1:
            return lists[0]
        return list(itertools.chain.from_iterable(lists))

    def _run(self) -> None:
        sink = None
        next_purge = time.monotonic()
        try:
            sink = self.sink_factory()
            while True:
                records = self._take()
                if records is None:
                    break
                if records:
                    self._write(sink, records)
                if self.retention is not None and time.monotonic() >= next_purge:
                    self._purge(sink)
                    next_purge = time.monotonic() + self.purge_interval
        except Exception as exc:  # the sink cannot even be made: nothing can be written
            self._log_error("request logs cannot be written: %s", exc)
            with self._cond:
                self._accepting = False
                self._discard("the writer failed")
        finally:
            if sink is not None:
                try:
                    sink.close()
                except Exception as exc:
                    logger.debug("closing the request-log sink: %s", exc)

    def _write(self, sink: RequestLogSink, records: list[tuple]) -> None:
        try:
            sink.write(records)
        except Exception as exc:
            self.failed_batches += 1
            self.lost += len(records)
            self._log_error("cannot write %d request logs: %s", len(records), exc)
            return
        self.written += len(records)

    def _purge(self, sink: RequestLogSink) -> None:
        assert self.retention is not None
        try:
            self.purged += sink.purge(time.time() - self.retention)
        except Exception as exc:
            self.failed_purges += 1
            self._log_error("cannot purge old request logs: %s", exc)

    def _discard(self, why: str) -> None:
        """Drop what is queued (the caller holds the lock)."""
        if self._pending:
            count = self._pending
            self._lists = []
            self._pending = 0
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
