"""Prometheus metrics of the whole gateway: every worker's numbers summed, rendered at scrape time.

Each worker keeps its counters in C (`isekai._core.counters`) and, when asked, ships a compact
export of them (`Worker.stats()`: counters, upstream pools, open tunnels, and what its
`stats_providers` add: log writers, the trace exporter, custom metrics). Whoever serves
``/metrics`` — the single process, or the admin process through the master — gathers one
export per worker into a `Gathered`, and `render` sums them and writes the Prometheus text
format with prometheus-client (a custom collector: nothing is registered globally and nothing
runs per request). Only the scrape pays; a worker spends one export per scrape.

Label values are bounded: route, upstream, target and policy names come from the config,
never from requests, and each label keeps at most ``max_label_values`` distinct values (the
first in name order); the rest are summed under ``"_other"``. The export leaves zero series
out, so an idle route costs the scrape nothing.

This module never imports `_core`: the admin process, which renders the scrape with several
workers, does not load it.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

__all__ = [
    "CONTENT_TYPE",
    "OTHER",
    "UNROUTED",
    "Gathered",
    "ReloadCounts",
    "Totals",
    "render",
    "sum_workers",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "_other"  # label value of everything past a label's cap
UNROUTED = "_none"  # route label of requests no route matched
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "protocol", "unavailable")
POLICY_COUNTS = ("answers", "errors", "timeouts")
LOGS = ("access_log", "request_log")


@dataclass
class ReloadCounts:
    """Whole-config reloads (SIGHUP, ``isekai reload``) that took effect or were refused."""

    ok: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"ok": self.ok, "failed": self.failed}


@dataclass
class Gathered:
    """What one scrape saw: each worker's ``Worker.stats()`` and the supervisor's own counts
    (``restarts``, ``reloads`` {"ok", "failed"}, ``expected`` workers)."""

    workers: list[dict[str, Any]]
    restarts: int = 0
    reloads: Mapping[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0})
    expected: int = 1
    version: str = ""


@dataclass
class _Route:
    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    upstream_errors: list[int] = field(default_factory=lambda: [0] * 4)
    internal_errors: int = 0
    latency: list[int] = field(default_factory=list)
    latency_sum: float = 0.0


@dataclass
class _Pool:
    idle: int = 0
    active: int = 0
    waiting: int = 0
    created: int = 0
    connect_failures: int = 0
    pool_timeouts: int = 0
    down_in: int = 0  # workers whose latest connect to the target failed
    seen_in: int = 0  # workers that have a pool for the target


@dataclass
class Totals:
    """Several workers' exports summed (`sum_workers`)."""

    buckets: tuple[float, ...] = ()
    routes: dict[str, _Route] = field(default_factory=dict)
    upstreams: dict[str, tuple[list[int], float]] = field(default_factory=dict)
    policies: dict[str, list[int]] = field(default_factory=dict)
    pools: dict[tuple[str, str], _Pool] = field(default_factory=dict)
    connections_active: int = 0
    connections_total: int = 0
    tunnels: int = 0
    logs: dict[str, dict[str, int]] = field(default_factory=dict)
    spans: dict[str, int] = field(default_factory=dict)


def _add_into(target: list[int], values: Sequence[int]) -> list[int]:
    if len(target) < len(values):
        target.extend([0] * (len(values) - len(target)))
    for i, value in enumerate(values):
        target[i] += value
    return target


def sum_workers(workers: Iterable[Mapping[str, Any]]) -> Totals:
    """Sum the ``Worker.stats()`` of several workers."""
    totals = Totals()
    for stats in workers:
        counters = stats.get("counters", {})
        totals.buckets = tuple(counters.get("buckets", totals.buckets))
        connections = counters.get("connections", {})
        totals.connections_active += connections.get("active", 0)
        totals.connections_total += connections.get("total", 0)
        for name, data in counters.get("routes", {}).items():
            route = totals.routes.setdefault(name, _Route())
            for method, status_class, count in data["requests"]:
                key = (method, status_class)
                route.requests[key] = route.requests.get(key, 0) + count
            route.bytes_in += data["bytes_in"]
            route.bytes_out += data["bytes_out"]
            _add_into(route.upstream_errors, data["upstream_errors"])
            route.internal_errors += data["internal_errors"]
            _add_into(route.latency, data["latency"])
            route.latency_sum += data["latency_sum"]
        for name, data in counters.get("upstreams", {}).items():
            buckets, total = totals.upstreams.get(name, ([], 0.0))
            totals.upstreams[name] = (
                _add_into(buckets, data["latency"]),
                total + data["latency_sum"],
            )
        for name, counts in counters.get("policies", {}).items():
            _add_into(totals.policies.setdefault(name, [0, 0, 0]), counts)
        for row in stats.get("pools", ()):
            upstream, target, idle, active, waiting, created, failures, timeouts, down = row
            pool = totals.pools.setdefault((upstream, target), _Pool())
            pool.idle += idle
            pool.active += active
            pool.waiting += waiting
            pool.created += created
            pool.connect_failures += failures
            pool.pool_timeouts += timeouts
            pool.down_in += bool(down)
            pool.seen_in += 1
        totals.tunnels += stats.get("tunnels", 0)
        extra = stats.get("extra", {})
        for log_name, counts in extra.get("logs", {}).items():
            into = totals.logs.setdefault(log_name, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
        for key, value in extra.get("tracing", {}).items():
            totals.spans[key] = totals.spans.get(key, 0) + value
    return totals


def _capped(names: Iterable[str], limit: int) -> dict[str, str]:
    """name -> label value: the first ``limit`` names in sorted order keep theirs."""
    ordered = sorted(set(names))
    return {name: (name if i < limit else OTHER) for i, name in enumerate(ordered)}


def _bound(value: float) -> str:
    return repr(float(value))


def _histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: Sequence[float],
    counts: Sequence[int],
    total: float,
) -> None:
    cumulative = 0
    buckets = []
    for bound, count in zip(bounds, counts, strict=False):
        cumulative += count
        buckets.append((_bound(bound), cumulative))
    cumulative += sum(counts[len(bounds) :])
    buckets.append(("+Inf", cumulative))
    family.add_metric(labels, buckets, total)


class _Collector:
    """A prometheus-client collector over one `Gathered` (made per scrape)."""

    def __init__(self, gathered: Gathered, max_label_values: int) -> None:
        self.gathered = gathered
        self.limit = max_label_values

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        gathered = self.gathered
        totals = sum_workers(gathered.workers)
        yield from self._process(gathered)
        yield from self._http(totals)
        yield from self._upstreams(totals)
        yield from self._policies(totals)
        yield from self._logs(totals)

    def _process(self, gathered: Gathered) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "isekai_build_info", "Isekai version and Python runtime", labels=["version", "python"]
        )
        info.add_metric([gathered.version, platform.python_version()], 1)
        yield info
        yield GaugeMetricFamily(
            "isekai_workers", "Workers that answered this scrape", value=len(gathered.workers)
        )
        yield GaugeMetricFamily(
            "isekai_workers_expected", "Workers the gateway runs", value=gathered.expected
        )
        yield CounterMetricFamily(
            "isekai_worker_restarts", "Workers replaced after they died", value=gathered.restarts
        )
        reloads = CounterMetricFamily(
            "isekai_config_reloads", "Whole-config reloads (SIGHUP)", labels=["result"]
        )
        for result in ("ok", "failed"):
            reloads.add_metric([result], gathered.reloads.get(result, 0))
        yield reloads

    def _http(self, totals: Totals) -> Iterator[Metric]:
        names = _capped((name for name in totals.routes if name), self.limit)
        names[""] = UNROUTED
        merged: dict[str, _Route] = {}
        for name, route in totals.routes.items():
            label = names[name]
            into = merged.get(label)
            if into is None:
                merged[label] = route
                continue
            for key, count in route.requests.items():
                into.requests[key] = into.requests.get(key, 0) + count
            into.bytes_in += route.bytes_in
            into.bytes_out += route.bytes_out
            _add_into(into.upstream_errors, route.upstream_errors)
            into.internal_errors += route.internal_errors
            _add_into(into.latency, route.latency)
            into.latency_sum += route.latency_sum
        requests = CounterMetricFamily(
            "isekai_http_requests",
            "Finished client requests",
            labels=["route", "method", "status_class"],
        )
        duration = HistogramMetricFamily(
            "isekai_http_request_duration_seconds",
            "Time from the first byte of a request to the last byte of its response",
            labels=["route"],
        )
        bytes_in = CounterMetricFamily(
            "isekai_http_request_bytes", "Request body bytes received", labels=["route"]
        )
        bytes_out = CounterMetricFamily(
            "isekai_http_response_bytes", "Response bytes sent", labels=["route"]
        )
        errors = CounterMetricFamily(
            "isekai_upstream_errors",
            "Upstream exchanges that failed, by kind",
            labels=["route", "kind"],
        )
        internal = CounterMetricFamily(
            "isekai_internal_errors",
            "Requests that met an error inside the gateway or a policy",
            labels=["route"],
        )
        for label in sorted(merged):
            route = merged[label]
            for (method, status_class), count in sorted(route.requests.items()):
                requests.add_metric([label, method, status_class], count)
            if route.latency:
                _histogram(duration, [label], totals.buckets, route.latency, route.latency_sum)
            bytes_in.add_metric([label], route.bytes_in)
            bytes_out.add_metric([label], route.bytes_out)
            for kind, count in zip(UPSTREAM_ERROR_KINDS, route.upstream_errors, strict=False):
                if count:
                    errors.add_metric([label, kind], count)
            if route.internal_errors:
                internal.add_metric([label], route.internal_errors)
        yield from (requests, duration, bytes_in, bytes_out, errors, internal)
        yield GaugeMetricFamily(
            "isekai_client_connections", "Client connections open", value=totals.connections_active
        )
        yield CounterMetricFamily(
            "isekai_client_connections_accepted",
            "Client connections accepted",
            value=totals.connections_total,
        )
        yield GaugeMetricFamily(
            "isekai_websocket_tunnels", "WebSocket tunnels open", value=totals.tunnels
        )

    def _upstreams(self, totals: Totals) -> Iterator[Metric]:
        upstream_names = _capped(
            [*totals.upstreams, *(name for name, _ in totals.pools)], self.limit
        )
        target_names = _capped((target for _, target in totals.pools), self.limit)
        duration = HistogramMetricFamily(
            "isekai_upstream_request_duration_seconds",
            "Time from sending a request upstream to the end of its response",
            labels=["upstream"],
        )
        merged: dict[str, tuple[list[int], float]] = {}
        for name, (buckets, total) in totals.upstreams.items():
            label = upstream_names[name]
            into, into_total = merged.get(label, ([], 0.0))
            merged[label] = (_add_into(into, buckets), into_total + total)
        for label in sorted(merged):
            buckets, total = merged[label]
            _histogram(duration, [label], totals.buckets, buckets, total)
        yield duration
        pools: dict[tuple[str, str], _Pool] = {}
        for (upstream, target), pool in totals.pools.items():
            key = (upstream_names[upstream], target_names[target])
            into = pools.setdefault(key, _Pool())
            for name in ("idle", "active", "waiting", "created", "connect_failures"):
                setattr(into, name, getattr(into, name) + getattr(pool, name))
            into.pool_timeouts += pool.pool_timeouts
            into.down_in += pool.down_in
            into.seen_in += pool.seen_in
        labels = ["upstream", "target"]
        connections = GaugeMetricFamily(
            "isekai_upstream_connections",
            "Upstream connections open, idle or active",
            labels=[*labels, "state"],
        )
        created = CounterMetricFamily(
            "isekai_upstream_connections_created", "Upstream connections opened", labels=labels
        )
        failures = CounterMetricFamily(
            "isekai_upstream_connect_failures",
            "Upstream connects refused, reset or timed out",
            labels=labels,
        )
        timeouts = CounterMetricFamily(
            "isekai_upstream_pool_timeouts",
            "Requests that waited past pool_timeout for an upstream connection",
            labels=labels,
        )
        waiting = GaugeMetricFamily(
            "isekai_upstream_pool_waiting",
            "Requests waiting for an upstream connection",
            labels=labels,
        )
        reachable = GaugeMetricFamily(
            "isekai_upstream_target_reachable",
            "Share of workers whose latest connect to the target succeeded (1 = all)",
            labels=labels,
        )
        for key in sorted(pools):
            pool = pools[key]
            values = list(key)
            connections.add_metric([*values, "idle"], pool.idle)
            connections.add_metric([*values, "active"], pool.active)
            created.add_metric(values, pool.created)
            failures.add_metric(values, pool.connect_failures)
            timeouts.add_metric(values, pool.pool_timeouts)
            waiting.add_metric(values, pool.waiting)
            seen = max(pool.seen_in, 1)
            reachable.add_metric(values, (seen - pool.down_in) / seen)
        yield from (connections, created, failures, timeouts, waiting, reachable)

    def _policies(self, totals: Totals) -> Iterator[Metric]:
        names = _capped(totals.policies, self.limit)
        merged: dict[str, list[int]] = {}
        for name, counts in totals.policies.items():
            _add_into(merged.setdefault(names[name], [0, 0, 0]), counts)
        helps = {
            "answers": "Requests a policy answered itself (refused, preflight, fault...)",
            "errors": "Exceptions raised by a policy",
            "timeouts": "Async policy phases past their deadline",
        }
        for i, what in enumerate(POLICY_COUNTS):
            family = CounterMetricFamily(f"isekai_policy_{what}", helps[what], labels=["policy"])
            for label in sorted(merged):
                family.add_metric([label], merged[label][i])
            yield family

    def _logs(self, totals: Totals) -> Iterator[Metric]:
        written = CounterMetricFamily(
            "isekai_log_records_written", "Log records written", labels=["log"]
        )
        dropped = CounterMetricFamily(
            "isekai_log_records_dropped",
            "Log records dropped because a queue was full or a sink failed",
            labels=["log"],
        )
        for log_name in LOGS:
            counts = totals.logs.get(log_name, {})
            written.add_metric([log_name], counts.get("written", 0))
            dropped.add_metric([log_name], counts.get("dropped", 0))
        yield from (written, dropped)
        spans = CounterMetricFamily(
            "isekai_tracing_spans", "Finished spans, exported or dropped", labels=["result"]
        )
        for result in ("exported", "dropped"):
            spans.add_metric([result], totals.spans.get(result, 0))
        yield spans


def render(gathered: Gathered, max_label_values: int) -> bytes:
    """The Prometheus text exposition of ``gathered``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(gathered, max_label_values))
    return generate_latest(registry)
