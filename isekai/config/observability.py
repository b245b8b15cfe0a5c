"""The ``observability:`` section (metrics, tracing, access log) and a route's ``access_log``.

Same rules as ``schema.py``: one frozen dataclass per YAML object, each field declared with
``meta.setting`` (the one description the loader, the JSON Schema and the docs tables use).
"""

from __future__ import annotations

from dataclasses import dataclass

from isekai.config import defaults, rules
from isekai.config.meta import item, setting

__all__ = [
    "ACCESS_LOG_FIELDS",
    "AccessLog",
    "Elasticsearch",
    "Health",
    "Metrics",
    "Observability",
    "RouteAccessLog",
    "Tracing",
]

# Every field an access-log line can carry, in the order lines print them.
ACCESS_LOG_FIELDS = (
    "ts",
    "request_id",
    "trace_id",
    "span_id",
    "client_ip",
    "method",
    "path",
    "query",
    "status",
    "route",
    "upstream",
    "consumer",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "user_agent",
    "referer",
    "host",
    "listener",
    "headers",
)


@dataclass(frozen=True, slots=True)
class Metrics:
    """Prometheus exposition of the gateway's counters, summed over all workers."""

    enabled: bool = setting(
        "bool",
        "Serve `GET /metrics` (on the admin listener, and on `bind` when set).",
        default=defaults.METRICS_ENABLED,
    )
    bind: str | None = setting(
        "bind",
        "A listener of its own serving only `GET /metrics` (and `GET /health/ready`), e.g. "
        "`127.0.0.1:9091`; needs no admin login.",
        default=None,
        default_doc="— (only the admin listener)",
    )
    host: str | None = setting("string", "Parsed from bind.", default=None, yaml=False)
    port: int | None = setting("int", "Parsed from bind.", default=None, yaml=False)
    max_label_values: int = setting(
        "int",
        "Distinct values one label (route, upstream, policy, target) may take; the rest are "
        'summed under `"_other"`.',
        default=defaults.METRICS_MAX_LABEL_VALUES,
        minimum=1,
    )

    validate = staticmethod(rules.metrics)


@dataclass(frozen=True, slots=True)
class Tracing:
    """OpenTelemetry tracing: W3C trace context, OTLP/HTTP export."""

    enabled: bool = setting(
        "bool",
        "Trace context and spans: every request gets a trace id and sends one `traceparent` "
        "upstream (sampled or not); sampled requests make spans. Off: trace headers pass "
        "through untouched.",
        default=defaults.TRACING_ENABLED,
    )
    endpoint: str = setting(
        "string",
        "OTLP/HTTP collector base URL; spans are posted to `<endpoint>/v1/traces`.",
        default=defaults.TRACING_ENDPOINT,
        what="an http:// or https:// URL",
    )
    sample_ratio: float = setting(
        "number",
        "Share of new traces sampled (0 to 1); a request whose parent is sampled is always "
        "sampled, one whose parent is not never is.",
        default=defaults.TRACING_SAMPLE_RATIO,
        minimum=0,
        maximum=1,
    )
    service_name: str = setting(
        "string", "`service.name` of the spans.", default=defaults.TRACING_SERVICE_NAME
    )
    export_interval: float = setting(
        "duration",
        "Longest time a finished span waits before it is exported.",
        default=defaults.TRACING_EXPORT_INTERVAL,
    )
    export_timeout: float = setting(
        "duration", "Time one export request may take.", default=defaults.TRACING_EXPORT_TIMEOUT
    )
    queue_size: int = setting(
        "int",
        "Finished spans waiting for export; when full, spans are dropped and counted.",
        default=defaults.TRACING_QUEUE_SIZE,
        minimum=1,
    )
    batch_size: int = setting(
        "int", "Spans per export request.", default=defaults.TRACING_BATCH_SIZE, minimum=1
    )

    validate = staticmethod(rules.tracing)


@dataclass(frozen=True, slots=True)
class Elasticsearch:
    """An Elasticsearch sink for access-log lines (bulk API)."""

    url: str = setting(
        "string", "Base URL of the cluster, e.g. `http://127.0.0.1:9200`.", what="a URL"
    )
    index: str = setting(
        "string", "Index the lines go to.", default=defaults.ACCESS_LOG_ES_INDEX, what="an index"
    )

    validate = staticmethod(rules.elasticsearch)


@dataclass(frozen=True, slots=True)
class AccessLog:
    """One line per finished request, written off the request path."""

    enabled: bool = setting("bool", "Write access-log lines.", default=defaults.ACCESS_LOG_ENABLED)
    path: str = setting(
        "string",
        "`stdout`, or a file (appended to; reopened on SIGUSR1 for log rotation).",
        default=defaults.ACCESS_LOG_PATH,
        what="stdout or a file path",
    )
    format: str = setting(
        "enum",
        "`json` (one object per line) or `combined` (the NCSA combined format).",
        default=defaults.ACCESS_LOG_FORMAT,
        choices=defaults.ACCESS_LOG_FORMATS,
        unsupported="access-log format {value!r} is not supported (supported: {choices})",
    )
    fields: tuple[str, ...] = setting(
        "list",
        "Fields of a JSON line, in this order.",
        default=defaults.ACCESS_LOG_DEFAULT_FIELDS,
        item=item(
            "enum",
            choices=ACCESS_LOG_FIELDS,
            unsupported="unknown access-log field {value!r} (fields: {choices})",
        ),
        unique="{text!r} is listed twice",
        default_doc="all but `span_id`, `query`, `referer`, `host`, `listener`, `headers`",
    )
    headers: tuple[str, ...] = setting(
        "list",
        "Request headers recorded under `headers` (add `headers` to `fields`).",
        default=(),
        item=item("header_name"),
        what="a list of header names",
        default_doc="none",
    )
    redact: tuple[str, ...] = setting(
        "list",
        "More headers whose values are replaced by `[redacted]`; `Authorization`, "
        "`Proxy-Authorization`, `Cookie` and `Set-Cookie` always are.",
        default=(),
        item=item("header_name"),
        what="a list of header names",
        default_doc="none",
    )
    sample: float = setting(
        "number",
        "Share of requests logged (0 to 1); a route's `access_log.sample` overrides it.",
        default=1.0,
        minimum=0,
        maximum=1,
    )
    queue_size: int = setting(
        "int",
        "Lines waiting to be written; when full, lines are dropped and counted, requests are "
        "never slowed.",
        default=defaults.ACCESS_LOG_QUEUE_SIZE,
        minimum=1,
    )
    elasticsearch: Elasticsearch | None = setting(
        "object",
        "Also send the lines to Elasticsearch (bulk API).",
        default=None,
        cls=Elasticsearch,
        default_doc="—",
    )
    logstash: str | None = setting(
        "string",
        "Also send the lines, one JSON object per line, to Logstash's TCP input (`host:port`).",
        default=None,
        what="host:port",
        default_doc="—",
    )

    validate = staticmethod(rules.access_log)


@dataclass(frozen=True, slots=True)
class RouteAccessLog:
    """A route's own access-log setting."""

    enabled: bool = setting(
        "bool",
        "`false`: this route's requests are never in the access log.",
        default=True,
    )
    sample: float | None = setting(
        "number",
        "Share of this route's requests logged (0 to 1).",
        default=None,
        minimum=0,
        maximum=1,
        default_doc="`observability.access_log.sample`",
    )


@dataclass(frozen=True, slots=True)
class Health:
    """What `GET /health/ready` requires besides the store and the workers answering."""

    min_healthy_share: float = setting(
        "number",
        "Not ready (503) while an upstream has a smaller share of reachable targets (0 to 1; "
        "0 reports the shares without acting on them).",
        default=0.0,
        minimum=0,
        maximum=1,
    )


@dataclass(frozen=True, slots=True)
class Observability:
    """Metrics, tracing and access logs."""

    metrics: Metrics = setting(
        "object",
        "Prometheus metrics.",
        default_factory=Metrics,
        cls=Metrics,
        default_doc="on, on the admin listener",
    )
    tracing: Tracing = setting(
        "object",
        "OpenTelemetry tracing.",
        default_factory=Tracing,
        cls=Tracing,
        default_doc="off (trace headers passed through)",
    )
    access_log: AccessLog = setting(
        "object",
        "Access log.",
        default_factory=AccessLog,
        cls=AccessLog,
        default_doc="off",
    )
    health: Health = setting(
        "object",
        "The readiness check `GET /health/ready`.",
        default_factory=Health,
        cls=Health,
        default_doc="store and workers only",
    )
