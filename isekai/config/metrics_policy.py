"""The ``metrics`` policy family's config: custom counters and histograms (`MetricsConfig`).

A metric is declared once, in one ``metrics`` policy: its name (the Prometheus grammar, without
colons, which are for recording rules; never ``isekai_...``, our own), its labels (label name
-> where the value comes from, `LABEL_SOURCES`), and for a histogram its buckets. The name a
scrape shows is the *family name*: a counter's name with ``_total`` taken off (the exposition
adds it back to the sample), a histogram's name as written (its samples add ``_bucket``,
``_sum``, ``_count``). Two declarations of one family name, in one policy or across policies,
are an error: `first_duplicate` finds it for the whole-config rule (``rules.config``) and the
admin API's change check (``config.changes``).

The runtime (``isekai.policies.metrics``) reads the label sources with `parse_label_source`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config import defaults
from isekai.config.meta import item, setting

Where = Any  # isekai.config.rules.Where (which imports this module)

__all__ = [
    "LABEL_NAME_PATTERN",
    "LABEL_SOURCES",
    "LABEL_SOURCE_PATTERN",
    "METRIC_NAME_PATTERN",
    "CustomCounter",
    "CustomHistogram",
    "MetricsConfig",
    "check_label_name",
    "check_metric_name",
    "family_name",
    "first_duplicate",
    "metrics_of",
    "parse_label_source",
]

METRIC_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
LABEL_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
OURS = "isekai_"  # the built-in metrics' prefix
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count", "_total")
# "header:NAME", "param:NAME", "ctx:KEY", and those without an argument (in the order of
# `_core.protocol.ProxyRequest.LABEL_SOURCES`, which reads them)
LABEL_SOURCES = ("header", "param", "ctx", "route", "method", "status", "status_class", "listener")
LABEL_SOURCE_PATTERN = (
    r"^(route|method|status|status_class|listener|header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
    r"|param:[A-Za-z_][A-Za-z0-9_]*|ctx:\S+)$"
)
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN[1:-1])
_LABEL_NAME = _METRIC_NAME
_SOURCE = re.compile(LABEL_SOURCE_PATTERN[1:-1])
_SOURCES_TEXT = (
    "header:NAME, param:NAME, ctx:KEY, " + ", ".join(LABEL_SOURCES[3:-1]) + " or listener"
)


def check_metric_name(name: str) -> str:
    """A custom metric name: ``[A-Za-z_][A-Za-z0-9_]*``, not ``isekai_...``."""
    if ":" in name and _METRIC_NAME.fullmatch(name.replace(":", "_")):
        raise ValueError(f"metric name {name!r}: colons are reserved for recording rules; use '_'")
    if not _METRIC_NAME.fullmatch(name):
        raise ValueError(
            f"not a valid metric name: {name!r} (letters, digits and '_', not starting with a "
            "digit)"
        )
    if name.lower().startswith(OURS):
        raise ValueError(f"metric names starting with {OURS!r} are the gateway's own: {name!r}")
    return name


def check_label_name(name: str) -> str:
    """A label name: ``[A-Za-z_][A-Za-z0-9_]*``, neither ``le`` nor ``__...`` (reserved)."""
    if not _LABEL_NAME.fullmatch(name):
        raise ValueError(
            f"not a valid label name: {name!r} (letters, digits and '_', not starting with a digit)"
        )
    if name.startswith("__"):
        raise ValueError(f"label names starting with '__' are reserved by Prometheus: {name!r}")
    if name == "le":
        raise ValueError("'le' is reserved for histogram buckets")
    return name


def parse_label_source(text: str) -> tuple[str, str | None]:
    """``"header:X-Tier"`` -> ``("header", "x-tier")``, ``"route"`` -> ``("route", None)``."""
    if not _SOURCE.fullmatch(text):
        raise ValueError(f"not a label source: {text!r} (one of {_SOURCES_TEXT})")
    kind, _, argument = text.partition(":")
    if kind == "header":
        return kind, argument.lower()
    return kind, argument or None


def _check_buckets(values: dict[str, Any], where: Where) -> None:
    bounds = values.get("buckets")
    if bounds is None:
        size = values.get("value", "duration") != "duration"
        values["buckets"] = (
            defaults.METRIC_SIZE_BUCKETS if size else defaults.METRIC_DURATION_BUCKETS
        )
        return
    previous = -math.inf  # each bound is a finite number (its kind)
    for i, bound in enumerate(bounds):
        if bound <= previous:
            message = f"bucket bounds must increase: {bound:g} after {previous:g}"
            raise where.item_error("buckets", i, message)
        previous = bound
    values["buckets"] = tuple(float(bound) for bound in bounds)


def _histogram(values: dict[str, Any], where: Where) -> None:
    name = values["name"]
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            message = (
                f"a histogram's name cannot end in {suffix!r}: the exposition adds _bucket, "
                "_sum and _count"
            )
            raise where.error("name", message)
    _check_buckets(values, where)


_NAME_DOC = "The metric name (Prometheus grammar; not `isekai_…`, the gateway's own)."
_HELP_DOC = "The `# HELP` text of the metric."
_LABELS_DOC = (
    "Label name → source of its value: `header:NAME`, `param:NAME` (a path parameter), "
    "`ctx:KEY` (a value an earlier policy put in the request context), `route`, `method`, "
    '`status`, `status_class`, `listener`. A missing value is `""`.'
)
_MAX_SERIES_DOC = (
    "Distinct label sets kept per worker; past it, new ones are counted under the label set "
    'whose every value is `"_other"`.'
)


@dataclass(frozen=True, slots=True)
class CustomCounter:
    """A counter: one per request, or its body bytes, by label set."""

    entity: ClassVar[str] = "metric"
    kind: ClassVar[str] = "counter"

    name: str = setting(
        "metric_name",
        _NAME_DOC + " Scrapes show it ending in `_total` (added when missing).",
    )
    help: str = setting("string", _HELP_DOC, default="", default_doc="empty")
    labels: tuple[tuple[str, str], ...] = setting(
        "metric_labels", _LABELS_DOC, default=(), default_doc="none"
    )
    value: str = setting(
        "enum",
        "What a request adds: `requests` (1), `request_bytes` or `response_bytes` (body bytes).",
        default="requests",
        choices=("requests", "request_bytes", "response_bytes"),
    )
    max_series: int = setting("int", _MAX_SERIES_DOC, default=defaults.METRIC_MAX_SERIES, minimum=1)


@dataclass(frozen=True, slots=True)
class CustomHistogram:
    """A histogram of each request's duration or body size, by label set."""

    entity: ClassVar[str] = "metric"
    kind: ClassVar[str] = "histogram"

    name: str = setting("metric_name", _NAME_DOC)
    help: str = setting("string", _HELP_DOC, default="", default_doc="empty")
    labels: tuple[tuple[str, str], ...] = setting(
        "metric_labels", _LABELS_DOC, default=(), default_doc="none"
    )
    value: str = setting(
        "enum",
        "What is observed: `duration` (seconds, first byte in to last byte out), "
        "`request_bytes` or `response_bytes` (body bytes).",
        default="duration",
        choices=("duration", "request_bytes", "response_bytes"),
    )
    buckets: tuple[float, ...] = setting(
        "list",
        "Upper bounds of the buckets, increasing and finite (`+Inf` is implied).",
        default=None,
        item=item("number"),
        what="a list of numbers",
        empty="needs at least one bucket bound",
        default_doc="the built-in latency buckets (`0.0005` … `10`) for `duration`; "
        "256 B … 16 MiB by four for sizes",
    )
    max_series: int = setting("int", _MAX_SERIES_DOC, default=defaults.METRIC_MAX_SERIES, minimum=1)

    validate = staticmethod(_histogram)


def family_name(metric: CustomCounter | CustomHistogram) -> str:
    """The name a scrape groups the metric's samples under (a counter's without ``_total``)."""
    if metric.kind == "counter" and metric.name.endswith("_total"):
        return metric.name[: -len("_total")]
    return metric.name


def metrics_of(config: MetricsConfig) -> Iterator[tuple[str, CustomCounter | CustomHistogram]]:
    """``(path under the policy, metric)`` of every metric declared, in order."""
    for i, counter in enumerate(config.counters):
        yield f"counters[{i}]", counter
    for i, histogram in enumerate(config.histograms):
        yield f"histograms[{i}]", histogram


def first_duplicate(
    policies: Iterable[tuple[str, Any]],
) -> tuple[str, CustomCounter | CustomHistogram, str] | None:
    """Over ``(config path, PolicySpec)`` pairs in config order (policies of other types are
    skipped), the first metric whose family name an earlier one has: ``(path of its name, the
    metric, message)``; None when all differ."""
    seen: dict[str, str] = {}
    for at, spec in policies:
        if spec.type != MetricsConfig.family:
            continue
        for under, metric in metrics_of(spec.options):
            family = family_name(metric)
            path = f"{at}.{under}"
            if family in seen:
                message = f"metric {family!r} is already declared at {seen[family]}"
                return f"{path}.name", metric, message
            seen[family] = path
    return None


class _Declared:
    # a policy being read, as `first_duplicate` takes it
    __slots__ = ("options", "type")

    def __init__(self, options: Any) -> None:
        self.type = MetricsConfig.family
        self.options = options


def _metrics(values: dict[str, Any], where: Where) -> None:
    if not values.get("counters") and not values.get("histograms"):
        raise where.error(None, "needs at least one metric in 'counters' or 'histograms'")
    found = first_duplicate([(where.path, _Declared(MetricsConfig(**values)))])
    if found is not None:
        _, metric, message = found
        raise where.of(metric).error("name", message)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Custom metrics: counters and histograms of the requests, labelled by their headers,
    path parameters, context values, route, method or status (counted after the last byte)."""

    family: ClassVar[str] = "metrics"

    counters: tuple[CustomCounter, ...] = setting(
        "list",
        "Counters.",
        default=(),
        item=item("object", cls=CustomCounter),
        what="a list of counters",
        default_doc="none",
    )
    histograms: tuple[CustomHistogram, ...] = setting(
        "list",
        "Histograms.",
        default=(),
        item=item("object", cls=CustomHistogram),
        what="a list of histograms",
        default_doc="none",
    )

    validate = staticmethod(_metrics)
