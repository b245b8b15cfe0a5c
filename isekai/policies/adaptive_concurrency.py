"""The ``adaptive_concurrency`` family: a concurrency limit that follows latency
(`AdaptiveConcurrencyConfig`), as Envoy's adaptive concurrency filter (gradient controller).

Admission, the queue, priorities and the 503s are `ConcurrencyLimit`'s; only the limit moves.
Every completed request that held a slot gives one latency sample (the time it held the slot,
from admission to its last byte: queueing time is not the upstream's). The controller works in
two phases:

- *Measuring the minimum latency* (at start, then every ``min_rtt_interval``): the limit is
  pinned to ``min_limit`` until ``min_rtt_requests`` samples are in; their ``percentile``-th
  latency becomes the baseline ``min_rtt``, and the limit returns to what it was before
  (``initial_limit`` at start).
- *Sampling*: at most every ``sample_interval`` the samples gathered since the last update give
  ``sample_rtt`` (their ``percentile``-th latency) and::

      gradient  = clamp(min_rtt * (1 + buffer) / sample_rtt, 0.5, 2.0)
      new_limit = clamp(gradient * limit + sqrt(gradient * limit), min_limit, max_limit)

  Latency at the baseline (within ``buffer``) keeps a gradient of about 1 and the square-root
  headroom lets the limit grow; latency above it shrinks the limit (at most halving it per
  update); latency below doubles it at most.

Updates are made when a sample arrives (``record(latency, now)``), not by a timer: an idle
policy costs nothing and keeps its limit. When the limit rises, queued requests are admitted.
The samples of one interval are bounded (`MAX_SAMPLES`); the rest of the interval's are
dropped (a baseline of more ``min_rtt_requests`` than that still ends after that many; its
percentile is taken over the first `MAX_SAMPLES`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from isekai.config.concurrency_policy import AdaptiveConcurrencyConfig, Priority
from isekai.policies.concurrency import ConcurrencyLimit

__all__ = ["MAX_SAMPLES", "AdaptiveConcurrency", "build", "percentile"]

MAX_SAMPLES = 10_000  # latency samples kept per interval
GRADIENT_MIN = 0.5
GRADIENT_MAX = 2.0


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class AdaptiveConcurrency(ConcurrencyLimit):
    """A `ConcurrencyLimit` whose limit a gradient controller moves (see the module)."""

    family = "adaptive_concurrency"

    def __init__(
        self,
        *,
        min_limit: int = 3,
        max_limit: int = 1000,
        initial_limit: int | None = None,
        sample_interval: float = 0.1,
        percentile: float = 90.0,
        min_rtt_interval: float = 30.0,
        min_rtt_requests: int = 50,
        buffer: float = 0.1,
        queue: int = 0,
        queue_timeout: float = 1.0,
        per: str = "route",
        retry_after: float = 1.0,
        priority: Priority | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            min_limit,
            queue=queue,
            queue_timeout=queue_timeout,
            per=per,
            retry_after=retry_after,
            priority=priority,
            clock=clock,
        )
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.sample_interval = sample_interval
        self.percentile = percentile
        self.min_rtt_interval = min_rtt_interval
        self.min_rtt_requests = min_rtt_requests
        self.buffer = buffer
        self.exact_limit = float(initial_limit or min_limit)  # the controller's value
        self.min_rtt: float | None = None  # seconds; None until first measured
        self.sample_rtt: float | None = None  # the last interval's
        self.measuring = True
        self.samples: list[float] = []
        self.measured = 0  # samples seen while measuring (may be more than those kept)
        now = clock()
        self.next_update = now + sample_interval
        self.next_min_rtt = now  # measuring from the start

    def on_sample(self, latency: float) -> None:
        self.record(latency, self.clock())

    def record(self, latency: float, now: float) -> None:
        """One latency sample (seconds) taken at ``now``; updates the limit when due."""
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(latency)
        if self.measuring:
            self.measured += 1
            if self.measured >= self.min_rtt_requests:
                self.min_rtt = percentile(self.samples, self.percentile)
                self.samples = []
                self.measuring = False
                self.next_min_rtt = now + self.min_rtt_interval
                self.next_update = now + self.sample_interval
                self._set_limit(self.exact_limit)
            return
        if now >= self.next_update:
            self.update(now)

    def update(self, now: float) -> None:
        """Recompute the limit from the samples since the last update (the gradient)."""
        self.next_update = now + self.sample_interval
        if self.samples and self.min_rtt is not None:
            sample_rtt = self.sample_rtt = percentile(self.samples, self.percentile)
            self.samples = []
            target = self.min_rtt * (1.0 + self.buffer)
            gradient = GRADIENT_MAX if sample_rtt <= 0 else target / sample_rtt
            gradient = min(GRADIENT_MAX, max(GRADIENT_MIN, gradient))
            scaled = gradient * self.exact_limit
            limit = scaled + math.sqrt(scaled)
            self.exact_limit = min(float(self.max_limit), max(float(self.min_limit), limit))
            self._set_limit(self.exact_limit)
        if now >= self.next_min_rtt:
            # re-measure the baseline: pinned to min_limit until enough samples are in
            self.measuring = True
            self.measured = 0
            self.samples = []
            self.limit = self.min_limit

    def _set_limit(self, value: float) -> None:
        old, self.limit = self.limit, max(1, int(value))
        if self.limit > old:
            self.admit_all()

    def stats(self) -> dict[str, Any]:
        row = super().stats()
        row["min_rtt"] = self.min_rtt
        row["sample_rtt"] = self.sample_rtt
        return row


def build(config: AdaptiveConcurrencyConfig, env: Any = None) -> AdaptiveConcurrency:
    """An `AdaptiveConcurrency` from its config."""
    return AdaptiveConcurrency(
        min_limit=config.min_limit,
        max_limit=config.max_limit,
        initial_limit=config.initial_limit,
        sample_interval=config.sample_interval,
        percentile=config.percentile,
        min_rtt_interval=config.min_rtt_interval,
        min_rtt_requests=config.min_rtt_requests,
        buffer=config.buffer,
        queue=config.queue,
        queue_timeout=config.queue_timeout,
        per=config.per,
        retry_after=config.retry_after,
        priority=config.priority,
    )
