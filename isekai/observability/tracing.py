"""OpenTelemetry spans for sampled requests, exported over OTLP/HTTP in a thread.

`_core` does the per-request work of W3C trace context in C (isekai/_core/tracecontext.pyx):
it checks the incoming `traceparent`, decides sampling, makes the ids, and sends one
`traceparent` upstream for every request. Only a *sampled* request reaches Python, once, when it
is over: `Tracer.record` gets the tuple `_core` made (fields in `SPAN_FIELDS` order) and makes
the server span and, when the request went upstream, its client span, with the ids `_core`
chose (the client span's id is the parent-id the upstream saw) and the times it measured.

The spans are finished when they are made, so they are built as the SDK's `ReadableSpan` (what
its exporters read) and handed to the processor directly: the SDK's tracer would only redo
what `_core` did (ids, sampling, timing) through a mutable span, several times slower.

The SDK's BatchSpanProcessor queues finished spans and exports them from its own thread; the
loop only appends to a deque. A span that finds the queue full is dropped and counted, and so
is one in a failed export: `Tracer.stats` is the worker's "tracing" statistics provider.

The tracer is made in the process that serves (a forked worker, or the single process), never
in the master: the processor's thread would not survive the fork.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from isekai.config.observability import Tracing as TracingConfig
from isekai.config.schema import Config
from isekai.errors import ConfigError

__all__ = ["SPAN_FIELDS", "Tracer", "check_exporter", "open_tracer"]

log = logging.getLogger("isekai.tracing")

# The fields of the tuple `_core` hands over for a sampled request (`_span_record` in
# isekai/_core/protocol.pyx makes it in this order).
SPAN_FIELDS = (
    "trace_id",  # 32 hex digits
    "span_id",  # the server span's, 16 hex digits
    "parent_id",  # the incoming traceparent's parent-id, or None (a trace begun here)
    "tracestate",  # bytes or None
    "end",  # wall-clock seconds when the request was over
    "duration",  # seconds since the request began
    "method",
    "route",  # route name, or None (no route matched)
    "path",
    "query",  # b"" or b"?..."
    "scheme",
    "host",  # the request's Host, or None
    "client_ip",  # after trusted_proxies
    "peer_ip",
    "user_agent",  # or None
    "http11",
    "status",  # the status the client got
    "request_id",
    "client_span_id",  # None: the request never went upstream
    "target_host",
    "target_port",
    "upstream_start",  # seconds after the request began
    "upstream_status",  # 0: no response head came
    "upstream_failure",  # 0, or an upstream FAIL_* + 1
)
_F = {name: index for index, name in enumerate(SPAN_FIELDS)}

# isekai/_core/upstream.pxd FAIL_* + 1 -> error.type of the client span
FAILURES = {1: "connect", 2: "timeout", 3: "protocol", 4: "unavailable"}
METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH")
)

SAMPLED = TraceFlags(TraceFlags.SAMPLED)
UNSET = Status(StatusCode.UNSET)
ERROR = Status(StatusCode.ERROR)

EXPORTER_MISSING = (
    "observability.tracing is enabled but the OTLP exporter is not installed: "
    "pip install 'isekai[otlp]'"
)


def check_exporter() -> type[SpanExporter]:
    """The OTLP/HTTP span exporter class; ConfigError when the `[otlp]` extra is missing."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(EXPORTER_MISSING) from exc
    return OTLPSpanExporter


class _CountingExporter(SpanExporter):
    """Counts what it is handed (`taken`), what reached the collector and what did not.
    Runs in the processor's thread; each counter has one writer."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.taken = 0
        self.exported = 0
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.taken += len(spans)
        try:
            result = self.exporter.export(spans)
        except Exception:
            self.failed += len(spans)
            raise
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class _BoundedQueue:
    """The batch processor behind a queue bound of our own: a span that finds `queue_size`
    spans waiting is dropped (and counted) here, instead of pushing out the oldest."""

    def __init__(self, batch: BatchSpanProcessor, counting: _CountingExporter, size: int):
        self.batch = batch
        self.counting = counting
        self.size = size
        self.queued = 0  # spans handed to the batch processor (loop thread only)
        self.dropped = 0

    def add(self, span: ReadableSpan) -> None:
        if self.queued - self.counting.taken >= self.size:
            self.dropped += 1
            return
        self.queued += 1
        self.batch.on_end(span)


class Tracer:
    """Makes and exports the spans of sampled requests (`record`, installed in `_core`)."""

    def __init__(
        self,
        config: TracingConfig,
        current_config: Callable[[], Config],
        exporter: SpanExporter | None = None,
    ) -> None:
        if exporter is None:
            exporter = check_exporter()(
                endpoint=config.endpoint.rstrip("/") + "/v1/traces",
                timeout=config.export_timeout,
            )
        self.counting = _CountingExporter(exporter)
        batch = BatchSpanProcessor(
            self.counting,
            max_queue_size=config.queue_size + config.batch_size,  # never full: ours bounds it
            schedule_delay_millis=config.export_interval * 1000.0,
            max_export_batch_size=config.batch_size,
            export_timeout_millis=config.export_timeout * 1000.0,
        )
        self.batch = batch
        self.queue = _BoundedQueue(batch, self.counting, config.queue_size)
        # the pid tells the workers apart (this runs in the worker, after the fork)
        self.resource = Resource.create(
            {"service.name": config.service_name, "process.pid": os.getpid()}
        )
        self.scope = InstrumentationScope("isekai")
        self._current_config = current_config
        self._paths_of: Config | None = None
        self._paths: dict[str, str] = {}
        self._closed = False

    def stats(self) -> dict[str, int]:
        """Spans exported, and dropped (queue full or export failed), since start."""
        return {
            "exported": self.counting.exported,
            "dropped": self.queue.dropped + self.counting.failed,
        }

    def shutdown(self) -> None:
        """Export what is queued (within the export timeout) and stop the thread."""
        if not self._closed:
            self._closed = True
            self.batch.shutdown()

    def _route_path(self, name: str) -> str | None:
        config = self._current_config()
        if config is not self._paths_of:
            self._paths = {route.name: route.match.path for route in config.routes}
            self._paths_of = config
        return self._paths.get(name)

    def record(self, r: tuple) -> None:
        """The spans of one sampled request that is over (`r` in `SPAN_FIELDS` order)."""
        end = int(r[_F["end"]] * 1e9)
        start = end - int(r[_F["duration"]] * 1e9)
        trace_id = int(r[_F["trace_id"]], 16)
        state = r[_F["tracestate"]]
        trace_state = TraceState.from_header([state.decode("latin-1")]) if state else None
        parent_id = r[_F["parent_id"]]
        parent = None
        if parent_id is not None:
            parent = SpanContext(trace_id, int(parent_id, 16), True, SAMPLED, trace_state)
        context = SpanContext(trace_id, int(r[_F["span_id"]], 16), False, SAMPLED, trace_state)
        method = r[_F["method"]]
        route = r[_F["route"]]
        status = r[_F["status"]]
        attributes = _request_attributes(r, method)
        path = self._route_path(route) if route is not None else None
        name = method.decode("latin-1") if method in METHODS else "HTTP"
        if path is not None:
            attributes["http.route"] = path
            name = f"{name} {path}"
        if route is not None:
            attributes["isekai.route"] = route
        if status:
            attributes["http.response.status_code"] = status
        outcome = UNSET
        if status >= 500:
            attributes["error.type"] = str(status)
            outcome = ERROR
        client_id = r[_F["client_span_id"]]
        if client_id is not None:
            client = SpanContext(trace_id, int(client_id, 16), False, SAMPLED, trace_state)
            self.queue.add(self._client_span(r, method, start, end, client, context))
        self.queue.add(
            ReadableSpan(
                name,
                context,
                parent,
                self.resource,
                attributes,
                kind=SpanKind.SERVER,
                status=outcome,
                start_time=start,
                end_time=end,
                instrumentation_scope=self.scope,
            )
        )

    def _client_span(
        self, r: tuple, method: bytes, start: int, end: int, context: Any, parent: Any
    ) -> ReadableSpan:
        known = method in METHODS
        attributes: dict[str, Any] = {
            "http.request.method": method.decode("latin-1") if known else "_OTHER",
            "server.address": r[_F["target_host"]],
            "server.port": r[_F["target_port"]],
            "network.protocol.version": "1.1",
        }
        if not known:
            attributes["http.request.method_original"] = method.decode("latin-1")
        status = r[_F["upstream_status"]]
        failure = r[_F["upstream_failure"]]
        outcome = UNSET
        if status:
            attributes["http.response.status_code"] = status
        if failure and not status:
            attributes["error.type"] = FAILURES.get(failure, "_OTHER")
            outcome = ERROR
        elif status >= 400:
            attributes["error.type"] = str(status)
            outcome = ERROR
        return ReadableSpan(
            method.decode("latin-1") if known else "HTTP",
            context,
            parent,
            self.resource,
            attributes,
            kind=SpanKind.CLIENT,
            status=outcome,
            start_time=start + int(r[_F["upstream_start"]] * 1e9),
            end_time=end,
            instrumentation_scope=self.scope,
        )


def _request_attributes(r: tuple, method: bytes) -> dict[str, Any]:
    """The server span's request attributes (OTel HTTP semantic conventions)."""
    known = method in METHODS
    query = r[_F["query"]]
    attributes: dict[str, Any] = {
        "http.request.method": method.decode("latin-1") if known else "_OTHER",
        "url.path": r[_F["path"]].decode("latin-1"),
        "url.scheme": r[_F["scheme"]].decode("latin-1"),
        "client.address": r[_F["client_ip"]].decode("latin-1"),
        "network.peer.address": r[_F["peer_ip"]].decode("latin-1"),
        "network.protocol.version": "1.1" if r[_F["http11"]] else "1.0",
        "isekai.request_id": r[_F["request_id"]].decode("latin-1"),
    }
    if not known:
        attributes["http.request.method_original"] = method.decode("latin-1")
    if query:
        attributes["url.query"] = query[1:].decode("latin-1")
    host = r[_F["host"]]
    if host:
        address, port = _split_host(host.decode("latin-1"))
        attributes["server.address"] = address
        if port is not None:
            attributes["server.port"] = port
    agent = r[_F["user_agent"]]
    if agent is not None:
        attributes["user_agent.original"] = agent.decode("latin-1")
    return attributes


def _split_host(host: str) -> tuple[str, int | None]:
    """A Host value (`name`, `name:port`, `[v6]:port`) as address and port."""
    if host.startswith("["):
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port = host.rpartition(":") if ":" in host else (host, "", "")
    return address, int(port) if port.isdigit() else None


def open_tracer(
    config: TracingConfig, state: Any, current_config: Callable[[], Config]
) -> Tracer | None:
    """Turn tracing on in `_core` (``state``: the worker's ServerState) and return the tracer
    making the spans; None (tracing off, nothing changed) when not enabled. Raises ConfigError
    when the exporter is not installed."""
    if not config.enabled:
        return None
    tracer = Tracer(config, current_config)
    state.set_tracing(True, config.sample_ratio, tracer.record)
    return tracer
