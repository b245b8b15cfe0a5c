"""The ``metrics`` family: custom counters and histograms of the requests (`MetricsConfig`).

A Python family with only a completion phase: after the last byte, the label values of all
its metrics (a header, a path parameter, a ``ctx`` value, the route, method or status) are
read in one `_core` call (`ProxyRequest.label_values`), and each metric adds to its series.
Only routes listing the policy pay for it.

The series live in a `CustomMetrics` registry, one per process (`REGISTRY`; a worker is a
process), not in the policy: a policy instance is rebuilt whenever its config changes, and a
metric whose definition did not change keeps counting in the same series. A metric stays in
the registry while a policy instance declares it (reference-counted by its definition);
``isekai.observability.custom_metrics`` reads the registry (`CustomMetrics.metrics`), ships
it with the worker's statistics, sums workers and exposes the result to Prometheus.

Each metric holds at most ``max_series`` label sets; a new one past the cap is counted under
the label set whose every value is ``"_other"``.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Iterator
from typing import Any

from isekai._core.protocol import ProxyRequest
from isekai.config.metrics_policy import (
    CustomCounter,
    CustomHistogram,
    MetricsConfig,
    family_name,
    parse_label_source,
)

__all__ = ["OTHER", "REGISTRY", "CustomMetrics", "MetricsPolicy", "Series", "build", "label_source"]

OTHER = "_other"
_KINDS = {kind: code for code, kind in enumerate(ProxyRequest.LABEL_SOURCES)}


def label_source(source: str) -> tuple[int, Any]:
    """A label source as `ProxyRequest.label_values` takes it: ``(kind, argument)``."""
    kind, argument = parse_label_source(source)
    if kind == "header":
        return _KINDS[kind], argument.encode("latin-1")  # lower-case already
    return _KINDS[kind], argument


_VALUES: dict[str, Callable[[Any], float] | None] = {
    "requests": None,  # 1 per request
    "request_bytes": operator.attrgetter("request_bytes"),
    "response_bytes": operator.attrgetter("response_bytes"),
    "duration": operator.attrgetter("elapsed"),
}


def _picker(positions: list[int]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    # the label values of one metric out of those of the whole policy, as a tuple
    if len(positions) == 1:
        return operator.itemgetter(slice(positions[0], positions[0] + 1))
    if not positions:
        return operator.itemgetter(slice(0, 0))
    return operator.itemgetter(*positions)


class Series:
    """One metric's numbers: label values (a tuple) -> a counter's total, or a histogram's
    per-bucket counts (``len(bounds) + 1``, the last for ``+Inf``) followed by the sum."""

    __slots__ = (
        "bounds",
        "definition",
        "family",
        "kind",
        "labels",
        "max_series",
        "other",
        "values",
    )

    def __init__(self, definition: CustomCounter | CustomHistogram) -> None:
        self.definition = definition
        self.kind = definition.kind
        self.family = family_name(definition)
        self.labels = tuple(name for name, _ in definition.labels)
        self.bounds: tuple[float, ...] = getattr(definition, "buckets", ()) or ()
        self.max_series = definition.max_series
        self.other = (OTHER,) * len(self.labels)
        self.values: dict[tuple[str, ...], Any] = {}

    def _key(self, key: tuple[str, ...]) -> tuple[str, ...]:
        # past the cap, a label set not seen yet is counted as all "_other"
        if key in self.values or len(self.values) < self.max_series:
            return key
        return self.other

    def add(self, key: tuple[str, ...], amount: float) -> None:
        values = self.values
        if key not in values:
            key = self._key(key)
        values[key] = values.get(key, 0) + amount

    def observe(self, key: tuple[str, ...], value: float) -> None:
        values = self.values
        counts = values.get(key)
        if counts is None:
            key = self._key(key)
            counts = values.get(key)
            if counts is None:
                counts = values[key] = [0] * (len(self.bounds) + 1) + [0.0]
        counts[bisect.bisect_left(self.bounds, value)] += 1
        counts[-1] += value


class CustomMetrics:
    """The custom metrics of one process: a `Series` per metric definition in use."""

    def __init__(self) -> None:
        self._series: dict[CustomCounter | CustomHistogram, Series] = {}
        self._users: dict[CustomCounter | CustomHistogram, int] = {}

    def acquire(self, definition: CustomCounter | CustomHistogram) -> Series:
        """The series of ``definition`` (the same one while some policy holds it)."""
        series = self._series.get(definition)
        if series is None:
            series = self._series[definition] = Series(definition)
            self._users[definition] = 0
        self._users[definition] += 1
        return series

    def release(self, definition: CustomCounter | CustomHistogram) -> None:
        """A policy no longer declares ``definition``; unused, its series are dropped."""
        users = self._users.get(definition, 0) - 1
        if users > 0:
            self._users[definition] = users
        elif definition in self._series:
            del self._series[definition]
            del self._users[definition]

    def metrics(self) -> Iterator[Series]:
        """The metrics in use, in the order they were first declared."""
        return iter(list(self._series.values()))


REGISTRY = CustomMetrics()


class MetricsPolicy:
    """Counts each completed request into the declared metrics' series.

    The label sources of all its metrics are read in one `_core` call per request (each
    distinct source once); each metric then takes its own values out of them."""

    def __init__(self, config: MetricsConfig, registry: CustomMetrics = REGISTRY) -> None:
        self.registry = registry
        self.definitions = (*config.counters, *config.histograms)
        self.closed = False
        sources: dict[tuple[int, Any], int] = {}
        steps = []
        for definition in self.definitions:
            series = registry.acquire(definition)
            positions = [
                sources.setdefault(label_source(source), len(sources))
                for _, source in definition.labels
            ]
            record = series.add if definition.kind == "counter" else series.observe
            steps.append((_picker(positions), _VALUES[definition.value], record))
        self.sources = tuple(sources)
        self.steps = tuple(steps)

    def on_complete(self, req: Any) -> None:
        values = req.label_values(self.sources)
        for pick, value, record in self.steps:
            record(pick(values), 1 if value is None else value(req))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for definition in self.definitions:
                self.registry.release(definition)


def build(config: MetricsConfig, env: Any = None) -> MetricsPolicy:
    """A `MetricsPolicy` counting into this process's `REGISTRY`."""
    return MetricsPolicy(config, REGISTRY)
