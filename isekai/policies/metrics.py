"""The ``metrics`` family: custom counters and histograms of the requests (`MetricsConfig`).

A Python family with only a completion phase: after the last byte, each declared metric reads
its label values from the request (a header, a path parameter, a ``ctx`` value, the route,
method or status) and adds to its series. Only routes listing the policy pay for it.

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
from collections.abc import Callable, Iterator
from typing import Any

from isekai.config.metrics_policy import (
    CustomCounter,
    CustomHistogram,
    MetricsConfig,
    family_name,
    parse_label_source,
)

__all__ = ["OTHER", "REGISTRY", "CustomMetrics", "MetricsPolicy", "Series", "build", "label_reader"]

OTHER = "_other"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})

Reader = Callable[[Any], str]


def _method(req: Any) -> str:
    method = req.method.decode("latin-1")
    return method if method in METHODS else "OTHER"


def _status(req: Any) -> str:
    status = req.status
    return str(status) if status else ""


def _status_class(req: Any) -> str:
    status = req.status
    return f"{status // 100}xx" if 100 <= status < 600 else "other"


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def label_reader(source: str) -> Reader:
    """The function reading one label's value (a str, ``""`` when missing) from a request."""
    kind, argument = parse_label_source(source)
    if kind == "header":
        return lambda req: req.header(argument) or ""
    if kind == "param":
        return lambda req: _text(req.params.get(argument)) if req.params else ""
    if kind == "ctx":
        return lambda req: _text(req.ctx.get(argument))
    if kind == "route":
        return lambda req: req.route_name or ""
    if kind == "listener":
        return lambda req: req.listener_name or ""
    return {"method": _method, "status": _status, "status_class": _status_class}[kind]


_VALUES: dict[str, Callable[[Any], float]] = {
    "requests": lambda req: 1,
    "request_bytes": lambda req: req.request_bytes,
    "response_bytes": lambda req: req.response_bytes,
    "duration": lambda req: req.elapsed,
}


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
    """Counts each completed request into the declared metrics' series."""

    def __init__(self, config: MetricsConfig, registry: CustomMetrics = REGISTRY) -> None:
        self.registry = registry
        self.definitions = (*config.counters, *config.histograms)
        self.closed = False
        steps = []
        for definition in self.definitions:
            series = registry.acquire(definition)
            readers = tuple(label_reader(source) for _, source in definition.labels)
            record = series.add if definition.kind == "counter" else series.observe
            steps.append((readers, _VALUES[definition.value], record))
        self.steps = tuple(steps)

    def on_complete(self, req: Any) -> None:
        for readers, value, record in self.steps:
            record(tuple([read(req) for read in readers]), value(req))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for definition in self.definitions:
                self.registry.release(definition)


def build(config: MetricsConfig) -> MetricsPolicy:
    """A `MetricsPolicy` counting into this process's `REGISTRY`."""
    return MetricsPolicy(config, REGISTRY)
