"""Requests per consumer: the ``isekai_consumer_requests_total{consumer, route, status_class}``
counter.

A route whose chain holds a credential policy (a family whose settings have
``upstream_headers``, as every credential family's do) gets one more element at its start,
the worker's `ConsumerTally` (first, so that a request a policy refused is counted too); its
``on_complete`` counts the finished request under the consumer
`isekai.policies.identity.identify` put in ``req.ctx``. Routes without a credential policy
never run it, so they pay nothing.

The label set is bounded: ``consumer`` is the name of a configured consumer (the worker's
`ConsumerDirectory`) or ``""`` (anonymous, or an identity that is not a configured consumer,
such as a JWT subject without a consumer of that name), never a string a client chose;
``route`` is a configured route's name; past `MAX_SERIES` label sets in a worker, new ones
are counted under ``consumer="_other", route="_other"``. The worker ships
`ConsumerTally.stats` with its statistics (provider ``consumers``);
`isekai.observability.metrics` sums the workers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_SERIES", "OTHER", "ConsumerTally", "identifies"]

MAX_SERIES = 10_000  # label sets one worker keeps apart
OTHER = "_other"
# `req.label_values` sources: ctx "consumer", the route's name, the status class
_SOURCES = ((2, "consumer"), (3, None), (6, None))


def identifies(spec: Any) -> bool:
    """Whether a configured policy is a credential policy (its settings name the identity
    headers it sends upstream)."""
    return hasattr(getattr(spec, "options", None), "upstream_headers")


class ConsumerTally:
    """The per-consumer request counts of one worker (see the module's text)."""

    def __init__(self, directory: Any) -> None:
        self.directory = directory
        self.counts: dict[tuple[str, str, str], int] = {}
        self._last: Any = None  # the request counted last (a listener and a route chain)

    def on_complete(self, req: Any) -> None:
        if req is self._last:  # both its listener's and its route's chain hold a tally
            return
        self._last = req
        consumer, route, status_class = req.label_values(_SOURCES)
        if consumer and self.directory.get(consumer) is None:
            consumer = ""
        key = (consumer, route, status_class)
        counts = self.counts
        if key not in counts and len(counts) >= MAX_SERIES:
            key = (OTHER, OTHER, status_class)
        counts[key] = counts.get(key, 0) + 1

    def stats(self) -> list[list[Any]]:
        """``[[consumer, route, status_class, count], ...]`` (JSON-compatible)."""
        return [[*key, count] for key, count in self.counts.items()]
