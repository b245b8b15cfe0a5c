"""Tracing through real sockets: a gateway with `observability.tracing`, a real upstream that
records the `traceparent` it got, and a local OTLP/HTTP receiver that decodes what the gateway
exports (ExportTraceServiceRequest, opentelemetry-proto).

A `ThreadedWorker` stops with a drain, which shuts the tracer down and so exports every queued
span: after the `with` block the receiver holds all of them.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import re
import subprocess
import sys
import threading
import time

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from tests.support.gateway import REPO, wait_for
from tests.support.worker import ThreadedWorker, app_config

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-0([01])")


class Receiver:
    """An OTLP/HTTP collector on 127.0.0.1: `spans` are (resource attributes, Span) pairs.
    Holds every export until `release` is set (set from the start unless `hold`)."""

    def __init__(self, hold: bool = False) -> None:
        self.spans: list[tuple[dict, Span]] = []
        self.exports = 0
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest.FromString(body)
        await self._loop.run_in_executor(None, self.release.wait, 10)
        self.exports += 1
        for resource_spans in message.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> Receiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def by_kind(self, kind: int) -> list[Span]:
        return [span for _, span in self.spans if span.kind == kind]


def attributes(items) -> dict:
    out = {}
    for item in items:
        value = item.value
        out[item.key] = getattr(value, value.WhichOneof("value"))
    return out


def tracing_config(upstream_port: int, receiver_port: int, ratio: float, **extra) -> str:
    options = "".join(f", {key}: {value}" for key, value in extra.items())
    return (
        app_config(
            upstream_port,
            routes="  - {name: fixed, match: {path: /fixed}, respond: {body: fixed}}\n"
            '  - {name: nowhere, match: {path: "/down/*"}, upstream: down}\n',
        ).replace("upstreams:\n", 'upstreams:\n  down: {targets: ["127.0.0.1:1"]}\n')
        + f"""
observability:
  tracing: {{enabled: true, endpoint: "http://127.0.0.1:{receiver_port}", sample_ratio: {ratio},
            service_name: edge-gw, export_interval: 100ms{options}}}
"""
    )


def send(port: int, path: str, headers: list[tuple[str, str]] = ()) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest("GET", path)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def received(upstream, name: str) -> list[str]:
    """The values of field `name` in the last request the upstream got."""
    return [v for k, v in upstream.requests[-1]["headers"] if k == name]


def serve(upstream, receiver, ratio, requests, **extra):
    """Run a worker, send `requests` ((path, headers) pairs), stop it (so spans are flushed);
    return the statuses and the worker's tracing statistics."""
    with ThreadedWorker(tracing_config(upstream.port, receiver.port, ratio, **extra)) as gw:
        statuses = [send(gw.port, path, headers)[0] for path, headers in requests]
        stats = gw.worker.stats_providers["tracing"]
    return statuses, stats()


@pytest.fixture
def receiver():
    with Receiver() as r:
        yield r


def test_tracing_sampled_parent_gives_server_and_client_spans(upstream, receiver):
    incoming = f"00-{TRACE}-{PARENT}-01"
    headers = [("traceparent", incoming), ("tracestate", "vendor=a1"), ("User-Agent", "probe/1")]
    statuses, stats = serve(upstream, receiver, 0, [("/app/echo/7?x=1", headers)])
    assert statuses == [200]
    [sent] = received(upstream, "traceparent")
    trace_id, client_id, flags = TRACEPARENT.fullmatch(sent).groups()
    assert (trace_id, flags) == (TRACE, "1")
    assert received(upstream, "tracestate") == ["vendor=a1"]

    [server] = receiver.by_kind(Span.SPAN_KIND_SERVER)
    [client] = receiver.by_kind(Span.SPAN_KIND_CLIENT)
    assert server.trace_id.hex() == client.trace_id.hex() == TRACE
    assert server.parent_span_id.hex() == PARENT
    assert client.parent_span_id == server.span_id
    assert client.span_id.hex() == client_id  # the id the upstream saw is the client span's
    assert server.trace_state == "vendor=a1"
    assert server.name == "GET /app/*"
    assert server.start_time_unix_nano <= client.start_time_unix_nano
    assert client.end_time_unix_nano <= server.end_time_unix_nano
    attrs = attributes(server.attributes)
    assert attrs["http.request.method"] == "GET"
    assert attrs["url.path"] == "/app/echo/7"
    assert attrs["url.query"] == "x=1"
    assert attrs["url.scheme"] == "http"
    assert attrs["server.address"] == "127.0.0.1"
    assert attrs["client.address"] == "127.0.0.1"
    assert attrs["user_agent.original"] == "probe/1"
    assert attrs["network.protocol.version"] == "1.1"
    assert attrs["http.route"] == "/app/*"
    assert attrs["http.response.status_code"] == 200
    assert "error.type" not in attrs
    client_attrs = attributes(client.attributes)
    assert client.name == "GET"
    assert client_attrs["server.address"] == "127.0.0.1"
    assert client_attrs["server.port"] == upstream.port
    assert client_attrs["http.response.status_code"] == 200
    resource = receiver.spans[0][0]
    assert resource["service.name"] == "edge-gw"
    assert stats == {"exported": 2, "dropped": 0}


def test_tracing_new_trace_at_ratio_one(upstream, receiver):
    statuses, _ = serve(upstream, receiver, 1, [("/app/echo", [])])
    assert statuses == [200]
    [sent] = received(upstream, "traceparent")
    trace_id, client_id, flags = TRACEPARENT.fullmatch(sent).groups()
    assert flags == "1"
    assert received(upstream, "tracestate") == []
    [server] = receiver.by_kind(Span.SPAN_KIND_SERVER)
    [client] = receiver.by_kind(Span.SPAN_KIND_CLIENT)
    assert server.trace_id.hex() == trace_id
    assert server.parent_span_id == b""  # a root span
    assert client.span_id.hex() == client_id and client.parent_span_id == server.span_id


def test_tracing_ratio_zero_exports_nothing_but_propagates(upstream, receiver):
    statuses, stats = serve(upstream, receiver, 0, [("/app/echo", [])] * 3)
    assert statuses == [200] * 3
    sent = [
        [v for k, v in request["headers"] if k == "traceparent"] for request in upstream.requests
    ]
    assert all(len(values) == 1 for values in sent)
    matches = [TRACEPARENT.fullmatch(values[0]) for values in sent]
    assert all(m is not None and m.group(3) == "0" for m in matches)
    assert len({m.group(1) for m in matches}) == 3  # a new trace per request
    assert receiver.spans == []
    assert stats == {"exported": 0, "dropped": 0}


def test_tracing_unsampled_parent_passes_unchanged(upstream, receiver):
    incoming = f"00-{TRACE}-{PARENT}-00"
    headers = [("traceparent", incoming), ("tracestate", "a=1"), ("tracestate", "b=2")]
    statuses, _ = serve(upstream, receiver, 1, [("/app/echo", headers)])
    assert statuses == [200]
    assert received(upstream, "traceparent") == [incoming]
    assert received(upstream, "tracestate") == ["a=1,b=2"]
    assert receiver.spans == []  # parent-based: an unsampled parent is never sampled here


@pytest.mark.parametrize(
    "headers",
    [
        [("traceparent", f"00-{TRACE.upper()}-{PARENT}-01")],  # upper-case hex
        [("traceparent", f"00-{TRACE}-{PARENT}-01-extra")],  # version 00 is 55 characters
        [("traceparent", f"ff-{TRACE}-{PARENT}-01")],
        [("traceparent", f"00-{TRACE}-{PARENT}-01"), ("traceparent", f"00-{TRACE}-{PARENT}-01")],
    ],
    ids=["upper-case", "too-long", "version-ff", "duplicated"],
)
def test_tracing_invalid_parent_is_replaced(upstream, receiver, headers):
    statuses, _ = serve(upstream, receiver, 0, [("/app/echo", [*headers, ("tracestate", "x=1")])])
    assert statuses == [200]
    [sent] = received(upstream, "traceparent")  # exactly one, and valid
    trace_id, _, flags = TRACEPARENT.fullmatch(sent).groups()
    assert trace_id != TRACE and flags == "0"  # treated as absent: a new, unsampled trace
    assert received(upstream, "tracestate") == []  # dropped with its traceparent
    assert receiver.spans == []


def test_tracing_later_version_is_sent_as_version_00(upstream, receiver):
    incoming = f"01-{TRACE}-{PARENT}-00-more"
    statuses, _ = serve(upstream, receiver, 1, [("/app/echo", [("traceparent", incoming)])])
    assert statuses == [200]
    assert received(upstream, "traceparent") == [f"00-{TRACE}-{PARENT}-00"]


def test_tracing_direct_route_and_upstream_failure(upstream, receiver):
    statuses, stats = serve(upstream, receiver, 1, [("/fixed", []), ("/down/x", [])])
    assert statuses == [200, 502]
    servers = {attributes(s.attributes)["url.path"]: s for s in receiver.by_kind(2)}
    assert set(servers) == {"/fixed", "/down/x"}
    [client] = receiver.by_kind(Span.SPAN_KIND_CLIENT)  # the direct route has none
    assert client.parent_span_id == servers["/down/x"].span_id
    assert attributes(client.attributes)["error.type"] == "connect"
    assert client.status.code == Status.STATUS_CODE_ERROR
    failed = servers["/down/x"]
    assert attributes(failed.attributes)["error.type"] == "502"
    assert attributes(failed.attributes)["http.response.status_code"] == 502
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert servers["/fixed"].status.code == Status.STATUS_CODE_UNSET
    assert stats == {"exported": 3, "dropped": 0}


def test_tracing_drops_and_counts_when_the_queue_is_full(upstream):
    with Receiver(hold=True) as receiver:
        with ThreadedWorker(
            tracing_config(
                upstream.port, receiver.port, 1, queue_size=2, batch_size=1, export_timeout="5s"
            )
        ) as gw:
            for _ in range(6):  # 12 spans; the first export waits in the receiver meanwhile
                assert send(gw.port, "/app/echo")[0] == 200
            stats = gw.worker.stats_providers["tracing"]
            receiver.release.set()
        counted = stats()  # after the drain, which exported what was queued
    assert counted["dropped"] > 0
    assert counted["exported"] + counted["dropped"] == 12
    assert len(receiver.spans) == counted["exported"]


def test_tracing_off_passes_trace_fields_through(upstream):
    headers = [("traceparent", "not-a-traceparent"), ("tracestate", "a=1")]
    with ThreadedWorker(app_config(upstream.port)) as gw:
        assert send(gw.port, "/app/echo", headers)[0] == 200
        assert "tracing" not in gw.worker.stats_providers
    assert received(upstream, "traceparent") == ["not-a-traceparent"]
    assert received(upstream, "tracestate") == ["a=1"]


def test_tracing_two_workers(start_gateway, upstream, receiver):
    config = "workers: 2\nadmin: {enabled: false}\n" + tracing_config(
        upstream.port, receiver.port, 1
    )
    gw = start_gateway(config)
    assert wait_for(lambda: len(gw.workers()) == 2, timeout=10)
    for _ in range(40):  # new connections: the kernel spreads them over both workers
        assert send(gw.port, "/app/echo")[0] == 200
    assert wait_for(lambda: len(receiver.by_kind(Span.SPAN_KIND_SERVER)) == 40, timeout=10)
    servers = receiver.by_kind(Span.SPAN_KIND_SERVER)
    clients = receiver.by_kind(Span.SPAN_KIND_CLIENT)
    assert len({s.trace_id for s in servers}) == 40  # no two workers draw the same ids
    sent = {
        TRACEPARENT.fullmatch(v).group(2)
        for request in upstream.requests
        for k, v in request["headers"]
        if k == "traceparent"
    }
    assert sent == {c.span_id.hex() for c in clients}
    assert {resource["process.pid"] for resource, _ in receiver.spans} == set(gw.workers())


def test_tracing_without_exporter_fails_at_startup(tmp_path, upstream):
    path = tmp_path / "gateway.yaml"
    path.write_text(tracing_config(upstream.port, 4318, 0.5))
    blocked = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
    code = (
        f"import sys; sys.modules[{blocked!r}] = None\n"
        "from isekai.cli import main\n"
        f"sys.exit(main(['run', '-c', {str(path)!r}]))\n"
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=REPO
    )
    assert out.returncode == 1
    assert "pip install 'isekai[otlp]'" in out.stdout + out.stderr
    assert time.monotonic() - started < 30
