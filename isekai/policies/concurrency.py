"""The ``concurrency_limit`` family: a bounded number of requests in flight, and an admission
queue with priorities for the next ones (`ConcurrencyLimitConfig`).

A synchronous Python family that stays on the inline path while a slot is free: the request
takes one (``in_flight += 1``) and goes on. When none is free the request waits in the
counter's queue: ``on_request`` returns an awaitable, so `_core` hands this request (only this
one) to the slow path, which awaits it; the awaitable resolves to None when a slot is handed
to it (the request goes on, holding the slot) or to a 503 answer. Each counter (`Counter`) is
per worker, and covers the policy instance (``per: policy``), one route using it
(``per: route``) or one upstream its routes proxy to (``per: upstream``: the request's
``upstream_name``; the direct routes share one counter).

The queue is ordered by priority (higher first), then by arrival (FIFO). A slot that frees
goes to the queue's head, never to a newcomer: while anyone waits, a newcomer queues too. When
the queue is full, the request that would be served last is shed: the newcomer if its priority
is not above the lowest queued one's (``queue_full``), else the last queued request of the
lowest priority, whose awaitable resolves to the 503 (``shed``). A request waiting longer than
``queue_timeout`` is answered 503 (``queue_timeout``). Every 503 carries ``Retry-After``.

Slots are released exactly once. A request holding one carries it in ``req.ctx`` under a key
private to the instance (``(counter, admitted_at)``); ``on_complete`` (which `_core` runs for
every policy the request reached) pops that key and frees the slot, so a 503 of this policy,
which took none, frees nothing. A queued request whose client leaves is cancelled by the slow
path: the waiting coroutine leaves the queue (or, if a slot was handed to it in the meantime,
gives it back). A request cancelled before its Task ever ran is skipped when a slot is handed
out (``req.cancelled``), and its timer removes it.

The limit is ``self.limit``: fixed here; `isekai.policies.adaptive_concurrency` subclasses
`ConcurrencyLimit`, moves it, and samples latencies in `on_sample` (called by ``on_complete``
with the time the request held its slot). ``stats()`` gives the numbers the worker ships as
``extra["throttle"]``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

from isekai._core.policy import Answer
from isekai.config.concurrency_policy import ConcurrencyLimitConfig, Priority

__all__ = ["REASONS", "ConcurrencyLimit", "Counter", "PriorityOf", "build", "retry_after_value"]

REASONS = ("queue_full", "queue_timeout", "shed")  # why a request was answered 503
PRIORITY_MIN = 0
PRIORITY_MAX = 100


def retry_after_value(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, rounded up."""
    return str(max(0, math.ceil(seconds)))


class PriorityOf:
    """A request's priority (0-100): the header's integer, else its consumer tier's, else the
    default (`Priority`); every request 0 without one."""

    def __init__(self, config: Priority | None) -> None:
        self.header = config.header if config is not None else None
        self.tiers = config.tier_map() if config is not None else {}
        self.default = config.default if config is not None else 0

    def __call__(self, req: Any) -> int:
        if self.header is not None:
            raw = req.header(self.header)
            if raw is not None:
                raw = raw.strip()
                if raw.isascii() and raw.isdigit() and len(raw) <= 3 and int(raw) <= PRIORITY_MAX:
                    return int(raw)
        if self.tiers:
            tier = req.ctx.get("consumer_tier")
            if tier is not None:
                found = self.tiers.get(tier)
                if found is not None:
                    return found
        return self.default


class Waiter:
    """One queued request: sorted by (priority descending, arrival)."""

    __slots__ = ("counter", "future", "granted", "order", "priority", "req", "timer")

    def __init__(self, priority: int, seq: int, req: Any, counter: Counter, future: Any) -> None:
        self.priority = priority
        self.order = (-priority, seq)
        self.req = req
        self.counter = counter
        self.future = future
        self.granted = False
        self.timer: asyncio.TimerHandle | None = None


class Counter:
    """Requests in flight and the queue of one counter."""

    __slots__ = ("in_flight", "queue")

    def __init__(self) -> None:
        self.in_flight = 0
        self.queue: list[Waiter] = []  # best first (see `Waiter`)

    def remove(self, waiter: Waiter) -> bool:
        i = bisect.bisect_left(self.queue, waiter.order, key=_order)
        if i < len(self.queue) and self.queue[i] is waiter:
            del self.queue[i]
            return True
        return False


def _order(waiter: Waiter) -> tuple[int, int]:
    return waiter.order


class ConcurrencyLimit:
    """At most ``limit`` requests in flight per counter; the rest queue (see the module)."""

    family = "concurrency_limit"

    def __init__(
        self,
        limit: int,
        *,
        queue: int = 0,
        queue_timeout: float = 1.0,
        per: str = "route",
        retry_after: float = 1.0,
        priority: Priority | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.queue_size = queue
        self.queue_timeout = queue_timeout
        self.per = per
        self.priority_of = PriorityOf(priority)
        self.clock = clock
        self.key = f"concurrency_limit:{id(self)}"  # this instance's slot in req.ctx
        self.counters: dict[str | None, Counter] = {}
        self.rejected = dict.fromkeys(REASONS, 0)
        self._seq = itertools.count()
        header = ((b"retry-after", retry_after_value(retry_after).encode()),)
        self.answers = {
            "queue_full": Answer.error(
                503, "too many requests in flight; retry later", self.family, header
            ),
            "queue_timeout": Answer.error(
                503, "waited too long for a free slot; retry later", self.family, header
            ),
            "shed": Answer.error(
                503, "shed for a request of higher priority; retry later", self.family, header
            ),
        }

    # -- the phases --------------------------------------------------------------------------

    def counter_for(self, req: Any) -> Counter:
        per = self.per
        if per == "route":
            name = req.route_name
        elif per == "upstream":
            name = req.upstream_name
        else:
            name = None
        counter = self.counters.get(name)
        if counter is None:
            counter = self.counters[name] = Counter()
        return counter

    def on_request(self, req: Any) -> Any:
        if self.key in req.ctx:  # listed twice in the chain (listener and route): one slot
            return None
        counter = self.counter_for(req)
        if counter.in_flight < self.limit and not counter.queue:
            self._take(counter, req)
            return None
        if self.queue_size <= 0:
            return self._refuse("queue_full")
        priority = self.priority_of(req)
        if len(counter.queue) >= self.queue_size:
            worst = counter.queue[-1]
            if priority <= worst.priority:
                return self._refuse("queue_full")
            counter.queue.pop()
            self._answer(worst, "shed")
        loop = asyncio.get_running_loop()
        waiter = Waiter(priority, next(self._seq), req, counter, loop.create_future())
        bisect.insort(counter.queue, waiter, key=_order)
        waiter.timer = loop.call_later(self.queue_timeout, self._expire, waiter)
        return self._wait(waiter)

    def on_complete(self, req: Any) -> None:
        held = req.ctx.pop(self.key, None)
        if held is not None:
            counter, admitted_at = held
            self._release(counter)
            self.on_sample(self.clock() - admitted_at)

    def on_sample(self, latency: float) -> None:
        """The time one request held its slot (for subclasses that adapt the limit)."""

    def close(self) -> None:
        # No chain of a new snapshot uses the instance: the requests holding its slots still
        # release them here, admitting those queued, which drain through it as before.
        pass

    # -- admission ---------------------------------------------------------------------------

    async def _wait(self, waiter: Waiter) -> Answer | None:
        try:
            result: Answer | None = await waiter.future
        except asyncio.CancelledError:  # the client left, or the request was answered
            self._abandon(waiter)
            raise
        return result

    def _take(self, counter: Counter, req: Any) -> None:
        counter.in_flight += 1
        req.ctx[self.key] = (counter, self.clock())

    def _release(self, counter: Counter) -> None:
        counter.in_flight -= 1
        self.admit(counter)

    def admit(self, counter: Counter) -> None:
        """Hand free slots to the queue's head (after a release, or when the limit rose)."""
        queue = counter.queue
        while queue and counter.in_flight < self.limit:
            waiter = queue.pop(0)
            if waiter.timer is not None:
                waiter.timer.cancel()
            if waiter.future.done() or getattr(waiter.req, "cancelled", False):
                continue  # gone before its Task ran: nothing will await it
            waiter.granted = True
            self._take(counter, waiter.req)
            waiter.future.set_result(None)

    def admit_all(self) -> None:
        for counter in self.counters.values():
            self.admit(counter)

    def _abandon(self, waiter: Waiter) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        if waiter.granted:  # a slot was handed over but the request went away: give it back
            held = waiter.req.ctx.pop(self.key, None)
            if held is not None:
                self._release(held[0])
        else:
            waiter.counter.remove(waiter)

    def _expire(self, waiter: Waiter) -> None:
        if waiter.counter.remove(waiter):
            self._answer(waiter, "queue_timeout")

    def _answer(self, waiter: Waiter, reason: str) -> None:
        if waiter.timer is not None:
            waiter.timer.cancel()
        self.rejected[reason] += 1
        if not waiter.future.done():
            waiter.future.set_result(self.answers[reason])

    def _refuse(self, reason: str) -> Answer:
        self.rejected[reason] += 1
        return self.answers[reason]

    # -- statistics --------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return sum(counter.in_flight for counter in self.counters.values())

    @property
    def queued(self) -> int:
        return sum(len(counter.queue) for counter in self.counters.values())

    def stats(self) -> dict[str, Any]:
        """JSON-compatible: in flight, queued, the limit, and 503s by reason (`REASONS`)."""
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "limit": self.limit,
            "rejected": dict(self.rejected),
        }

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} limit={self.limit} in_flight={self.in_flight} "
            f"queued={self.queued}>"
        )


def throttle_stats(instances: dict[str, Any]) -> dict[str, Any]:
    """``{policy name: stats}`` of the throttling policies among a worker's policy instances
    (name -> `_core` policy: the Python object is its ``target``)."""
    rows = {}
    for name, policy in instances.items():
        target = getattr(policy, "target", None)
        if isinstance(target, ConcurrencyLimit):
            rows[name] = target.stats()
    return rows


def build(config: ConcurrencyLimitConfig, env: Any = None) -> ConcurrencyLimit:
    """A `ConcurrencyLimit` with ``config.max`` slots per counter."""
    return ConcurrencyLimit(
        config.max,
        queue=config.queue,
        queue_timeout=config.queue_timeout,
        per=config.per,
        retry_after=config.retry_after,
        priority=config.priority,
    )
