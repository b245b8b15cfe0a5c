"""Worker load shedding: measure the event loop's lag, and refuse new requests while it is late.

A worker whose loop is saturated (CPU-bound policies, a burst larger than it can parse) serves
every request late; queueing more only makes each later. `LoopLagMonitor` runs one timer on the
worker's loop every `INTERVAL` (50 ms: one callback, a clock read and a comparison, so about
20 wake-ups a second) and measures how late it fires. When the lag passes
``limits.max_loop_lag`` it sets the `_core` flag ``ServerState.shedding``: while it is set,
`_core` answers every new request, at head complete and before routing or any policy, 503 with
``Retry-After: limits.shed_retry_after`` and counts it (``ServerState.shed``); requests already
admitted go on. The first tick back within the limit (one interval on time) clears the flag.
The request path pays one flag check. Each start and stop of shedding is logged once.

``max_loop_lag: 0`` (the default) turns it off: no timer runs and the flag stays clear.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

__all__ = ["INTERVAL", "LoopLagMonitor"]

log = logging.getLogger("isekai.worker")

INTERVAL = 0.05  # seconds between two lag measurements


class LoopLagMonitor:
    """Measures the lag of ``loop`` and sets ``state.shedding`` (a `_core` ``ServerState``)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, state: Any, interval: float = INTERVAL
    ) -> None:
        self.loop = loop
        self.state = state
        self.interval = interval
        self.max_lag = 0.0
        self.lag = 0.0  # seconds, the last measured
        self.episodes = 0  # times shedding started
        self.running = False  # between `start` and `stop`
        self._expected = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def configure(self, max_lag: float, retry_after: float) -> None:
        """Apply ``limits.max_loop_lag`` and ``limits.shed_retry_after`` (every snapshot)."""
        value = max(0, math.ceil(retry_after))
        self.state.shed_header = f"retry-after: {value}\r\n".encode()
        self.max_lag = max_lag
        if self.running:
            self._follow()

    def start(self) -> None:
        """Measure from now on (when ``max_loop_lag`` is above 0)."""
        self.running = True
        self._follow()

    def _follow(self) -> None:
        if self.max_lag > 0:
            if self._timer is None:
                self._schedule()
        else:
            self._halt()

    def _schedule(self) -> None:
        self._expected = self.loop.time() + self.interval
        self._timer = self.loop.call_at(self._expected, self._tick)

    def _tick(self) -> None:
        self.lag = lag = max(0.0, self.loop.time() - self._expected)
        state = self.state
        if lag > self.max_lag:
            if not state.shedding:
                state.shedding = True
                self.episodes += 1
                log.warning(
                    "event loop %.0f ms late (limits.max_loop_lag %.0f ms): shedding new "
                    "requests with 503",
                    lag * 1000,
                    self.max_lag * 1000,
                )
        elif state.shedding:
            state.shedding = False
            log.warning("event loop on time again: shedding stopped (%d shed so far)", state.shed)
        self._schedule()

    def stop(self) -> None:
        """Stop measuring for good (the worker stops); shedding ends."""
        self.running = False
        self._halt()

    def _halt(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.state.shedding:
            self.state.shedding = False
            log.warning("shedding stopped")
        self.lag = 0.0

    def stats(self) -> dict[str, Any]:
        return {"load_shed": self.state.shed, "loop_lag": self.lag, "episodes": self.episodes}
