"""Moves a worker's log records from `_core` to the request-log and access-log writers.

`_core` appends one tuple per finished request to a bounded list on `ServerState` when either
log is on (dropping and counting past its capacity); every `FEED_INTERVAL` this feed takes the
list and hands the same list to both writers, each a thread of its own (`RequestLogWriter`,
`AccessLog`). Nothing here runs per request, and nothing here waits on a disk or a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from isekai._core.protocol import ServerState
from isekai.config.schema import Config
from isekai.observability.access_log import AccessLog, header_names
from isekai.store import RequestLogWriter, Store
from isekai.store.log_sinks import LoopSink

__all__ = ["FEED_INTERVAL", "LogFeed"]

log = logging.getLogger("isekai.request_log")

FEED_INTERVAL = 0.5  # seconds between two hand-overs from `_core` to the writers


class LogFeed:
    """Feeds `state`'s records to the request log (when ``store`` is given and the admin API
    keeps request logs) and to the access log (when on); `start()` / `stop()` on the loop.

    ``purge``: this process deletes request logs past their retention (one process does).
    ``close_store``: `stop()` closes ``store`` too (a worker's own connection).
    """

    def __init__(
        self,
        state: ServerState,
        config: Config,
        store: Store | None,
        *,
        purge: bool,
        close_store: bool = False,
    ) -> None:
        self.state = state
        self.store = store if close_store else None
        settings = config.admin.request_logs
        self.request_log: RequestLogWriter | None = None
        if store is not None and config.admin.enabled and settings.enabled:
            sink = store.request_log_sink() or LoopSink(store, asyncio.get_running_loop())
            self.request_log = RequestLogWriter(
                lambda: sink,
                capacity=settings.queue_size,
                retention=settings.retention if purge else None,
            )
        access = config.observability.access_log
        self.access_log = AccessLog(access) if access.enabled else None
        if self.access_log is not None:
            self.access_log.hide_credential_params(config)
        self._access = access
        self._taken = 0  # `state.access_kept` at the last hand-over
        self._task: asyncio.Task | None = None

    @property
    def enabled(self) -> bool:
        return self.request_log is not None or self.access_log is not None

    async def start(self) -> None:
        state = self.state
        capacities = [1]
        if self.request_log is not None:
            self.request_log.start()
            capacities.append(self.request_log.capacity)
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.start)
            capacities.append(self.access_log.capacity)
            state.log_headers = header_names(self._access)
            state.access_sample = self._access.sample
        state.log_capacity = max(capacities)
        self._taken = state.access_kept
        state.log_requests = self.request_log is not None
        state.access_log = self.access_log is not None
        self._task = asyncio.ensure_future(self._run())

    def reopen(self) -> None:
        """SIGUSR1: the access log opens its file again."""
        if self.access_log is not None:
            self.access_log.reopen()

    def _hand_over(self) -> None:
        state = self.state
        records = state.take_request_log()
        kept, self._taken = state.access_kept - self._taken, state.access_kept
        if not records:
            return
        if self.request_log is not None:
            self.request_log.offer(records)
        if self.access_log is not None:
            self.access_log.offer(records, kept)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FEED_INTERVAL)
            self._hand_over()

    def stats(self) -> dict[str, Any]:
        """Cumulative counts of this worker (`Worker.stats_providers["logs"]`)."""
        state = self.state
        out: dict[str, Any] = {}
        if self.access_log is not None:
            out["access_log"] = self.access_log.stats(state.access_dropped)
        else:
            out["access_log"] = {"written": 0, "dropped": 0}
        writer = self.request_log
        out["request_log"] = {
            "written": writer.written if writer is not None else 0,
            "dropped": state.log_dropped + (writer.dropped + writer.lost if writer else 0),
        }
        return out

    async def stop(self) -> None:
        """Stop collecting, hand over what is buffered and let the writers flush it."""
        state = self.state
        state.log_requests = False
        state.access_log = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._hand_over()
        if self.request_log is not None:
            await self.request_log.aclose()
            dropped = state.log_dropped + self.request_log.dropped + self.request_log.lost
            if dropped:
                log.warning(
                    "request log: %d records dropped (queues full or store failed)", dropped
                )
        if self.access_log is not None:
            await asyncio.to_thread(self.access_log.stop)
            counts = self.access_log.stats(state.access_dropped)
            log.info(
                "access log: %d lines written, %d dropped", counts["written"], counts["dropped"]
            )
        if self.store is not None:
            await self.store.close()
