"""The ``fault`` family: inject aborts and delays for testing (`FaultConfig`).

A Python family (it is for tests and drills, not the hot path). With a delay its request phase
is a coroutine (the slow path: one Task per affected route's request); abort-only stays
synchronous. Counters live on the instance, which the gateway keeps across reloads while the
config is unchanged: ``requests_seen``, ``delayed``, ``aborted``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from isekai._core.policy import Answer


def sampled(percent: float, draw: Callable[[], float]) -> bool:
    """True for `percent` % of draws (`draw()` uniform in [0, 1)): never at 0, always at 100."""
    return percent > 0 and (percent >= 100 or draw() * 100.0 < percent)


def abort_answer(status: int) -> Answer:
    return Answer.error(status, "fault injected", "fault")


class FaultAbort:
    """Abort only: answer `status` for `percent` % of the requests (carrying `when_header`)."""

    def __init__(
        self,
        status: int,
        percent: float = 100.0,
        when_header: str | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.status = status
        self.abort_percent = percent
        self.when_header = when_header
        self.draw = draw
        self.answer = abort_answer(status)
        self.requests_seen = 0
        self.aborted = 0
        self.delayed = 0

    def applies(self, req: Any) -> bool:
        """Whether this request is one faults may hit (`when_header` present, or no header)."""
        return self.when_header is None or req.header(self.when_header) is not None

    def on_request(self, req: Any) -> Answer | None:
        self.requests_seen += 1
        if self.applies(req) and sampled(self.abort_percent, self.draw):
            self.aborted += 1
            return self.answer
        return None

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} seen={self.requests_seen} aborted={self.aborted}"
            f" delayed={self.delayed}>"
        )


class FaultDelay(FaultAbort):
    """Delay (`duration` s for `delay_percent` %), then maybe abort (`status` for `percent` %;
    no abort when `status` is None). The request phase is a coroutine."""

    def __init__(
        self,
        duration: float,
        delay_percent: float = 100.0,
        status: int | None = None,
        percent: float = 0.0,
        when_header: str | None = None,
        draw: Callable[[], float] = random.random,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        super().__init__(status or 500, percent if status else 0.0, when_header, draw)
        self.status = status
        self.duration = duration
        self.delay_percent = delay_percent
        self.sleep = sleep

    async def on_request(self, req: Any) -> Answer | None:  # type: ignore[override]
        self.requests_seen += 1
        if not self.applies(req):
            return None
        if sampled(self.delay_percent, self.draw):
            self.delayed += 1
            await self.sleep(self.duration)
        if self.status is not None and sampled(self.abort_percent, self.draw):
            self.aborted += 1
            return self.answer
        return None


def build(config: Any, env: Any = None) -> FaultAbort:
    """A `FaultAbort` (abort only, synchronous) or `FaultDelay` (delay, maybe abort; async)."""
    abort, delay = config.abort, config.delay
    if delay is None:
        if abort is None:
            raise ValueError("a fault policy needs 'abort' or 'delay'")
        return FaultAbort(abort.status, abort.percent, config.when_header)
    return FaultDelay(
        delay.duration,
        delay.percent,
        abort.status if abort is not None else None,
        abort.percent if abort is not None else 0.0,
        config.when_header,
    )
