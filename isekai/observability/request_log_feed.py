"""Moves request-log records from a worker's `_core` buffer to the store's batched writer.

`_core` appends one tuple per finished request to a bounded list on `ServerState` (dropping and
counting past `request_logs.queue_size`); every `interval` this feed takes the list, turns the
tuples into rows and offers them to a `RequestLogWriter`, which writes batches off the request
path. Nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from isekai._core.protocol import ServerState
from isekai.config.schema import RequestLogs
from isekai.store import RequestLogWriter, Store
from isekai.store.base import LOG_KEYS

log = logging.getLogger("isekai.request_log")

FEED_INTERVAL = 0.5  # seconds between two hand-overs from `_core` to the writer


def _text(value: object) -> object:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def to_row(record: tuple) -> dict:
    """One `_core` record as a store row (bytes fields decoded). `_core` builds its records in
    ``LOG_KEYS`` order, the one list of request-log fields."""
    return {field: _text(value) for field, value in zip(LOG_KEYS, record, strict=True)}


class RequestLogFeed:
    """Feeds `state`'s request-log buffer into `store`; `start()` / `stop()` on the loop."""

    def __init__(
        self, state: ServerState, store: Store, settings: RequestLogs, *, purge: bool
    ) -> None:
        self.state = state
        self.writer = RequestLogWriter(
            store,
            capacity=settings.queue_size,
            retention=settings.retention if purge else None,
        )
        self._task: asyncio.Task | None = None
        state.log_capacity = settings.queue_size

    @property
    def dropped(self) -> int:
        """Records lost because a queue was full (in `_core` or in the writer)."""
        return self.state.log_dropped + self.writer.dropped

    async def start(self) -> None:
        await self.writer.start()
        self.state.log_requests = True
        self._task = asyncio.ensure_future(self._run())

    def _hand_over(self) -> None:
        records = self.state.take_request_log()
        if records:
            self.writer.offer_many(to_row(record) for record in records)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FEED_INTERVAL)
            self._hand_over()

    async def stop(self) -> None:
        """Stop collecting, hand over what is buffered and let the writer flush it."""
        self.state.log_requests = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._hand_over()
        await self.writer.stop()
        if self.dropped:
            log.warning("request log: %d records dropped (queues full)", self.dropped)
