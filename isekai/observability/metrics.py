"""Prometheus metrics of the whole gateway: every worker's numbers summed, rendered at scrape time.

Each worker keeps its counters in C (`isekai._core.counters`) and, when asked, ships a compact
export of them (`Worker.stats()`: counters, upstream pools, open tunnels, and what its
`stats_providers` add: log writers, the trace exporter, custom metrics). Whoever serves
``/metrics`` — the single process, or the admin process through the master — gathers one
export per worker into a `Gathered`, and `render` sums them and writes the Prometheus text
format (0.0.4; the content type is prometheus-client's). Nothing runs per request: only the
scrape pays, and a worker spends one export per scrape (packed C rows: milliseconds).

The text is written here rather than through prometheus-client's collector API: at 10,000
busy routes a scrape is 200,000 samples, which its generic writer turns into text in seconds;
`_Text` fills one template per histogram label set instead. Tests parse the output with
prometheus-client's parser.

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
from itertools import accumulate, compress
from operator import add
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from isekai.observability import custom_metrics

__all__ = [
    "BREAKER_STATES",
    "CONTENT_TYPE",
    "OTHER",
    "REFUSALS",
    "UNROUTED",
    "ClusterState",
    "Gathered",
    "ReloadCounts",
    "TargetState",
    "Totals",
    "newest_checks",
    "render",
    "sum_workers",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
OTHER = "_other"  # label value of everything past a label's cap
UNROUTED = "_none"  # route label of requests no route matched
UPSTREAM_ERROR_KINDS = ("connect", "timeout", "protocol", "unavailable")
POLICY_COUNTS = ("answers", "errors", "timeouts")
LOGS = ("access_log", "request_log")
BREAKER_STATES = ("closed", "half_open", "open")  # least to most severe
REFUSALS = ("no_target", "max_requests", "max_pending")  # why a cluster picked no target


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
class TargetState:
    """One upstream target as several workers see it: the rows of `Cluster.target_stats`
    (``Worker.stats()["targets"]``) added together. Counts of workers (``*_in``, ``breakers``)
    say in how many workers a per-worker state holds; the other numbers are summed, but for
    ``ewma`` (the mean over the workers that have a sample), ``ejected_for`` (the longest) and
    ``next_probe_in`` (the soonest among the workers whose breaker is open)."""

    weight: int = 0
    workers: int = 0
    healthy_in: int = 0  # workers whose target has no "unhealthy" verdict from the checker
    selectable_in: int = 0
    in_flight: int = 0
    ewma_sum: float = 0.0  # milliseconds, over ewma_samples workers
    ewma_samples: int = 0
    ejected_in: int = 0
    ejected_for: float = 0.0
    ejections: int = 0
    consecutive_failures: int = 0  # the most in one worker
    breakers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BREAKER_STATES, 0))
    next_probe_in: float | None = None
    opened: int = 0
    window_requests: int = 0
    window_failures: int = 0
    requests: int = 0
    failures: int = 0

    def add(self, row: Mapping[str, Any]) -> None:
        """Add one worker's row."""
        self.weight = max(self.weight, int(row.get("weight", 0)))
        self.workers += 1
        self.healthy_in += bool(row.get("healthy", True))
        self.selectable_in += bool(row.get("selectable", False))
        self.in_flight += row.get("in_flight", 0)
        ewma = row.get("ewma_ms", 0.0)
        if ewma > 0:
            self.ewma_sum += ewma
            self.ewma_samples += 1
        if row.get("ejected"):
            self.ejected_in += 1
            self.ejected_for = max(self.ejected_for, row.get("ejected_for", 0.0))
        self.ejections += row.get("ejections", 0)
        self.consecutive_failures = max(
            self.consecutive_failures, row.get("consecutive_failures", 0)
        )
        state = row.get("breaker", "closed")
        self.breakers[state] = self.breakers.get(state, 0) + 1
        if state == "open":
            probe = row.get("next_probe_in", 0.0)
            if self.next_probe_in is None or probe < self.next_probe_in:
                self.next_probe_in = probe
        self.opened += row.get("breaker_opened", 0)
        self.window_requests += row.get("window_requests", 0)
        self.window_failures += row.get("window_failures", 0)
        self.requests += row.get("requests", 0)
        self.failures += row.get("failures", 0)

    def merge(self, other: TargetState) -> None:
        """Add another target's sums (targets folded under one capped label)."""
        self.weight = max(self.weight, other.weight)
        for name in (
            "workers",
            "healthy_in",
            "selectable_in",
            "in_flight",
            "ewma_sum",
            "ewma_samples",
            "ejected_in",
            "ejections",
            "opened",
            "window_requests",
            "window_failures",
            "requests",
            "failures",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.ejected_for = max(self.ejected_for, other.ejected_for)
        self.consecutive_failures = max(self.consecutive_failures, other.consecutive_failures)
        for state, count in other.breakers.items():
            self.breakers[state] = self.breakers.get(state, 0) + count
        if other.next_probe_in is not None and (
            self.next_probe_in is None or other.next_probe_in < self.next_probe_in
        ):
            self.next_probe_in = other.next_probe_in

    @property
    def breaker(self) -> str:
        """The most severe breaker state of any worker: open > half_open > closed."""
        for state in reversed(BREAKER_STATES):
            if self.breakers.get(state):
                return state
        return "closed"

    @property
    def ewma_ms(self) -> float | None:
        """The mean EWMA latency (ms) over the workers that have a sample, None without."""
        if not self.ewma_samples:
            return None
        return round(self.ewma_sum / self.ewma_samples, 3)


@dataclass
class ClusterState:
    """One upstream's cluster numbers (``Worker.stats()["clusters"]``) added over workers;
    ``panic_in`` counts the workers in panic mode."""

    balancer: str = ""
    workers: int = 0
    in_flight: int = 0
    panic_in: int = 0
    retries: int = 0
    retries_active: int = 0
    retries_refused: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSALS, 0))

    def add(self, row: Mapping[str, Any]) -> None:
        self.balancer = self.balancer or row.get("balancer", "")
        self.workers += 1
        self.in_flight += row.get("in_flight", 0)
        self.panic_in += bool(row.get("panic", False))
        self.retries += row.get("retries", 0)
        self.retries_active += row.get("retries_active", 0)
        self.retries_refused += row.get("retries_refused", 0)
        for reason, count in row.get("refused", {}).items():
            self.refused[reason] = self.refused.get(reason, 0) + count

    def merge(self, other: ClusterState) -> None:
        for name in ("workers", "in_flight", "panic_in", "retries", "retries_active"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.retries_refused += other.retries_refused
        for reason, count in other.refused.items():
            self.refused[reason] = self.refused.get(reason, 0) + count


def newest_checks(workers: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(upstream, target) -> the active health check row (``extra["health_checks"]``) of
    the worker that runs the checks. Should two workers ship one (the checker moved while the
    scrape ran), the row with the most recent check wins."""
    found: dict[tuple[str, str], Mapping[str, Any]] = {}
    for stats in workers:
        for row in stats.get("extra", {}).get("health_checks", ()):
            key = (row["upstream"], row["target"])
            have = found.get(key)
            if have is None or _age(row) < _age(have):
                found[key] = row
    return found


def _age(row: Mapping[str, Any]) -> float:
    age = row.get("last_check_age")
    return float("inf") if age is None else age


class Layout:
    """Where each field sits in an exported route row (the worker's ``route_layout``)."""

    def __init__(self, counters: Mapping[str, Any]) -> None:
        self.methods = list(counters["methods"])
        self.classes = list(counters["status_classes"])
        self.width = 0
        self.slices: dict[str, slice] = {}
        for name, size in counters["route_layout"]:
            self.slices[name] = slice(self.width, self.width + size)
            self.width += size
        requests = self.slices["requests"]
        self.request_labels = [
            (
                i,
                self.methods[(i - requests.start) // len(self.classes)],
                self.classes[(i - requests.start) % len(self.classes)],
            )
            for i in range(requests.start, requests.stop)
        ]
        self.bytes_in = self.slices["bytes_in"].start
        self.bytes_out = self.slices["bytes_out"].start
        self.upstream_errors = self.slices["upstream_errors"]
        self.internal_errors = self.slices["internal_errors"].start
        self.latency = self.slices["latency"]


def _rows(block: Mapping[str, Any], width: int) -> Iterator[tuple[str, list[int], float]]:
    """(name, row, sum) of an exported block of packed rows."""
    counts = memoryview(block["counts"]).cast("Q").tolist()
    sums = memoryview(block["sums"]).cast("d").tolist()
    for i, name in enumerate(block["names"]):
        yield name, counts[i * width : (i + 1) * width], sums[i]


def served(stats: Mapping[str, Any]) -> int:
    """Requests one worker's statistics have counted, all routes together."""
    counters = stats.get("counters", {})
    if not counters.get("routes", {}).get("names"):
        return 0
    layout = Layout(counters)
    return sum(
        sum(row[layout.slices["requests"]]) for _, row, _ in _rows(counters["routes"], layout.width)
    )


@dataclass
class Totals:
    """Several workers' exports summed (`sum_workers`)."""

    buckets: tuple[float, ...] = ()
    layout: Layout | None = None
    routes: dict[str, list[int]] = field(default_factory=dict)  # name -> row (`Layout`)
    route_sums: dict[str, float] = field(default_factory=dict)  # name -> latency seconds
    upstreams: dict[str, list[int]] = field(default_factory=dict)  # name -> latency buckets
    upstream_sums: dict[str, float] = field(default_factory=dict)
    policies: dict[str, list[int]] = field(default_factory=dict)
    pools: dict[tuple[str, str], _Pool] = field(default_factory=dict)
    connections_active: int = 0
    connections_total: int = 0
    tunnels: int = 0
    logs: dict[str, dict[str, int]] = field(default_factory=dict)
    spans: dict[str, int] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)  # custom_metrics.merge of the workers
    api_key_refusals: dict[str, int] = field(default_factory=dict)  # reason -> count
    # (consumer, route, status_class) -> requests (`consumer_metrics`)
    consumers: dict[tuple[str, str, str], int] = field(default_factory=dict)
    # (policy, tier, key class, decision) -> count: the rate_limit policies' decisions
    rate_limits: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    targets: dict[tuple[str, str], TargetState] = field(default_factory=dict)
    clusters: dict[str, ClusterState] = field(default_factory=dict)
    checks: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    # throttling: policy -> {in_flight, queued, limit, rejected: {reason: n}}, summed over the
    # workers (each admits up to its own limit); load shedding; the worst loop lag
    throttle: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_shed: int = 0
    loop_lag: float | None = None


def _add_into(target: list[int], values: Sequence[int]) -> list[int]:
    """``target`` += ``values``, element by element (``target`` grows to fit)."""
    if not target:
        target.extend(values)
        return target
    if len(target) < len(values):
        target.extend([0] * (len(values) - len(target)))
    if any(values):
        target[: len(values)] = map(add, target, values)
    return target


def sum_workers(workers: Iterable[Mapping[str, Any]]) -> Totals:
    """Sum the ``Worker.stats()`` of several workers."""
    workers = list(workers)
    totals = Totals()
    customs = []
    for stats in workers:
        counters = stats.get("counters", {})
        totals.buckets = tuple(counters.get("buckets", totals.buckets))
        connections = counters.get("connections", {})
        totals.connections_active += connections.get("active", 0)
        totals.connections_total += connections.get("total", 0)
        if counters.get("routes", {}).get("names"):
            layout = totals.layout = totals.layout or Layout(counters)
            routes, route_sums = totals.routes, totals.route_sums
            for name, row, latency_sum in _rows(counters["routes"], layout.width):
                have = routes.get(name)
                if have is None:  # the first worker with this route: taken as it is
                    routes[name] = row
                    route_sums[name] = latency_sum
                else:
                    routes[name] = list(map(add, have, row))
                    route_sums[name] += latency_sum
        if counters.get("upstreams", {}).get("names"):
            width = len(totals.buckets) + 1
            for name, row, latency_sum in _rows(counters["upstreams"], width):
                have = totals.upstreams.get(name)
                totals.upstreams[name] = row if have is None else list(map(add, have, row))
                totals.upstream_sums[name] = totals.upstream_sums.get(name, 0.0) + latency_sum
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
        for row in stats.get("targets", ()):
            key = (row["upstream"], row["target"])
            totals.targets.setdefault(key, TargetState()).add(row)
        for row in stats.get("clusters", ()):
            totals.clusters.setdefault(row["upstream"], ClusterState()).add(row)
        totals.tunnels += stats.get("tunnels", 0)
        extra = stats.get("extra", {})
        for log_name, counts in extra.get("logs", {}).items():
            into = totals.logs.setdefault(log_name, {})
            for key, value in counts.items():
                into[key] = into.get(key, 0) + value
        for key, value in extra.get("tracing", {}).items():
            totals.spans[key] = totals.spans.get(key, 0) + value
        if extra.get("custom_metrics"):
            customs.append(extra["custom_metrics"])
        for reason, count in extra.get("api_keys", {}).get("refused", {}).items():
            totals.api_key_refusals[reason] = totals.api_key_refusals.get(reason, 0) + count
        _sum_throttle(totals, extra.get("throttle"))
        for row in extra.get("consumers", ()):
            if len(row) == 4 and all(isinstance(text, str) for text in row[:3]):
                key = (row[0], row[1], row[2])
                totals.consumers[key] = totals.consumers.get(key, 0) + int(row[3])
        for row in extra.get("rate_limits", ()):
            if len(row) == 5 and all(isinstance(text, str) for text in row[:4]):
                key4 = (row[0], row[1], row[2], row[3])
                totals.rate_limits[key4] = totals.rate_limits.get(key4, 0) + int(row[4])
    if customs:
        totals.custom = custom_metrics.merge(customs)
    totals.checks = newest_checks(workers)
    return totals


def _sum_throttle(totals: Totals, block: Any) -> None:
    # one worker's ``extra["throttle"]`` (isekai/worker.py) into the totals
    if not isinstance(block, Mapping):
        return
    for name, row in block.get("policies", {}).items():
        into = totals.throttle.setdefault(
            name, {"in_flight": 0, "queued": 0, "limit": 0, "rejected": {}}
        )
        for key in ("in_flight", "queued", "limit"):
            into[key] += row.get(key, 0)
        for reason, count in row.get("rejected", {}).items():
            into["rejected"][reason] = into["rejected"].get(reason, 0) + count
    totals.load_shed += block.get("load_shed", 0)
    lag = block.get("loop_lag")
    if lag is not None:
        totals.loop_lag = lag if totals.loop_lag is None else max(totals.loop_lag, lag)


def _capped(names: Iterable[str], limit: int) -> dict[str, str]:
    """name -> label value: the first ``limit`` names in sorted order keep theirs."""
    ordered = sorted(set(names))
    return {name: (name if i < limit else OTHER) for i, name in enumerate(ordered)}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Text:
    """The Prometheus text format (version 0.0.4), written directly: at 200,000 samples
    (10,000 routes) prometheus-client's generic writer takes seconds, this takes a fraction."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.parts: list[str] = []
        self.bounds = [f'le="{_number(float(b))}"' for b in bounds]
        self._templates: dict[str, str] = {}

    def family(self, name: str, kind: str, documentation: str) -> None:
        # a counter's HELP and TYPE name its samples (``_total``), as the 0.0.4 text format
        # and promtool expect
        if kind == "counter" and not name.endswith("_total"):
            name += "_total"
        doc = documentation.replace("\\", "\\\\").replace("\n", "\\n")
        self.parts.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")

    def sample(self, name: str, labels: str, value: float) -> None:
        self.parts.append(f"{name}{labels} {_number(value)}\n")

    def histogram(self, name: str, labels: str, counts: Sequence[int], total: float) -> None:
        """One label set of a histogram: cumulative buckets, +Inf, count and sum. ``labels`` is
        ``k="v",...`` without braces (never empty: every histogram here has a label). One
        ``str.format`` per label set, on a template made once per histogram name."""
        template = self._templates.get(name)
        if template is None:
            template = self._templates[name] = self._template(name)
        finite = len(self.bounds)
        running = list(accumulate(counts[:finite]))
        cumulative = (running[-1] if running else 0) + sum(counts[finite:])
        self.parts.append(template.format(labels, *running, cumulative, repr(float(total))))

    def _template(self, name: str) -> str:
        # {0}: the labels; {1}..{n}: cumulative counts; {n+1}: +Inf and count; {n+2}: sum
        def escape(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        n = len(self.bounds)
        lines = [
            f"{escape(name)}_bucket{{{{{{0}},{escape(le)}}}}} {{{i + 1}}}\n"
            for i, le in enumerate(self.bounds)
        ]
        lines.append(f'{escape(name)}_bucket{{{{{{0}},le="+Inf"}}}} {{{n + 1}}}\n')
        lines.append(f"{escape(name)}_count{{{{{{0}}}}}} {{{n + 1}}}\n")
        lines.append(f"{escape(name)}_sum{{{{{{0}}}}}} {{{n + 2}}}\n")
        return "".join(lines)

    def body(self) -> bytes:
        return "".join(self.parts).encode()


def _merge_routes(totals: Totals, limit: int) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Rows and latency sums by route label: past ``limit`` names, summed under "_other"."""
    rows: dict[str, list[int]]
    sums: dict[str, float]
    if len(totals.routes) <= limit:  # nothing to fold
        rows, sums = dict(totals.routes), dict(totals.route_sums)
        if "" in rows:
            rows[UNROUTED], sums[UNROUTED] = rows.pop(""), sums.pop("")
        return rows, sums
    names = _capped((name for name in totals.routes if name), limit)
    names[""] = UNROUTED
    rows = {}
    sums = {}
    for name, row in totals.routes.items():
        label = names[name]
        have = rows.get(label)
        rows[label] = row if have is None else list(map(add, have, row))
        sums[label] = sums.get(label, 0.0) + totals.route_sums[name]
    return rows, sums


def _write_process(out: _Text, gathered: Gathered) -> None:
    out.family("isekai_build_info", "gauge", "Isekai version and Python runtime")
    out.sample(
        "isekai_build_info",
        _labels(version=gathered.version, python=platform.python_version()),
        1,
    )
    out.family("isekai_workers", "gauge", "Workers that answered this scrape")
    out.sample("isekai_workers", "", len(gathered.workers))
    out.family("isekai_workers_expected", "gauge", "Workers the gateway runs")
    out.sample("isekai_workers_expected", "", gathered.expected)
    out.family("isekai_worker_restarts", "counter", "Workers replaced after they died")
    out.sample("isekai_worker_restarts_total", "", gathered.restarts)
    out.family("isekai_config_reloads", "counter", "Whole-config reloads (SIGHUP)")
    for result in ("ok", "failed"):
        out.sample(
            "isekai_config_reloads_total", _labels(result=result), gathered.reloads.get(result, 0)
        )


def _write_http(out: _Text, totals: Totals, limit: int) -> None:
    rows, sums = _merge_routes(totals, limit)
    order = sorted(rows)
    quoted = {label: f'route="{_escape(label)}"' for label in order}
    layout = totals.layout
    out.family("isekai_http_requests", "counter", "Finished client requests")
    if layout is not None:
        requests = layout.slices["requests"]
        labels = [(i, f',method="{m}",status_class="{c}"}} ') for i, m, c in layout.request_labels]
        for label in order:
            row = rows[label]
            prefix = f"isekai_http_requests_total{{{quoted[label]}"
            out.parts.extend(
                [f"{prefix}{rest}{row[i]}\n" for i, rest in compress(labels, row[requests])]
            )
    out.family(
        "isekai_http_request_duration_seconds",
        "histogram",
        "Time from the first byte of a request to the last byte of its response",
    )
    if layout is not None:
        for label in order:
            out.histogram(
                "isekai_http_request_duration_seconds",
                quoted[label],
                rows[label][layout.latency],
                sums[label],
            )
    singles = (
        ("isekai_http_request_bytes", "Request body bytes received", "bytes_in"),
        ("isekai_http_response_bytes", "Response bytes sent", "bytes_out"),
    )
    for name, documentation, attribute in singles:
        out.family(name, "counter", documentation)
        if layout is not None:
            at = getattr(layout, attribute)
            out.parts.extend(
                [f"{name}_total{{{quoted[label]}}} {rows[label][at]}\n" for label in order]
            )
    out.family("isekai_upstream_errors", "counter", "Upstream exchanges that failed, by kind")
    if layout is not None:
        for label in order:
            errors = rows[label][layout.upstream_errors]
            for kind, count in zip(UPSTREAM_ERROR_KINDS, errors, strict=False):
                if count:
                    out.sample(
                        "isekai_upstream_errors_total", f'{{{quoted[label]},kind="{kind}"}}', count
                    )
    out.family(
        "isekai_internal_errors",
        "counter",
        "Requests that met an error inside the gateway or a policy",
    )
    if layout is not None:
        for label in order:
            if rows[label][layout.internal_errors]:
                out.sample(
                    "isekai_internal_errors_total",
                    f"{{{quoted[label]}}}",
                    rows[label][layout.internal_errors],
                )
    out.family("isekai_client_connections", "gauge", "Client connections open")
    out.sample("isekai_client_connections", "", totals.connections_active)
    out.family("isekai_client_connections_accepted", "counter", "Client connections accepted")
    out.sample("isekai_client_connections_accepted_total", "", totals.connections_total)
    out.family("isekai_websocket_tunnels", "gauge", "WebSocket tunnels open")
    out.sample("isekai_websocket_tunnels", "", totals.tunnels)


def _label_names(totals: Totals, limit: int) -> tuple[dict[str, str], dict[str, str]]:
    """Upstream and target name -> label value, one cap for every family that has them."""
    pairs = [*totals.pools, *totals.targets, *totals.checks]
    upstreams = _capped([*totals.upstreams, *totals.clusters, *(u for u, _ in pairs)], limit)
    targets = _capped((target for _, target in pairs), limit)
    return upstreams, targets


def _write_upstreams(
    out: _Text, totals: Totals, upstream_names: Mapping[str, str], target_names: Mapping[str, str]
) -> None:
    merged: dict[str, tuple[list[int], float]] = {}
    for name, buckets in totals.upstreams.items():
        label = upstream_names[name]
        into, into_total = merged.get(label, ([], 0.0))
        merged[label] = (_add_into(list(into), buckets), into_total + totals.upstream_sums[name])
    out.family(
        "isekai_upstream_request_duration_seconds",
        "histogram",
        "Time from sending a request upstream to the end of its response",
    )
    for label in sorted(merged):
        buckets, total = merged[label]
        out.histogram(
            "isekai_upstream_request_duration_seconds",
            f'upstream="{_escape(label)}"',
            buckets,
            total,
        )
    pools: dict[tuple[str, str], _Pool] = {}
    for (upstream, target), pool in totals.pools.items():
        summed = pools.setdefault((upstream_names[upstream], target_names[target]), _Pool())
        for name in (
            "idle",
            "active",
            "waiting",
            "created",
            "connect_failures",
            "pool_timeouts",
            "down_in",
            "seen_in",
        ):
            setattr(summed, name, getattr(summed, name) + getattr(pool, name))
    keys = sorted(pools)
    labels = {key: _labels(upstream=key[0], target=key[1]) for key in keys}
    out.family("isekai_upstream_connections", "gauge", "Upstream connections open, idle or active")
    for key in keys:
        inner = labels[key][1:-1]
        out.sample("isekai_upstream_connections", f'{{{inner},state="idle"}}', pools[key].idle)
        out.sample("isekai_upstream_connections", f'{{{inner},state="active"}}', pools[key].active)
    rows = (
        (
            "isekai_upstream_connections_created",
            "counter",
            "Upstream connections opened",
            "created",
        ),
        (
            "isekai_upstream_connect_failures",
            "counter",
            "Upstream connects refused, reset or timed out",
            "connect_failures",
        ),
        (
            "isekai_upstream_pool_timeouts",
            "counter",
            "Requests that waited past pool_timeout for an upstream connection",
            "pool_timeouts",
        ),
        (
            "isekai_upstream_pool_waiting",
            "gauge",
            "Requests waiting for an upstream connection",
            "waiting",
        ),
    )
    for name, kind, documentation, attribute in rows:
        out.family(name, kind, documentation)
        sample = name + "_total" if kind == "counter" else name
        for key in keys:
            out.sample(sample, labels[key], getattr(pools[key], attribute))
    out.family(
        "isekai_upstream_target_reachable",
        "gauge",
        "Share of workers whose latest connect to the target succeeded (1 = all)",
    )
    for key in keys:
        seen = max(pools[key].seen_in, 1)
        out.sample(
            "isekai_upstream_target_reachable", labels[key], (seen - pools[key].down_in) / seen
        )


def _write_targets(
    out: _Text, totals: Totals, upstream_names: Mapping[str, str], target_names: Mapping[str, str]
) -> None:
    """Balancer, passive health (ejection) and circuit breaker state per target, retries and
    refusals per upstream, and the active health checks."""
    targets: dict[tuple[str, str], TargetState] = {}
    for (upstream, target), seen in totals.targets.items():
        key = (upstream_names[upstream], target_names[target])
        into = targets.get(key)
        if into is None:
            into = targets[key] = TargetState()
        into.merge(seen)
    keys = sorted(targets)
    labels = {key: _labels(upstream=key[0], target=key[1]) for key in keys}
    per_target: tuple[tuple[str, str, str, Any], ...] = (
        (
            "isekai_upstream_target_in_flight",
            "gauge",
            "Requests in flight to the target, all workers",
            lambda t: t.in_flight,
        ),
        (
            "isekai_upstream_target_selectable",
            "gauge",
            "Workers in which the balancer may choose the target",
            lambda t: t.selectable_in,
        ),
        (
            "isekai_upstream_target_ejected",
            "gauge",
            "Workers in which outlier detection has ejected the target",
            lambda t: t.ejected_in,
        ),
        (
            "isekai_upstream_ejections",
            "counter",
            "Outlier ejections of the target (consecutive failures), all workers",
            lambda t: t.ejections,
        ),
        (
            "isekai_circuit_breaker_opened",
            "counter",
            "Times the target's circuit breaker opened, all workers",
            lambda t: t.opened,
        ),
        (
            "isekai_upstream_target_requests",
            "counter",
            "Attempts sent to the target (each try of a retried request counts)",
            lambda t: t.requests,
        ),
        (
            "isekai_upstream_target_failures",
            "counter",
            "Attempts to the target that failed: a 5xx, connect failure, reset or timeout",
            lambda t: t.failures,
        ),
    )
    for name, kind, documentation, get in per_target:
        out.family(name, kind, documentation)
        sample = name + "_total" if kind == "counter" else name
        for key in keys:
            out.sample(sample, labels[key], get(targets[key]))
    out.family(
        "isekai_circuit_breaker_state",
        "gauge",
        "Workers in which the target's circuit breaker is in each state",
    )
    for key in keys:
        inner = labels[key][1:-1]
        for breaker in BREAKER_STATES:
            out.sample(
                "isekai_circuit_breaker_state",
                f'{{{inner},state="{breaker}"}}',
                targets[key].breakers.get(breaker, 0),
            )
    out.family(
        "isekai_upstream_ewma_seconds",
        "gauge",
        "Moving average of the time to the target's response head (mean of the workers "
        "that have a sample)",
    )
    for key in keys:
        ewma = targets[key].ewma_ms
        if ewma is not None:
            out.sample("isekai_upstream_ewma_seconds", labels[key], ewma / 1000.0)

    clusters: dict[str, ClusterState] = {}
    for upstream, numbers in totals.clusters.items():
        label = upstream_names[upstream]
        sums = clusters.get(label)
        if sums is None:
            sums = clusters[label] = ClusterState()
        sums.merge(numbers)
    names = sorted(clusters)
    quoted = {name: _labels(upstream=name) for name in names}
    per_upstream: tuple[tuple[str, str, str, Any], ...] = (
        (
            "isekai_upstream_retries",
            "counter",
            "Retries of upstream requests (the first try is not one)",
            lambda c: c.retries,
        ),
        (
            "isekai_upstream_retries_refused",
            "counter",
            "Retries wanted but refused by the retry budget or max_retries",
            lambda c: c.retries_refused,
        ),
        (
            "isekai_upstream_panic",
            "gauge",
            "Workers in which the upstream is in panic mode (healthy share below "
            "panic_threshold: every target used)",
            lambda c: c.panic_in,
        ),
    )
    for name, kind, documentation, get in per_upstream:
        out.family(name, kind, documentation)
        sample = name + "_total" if kind == "counter" else name
        for label in names:
            out.sample(sample, quoted[label], get(clusters[label]))
    out.family(
        "isekai_upstream_refused",
        "counter",
        "Requests answered 503 without an upstream attempt: no_target (no selectable "
        "target), max_requests, max_pending",
    )
    for label in names:
        inner = quoted[label][1:-1]
        for reason in REFUSALS:
            out.sample(
                "isekai_upstream_refused_total",
                f'{{{inner},reason="{reason}"}}',
                clusters[label].refused.get(reason, 0),
            )

    checks: dict[tuple[str, str], list[int]] = {}  # [healthy, verdicts, checks, failures]
    for (upstream, target), row in totals.checks.items():
        counts = checks.setdefault((upstream_names[upstream], target_names[target]), [0, 0, 0, 0])
        healthy = row.get("healthy")
        if healthy is not None:
            counts[0] += bool(healthy)
            counts[1] += 1
        counts[2] += row.get("checks", 0)
        counts[3] += row.get("failures", 0)
    keys = sorted(checks)
    labels = {key: _labels(upstream=key[0], target=key[1]) for key in keys}
    out.family(
        "isekai_upstream_target_healthy",
        "gauge",
        "Active health check verdict: 1 healthy, 0 unhealthy (upstreams with health checks)",
    )
    for key in keys:
        if checks[key][1]:
            out.sample("isekai_upstream_target_healthy", labels[key], checks[key][0])
    out.family("isekai_health_checks", "counter", "Active health checks sent to the target")
    for key in keys:
        out.sample("isekai_health_checks_total", labels[key], checks[key][2])
    out.family(
        "isekai_health_check_failures",
        "counter",
        "Active health checks that failed (error, timeout or unexpected status)",
    )
    for key in keys:
        out.sample("isekai_health_check_failures_total", labels[key], checks[key][3])


def _write_policies(out: _Text, totals: Totals, limit: int) -> None:
    names = _capped(totals.policies, limit)
    merged: dict[str, list[int]] = {}
    for name, counts in totals.policies.items():
        _add_into(merged.setdefault(names[name], [0, 0, 0]), counts)
    helps = {
        "answers": "Requests a policy answered itself (refused, preflight, fault...)",
        "errors": "Exceptions raised by a policy",
        "timeouts": "Async policy phases past their deadline",
    }
    for i, what in enumerate(POLICY_COUNTS):
        out.family(f"isekai_policy_{what}", "counter", helps[what])
        for label in sorted(merged):
            out.sample(f"isekai_policy_{what}_total", _labels(policy=label), merged[label][i])


def _write_api_keys(out: _Text, totals: Totals) -> None:
    # only when some worker has an `api_key` policy (the provider exists then)
    if not totals.api_key_refusals:
        return
    out.family(
        "isekai_api_key_refusals",
        "counter",
        "Requests refused by api_key policies, by reason (missing, unknown, expired)",
    )
    for reason in sorted(totals.api_key_refusals):
        out.sample(
            "isekai_api_key_refusals_total",
            _labels(reason=reason),
            totals.api_key_refusals[reason],
        )


def _write_throttle(out: _Text, totals: Totals) -> None:
    # concurrency_limit / adaptive_concurrency policies (named in the config: bounded), and
    # load shedding (every worker ships it)
    rows = totals.throttle
    gauges = (
        ("in_flight", "Requests holding a slot of a concurrency policy (summed over workers)"),
        ("queued", "Requests waiting in a concurrency policy's queue"),
        ("limit", "A concurrency policy's limit, summed over the workers (each has its own)"),
    )
    for key, documentation in gauges:
        out.family(f"isekai_concurrency_{key}", "gauge", documentation)
        for name in sorted(rows):
            out.sample(f"isekai_concurrency_{key}", _labels(policy=name), rows[name][key])
    out.family(
        "isekai_concurrency_rejected",
        "counter",
        "Requests a concurrency policy answered 503, by reason (queue_full, queue_timeout, shed)",
    )
    for name in sorted(rows):
        for reason in ("queue_full", "queue_timeout", "shed"):
            count = rows[name]["rejected"].get(reason, 0)
            labels = _labels(policy=name, reason=reason)
            out.sample("isekai_concurrency_rejected_total", labels, count)
    out.family(
        "isekai_load_shed",
        "counter",
        "New requests answered 503 because a worker's event loop lagged (limits.max_loop_lag)",
    )
    out.sample("isekai_load_shed_total", "", totals.load_shed)
    out.family(
        "isekai_event_loop_lag_seconds",
        "gauge",
        "The last measured event-loop lag, the largest over the workers (when measured)",
    )
    out.sample("isekai_event_loop_lag_seconds", "", totals.loop_lag or 0.0)


def _write_logs(out: _Text, totals: Totals) -> None:
    out.family("isekai_log_records_written", "counter", "Log records written")
    for log_name in LOGS:
        counts = totals.logs.get(log_name, {})
        out.sample(
            "isekai_log_records_written_total", _labels(log=log_name), counts.get("written", 0)
        )
    out.family(
        "isekai_log_records_dropped",
        "counter",
        "Log records dropped because a queue was full or a sink failed",
    )
    for log_name in LOGS:
        counts = totals.logs.get(log_name, {})
        out.sample(
            "isekai_log_records_dropped_total", _labels(log=log_name), counts.get("dropped", 0)
        )
    out.family("isekai_tracing_spans", "counter", "Finished spans, exported or dropped")
    for result in ("exported", "dropped"):
        out.sample(
            "isekai_tracing_spans_total", _labels(result=result), totals.spans.get(result, 0)
        )


def _write_consumers(out: _Text, totals: Totals) -> None:
    # bounded by the workers: configured consumers and routes only (`consumer_metrics`)
    out.family(
        "isekai_consumer_requests",
        "counter",
        "Requests on routes with a credential policy, by the consumer they resolved to "
        '("" when none)',
    )
    for (consumer, route, status_class), count in sorted(totals.consumers.items()):
        labels = _labels(consumer=consumer, route=route, status_class=status_class)
        out.sample("isekai_consumer_requests_total", labels, count)


def _write_rate_limits(out: _Text, totals: Totals, limit: int) -> None:
    # labels bounded by the config: policy names (capped), tiers and key classes it lists
    if not totals.rate_limits:
        return
    names = _capped({row[0] for row in totals.rate_limits}, limit)
    merged: dict[tuple[str, str, str, str], int] = {}
    for (policy, tier, key, decision), count in totals.rate_limits.items():
        row = (names[policy], tier, key, decision)
        merged[row] = merged.get(row, 0) + count
    out.family(
        "isekai_rate_limit_decisions",
        "counter",
        "Decisions of rate_limit policies by policy, tier, key class (the configured key, or "
        "client_ip when a part was missing) and decision (allowed, limited, error_allowed, "
        "error_denied: the backend failed and on_backend_error settled it)",
    )
    for (policy, tier, key, decision), count in sorted(merged.items()):
        labels = _labels(policy=policy, tier=tier, key=key, decision=decision)
        out.sample("isekai_rate_limit_decisions_total", labels, count)


class _Families:
    """A one-scrape prometheus-client collector over ready-made families."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def _write_custom(out: _Text, merged: Mapping[str, Any]) -> None:
    # the `metrics` policies' series: few by design (each capped by max_series), so
    # prometheus-client writes them
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(custom_metrics.families(merged)))
    out.parts.append(generate_latest(registry).decode())


def render(gathered: Gathered, max_label_values: int) -> bytes:
    """The Prometheus text exposition of ``gathered`` (every worker summed)."""
    totals = sum_workers(gathered.workers)
    out = _Text(totals.buckets)
    _write_process(out, gathered)
    _write_http(out, totals, max_label_values)
    upstream_names, target_names = _label_names(totals, max_label_values)
    _write_upstreams(out, totals, upstream_names, target_names)
    _write_targets(out, totals, upstream_names, target_names)
    _write_policies(out, totals, max_label_values)
    _write_api_keys(out, totals)
    _write_throttle(out, totals)
    _write_logs(out, totals)
    _write_consumers(out, totals)
    _write_rate_limits(out, totals, max_label_values)
    if totals.custom:
        _write_custom(out, totals.custom)
    return out.body()
