"""The access log through a real gateway process and a real upstream: JSON lines (fields, order,
redaction), per-route switches and sampling, the combined format, reopening on SIGUSR1 with
one and two workers, the Elasticsearch and Logstash sinks, and drops when the queue is full."""

from __future__ import annotations

import asyncio
import http.client
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from tests.support.gateway import wait_for

DEADLINE = 10.0  # seconds any wait below may take


def gateway_yaml(upstream_port: int, access_log: str, workers: int = 1, routes: str = "") -> str:
    return f"""
workers: {workers}
admin: {{enabled: false}}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
observability:
  access_log: {access_log}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
routes:
  - {{name: echo, match: {{path: "/echo/*"}}, upstream: app}}
{routes}"""


def get(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in lines_of(path)]


def wait_lines(path: Path, count: int) -> list[str]:
    assert wait_for(lambda: len(lines_of(path)) >= count, timeout=DEADLINE), lines_of(path)
    return lines_of(path)


def test_access_log_json_lines_with_fields_in_order_and_redaction(
    tmp_path, upstream, start_gateway
):
    log = tmp_path / "access.log"
    fields = "[ts, method, path, query, status, route, upstream, user_agent, headers, host]"
    gw = start_gateway(
        gateway_yaml(
            upstream.port,
            f'{{enabled: true, path: "{log}", fields: {fields}, '
            "headers: [X-Tenant, Authorization, Cookie, X-Api-Key], redact: [x-api-key]}",
        )
    )
    secret = {"Authorization": "Bearer s3cret", "Cookie": "sid=abc", "X-Api-Key": "k-123"}
    assert get(gw.port, "/echo/a?x=1", {"X-Tenant": "acme", "User-Agent": "t/1", **secret}) == 200
    assert get(gw.port, "/missing") == 404
    text = "\n".join(wait_lines(log, 2))
    for value in ("s3cret", "sid=abc", "k-123"):
        assert value not in text
    first, second = (json.loads(line) for line in text.splitlines())
    # the configured fields in their order, then request_id and trace_id, always there
    assert list(first) == [
        "ts", "method", "path", "query", "status", "route", "upstream", "user_agent", "headers",
        "host", "request_id", "trace_id",
    ]  # fmt: skip
    assert first["method"] == "GET" and first["path"] == "/echo/a" and first["query"] == "x=1"
    assert (first["status"], first["route"], first["upstream"]) == (200, "echo", "app")
    assert first["user_agent"] == "t/1" and first["host"].startswith("127.0.0.1")
    assert first["headers"] == {
        "X-Tenant": "acme",
        "Authorization": "[redacted]",
        "Cookie": "[redacted]",
        "X-Api-Key": "[redacted]",
    }
    assert first["request_id"] and first["trace_id"] is None  # tracing is off
    assert first["ts"].endswith("Z") and first["ts"][:2] == "20"
    assert (second["status"], second["route"], second["query"]) == (404, None, None)
    assert second["headers"] == dict.fromkeys(first["headers"])  # none sent: null


def test_access_log_default_fields_to_stdout(upstream, start_gateway):
    gw = start_gateway(gateway_yaml(upstream.port, "{enabled: true}"))
    assert get(gw.port, "/echo/out", {"X-Request-ID": "rid-42"}) == 200
    found = gw.wait_for_log(r'^\{.*"request_id":"rid-42".*\}$', timeout=DEADLINE)
    assert found, gw.output()
    line = json.loads(found.group(0))
    assert list(line) == [
        "ts", "request_id", "trace_id", "client_ip", "method", "path", "status", "route",
        "upstream", "consumer", "duration_ms", "bytes_in", "bytes_out", "user_agent",
    ]  # fmt: skip
    assert line["consumer"] == ""  # no credential policy resolved one
    assert line["client_ip"] == "127.0.0.1" and line["duration_ms"] >= 0
    assert line["bytes_out"] > 0 and line["trace_id"] is None


def test_access_log_per_route_off_sample_zero_and_a_sampled_share(
    tmp_path, upstream, start_gateway
):
    log = tmp_path / "access.log"
    routes = """\
  - {name: quiet, match: {path: "/quiet/*"}, upstream: app, access_log: {enabled: false}}
  - {name: none, match: {path: "/none/*"}, upstream: app, access_log: {sample: 0}}
  - {name: half, match: {path: "/half/*"}, upstream: app, access_log: {sample: 0.5}}
"""
    gw = start_gateway(
        gateway_yaml(upstream.port, f'{{enabled: true, path: "{log}"}}', routes=routes)
    )
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=DEADLINE)
    try:
        for path in ["/quiet/1"] * 20 + ["/none/1"] * 20 + ["/half/1"] * 400 + ["/echo/end"]:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
    finally:
        conn.close()

    def ended() -> bool:
        return any(line["path"] == "/echo/end" for line in json_lines(log))

    assert wait_for(ended, timeout=DEADLINE)
    time.sleep(0.7)  # one more hand-over: nothing else is on its way
    routes_seen = [line["route"] for line in json_lines(log)]
    assert "quiet" not in routes_seen and "none" not in routes_seen
    assert 120 <= routes_seen.count("half") <= 280, routes_seen.count("half")
    assert routes_seen.count("echo") == 1


def test_access_log_combined_format(tmp_path, upstream, start_gateway):
    log = tmp_path / "access.log"
    gw = start_gateway(
        gateway_yaml(upstream.port, f'{{enabled: true, path: "{log}", format: combined}}')
    )
    headers = {"Referer": "http://ref/", "User-Agent": "agent/2", "X-Request-ID": "r-7"}
    assert get(gw.port, "/echo/c?q=2", headers) == 200
    (line,) = wait_lines(log, 1)
    assert line.startswith("127.0.0.1 - - [")
    assert '] "GET /echo/c?q=2 HTTP/1.1" 200 ' in line
    assert line.endswith(' "http://ref/" "agent/2" "r-7" "-"')


@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_file_reopened_on_sigusr1(tmp_path, upstream, start_gateway, workers):
    log = tmp_path / "access.log"
    gw = start_gateway(
        gateway_yaml(upstream.port, f'{{enabled: true, path: "{log}"}}', workers=workers)
    )
    for i in range(10):
        assert get(gw.port, f"/echo/before/{i}") == 200
    wait_lines(log, 10)
    rotated = tmp_path / "access.log.1"
    log.rename(rotated)
    gw.send_signal(signal.SIGUSR1)
    assert wait_for(log.exists, timeout=DEADLINE), "the file was not opened again"
    time.sleep(0.5)  # every worker got the signal (the master forwards it)
    for i in range(20):  # new connections: both workers take some
        assert get(gw.port, f"/echo/after/{i}") == 200
    after = wait_lines(log, 20)
    assert all("/echo/after/" in line for line in after)
    assert len(lines_of(rotated)) == 10
    assert all(line.endswith("}") for line in after + lines_of(rotated))  # whole lines
    assert gw.stop() == 0
    assert len(lines_of(log)) == 20  # nothing more at shutdown


class Collector:
    """A local Elasticsearch stand-in (aiohttp) recording `_bulk` bodies, in a thread."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.fail = 0  # answer the next this many requests with 503
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._started.wait(DEADLINE)

    async def _bulk(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.fail:
            self.fail -= 1
            return web.Response(status=503)
        assert request.content_type == "application/x-ndjson"
        self.bodies.append(body)
        return web.json_response({"took": 1, "errors": False, "items": []})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/_bulk", self._bulk)
        runner = web.AppRunner(app)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._runner = runner
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE)

    def documents(self) -> list[tuple[dict, dict]]:
        out = []
        for body in self.bodies:
            lines = body.decode().splitlines()
            out += [
                (json.loads(a), json.loads(d)) for a, d in zip(lines[::2], lines[1::2], strict=True)
            ]
        return out


def test_access_log_elasticsearch_sink_posts_bulk_ndjson(tmp_path, upstream, start_gateway):
    es = Collector()
    es.fail = 1  # the first batch is retried
    try:
        log = tmp_path / "access.log"
        gw = start_gateway(
            gateway_yaml(
                upstream.port,
                f'{{enabled: true, path: "{log}", '
                f'elasticsearch: {{url: "http://127.0.0.1:{es.port}", index: gw-logs}}}}',
            )
        )
        for i in range(5):
            assert get(gw.port, f"/echo/es/{i}") == 200
        assert wait_for(lambda: len(es.documents()) >= 5, timeout=DEADLINE)
        docs = es.documents()
        assert all(action == {"index": {"_index": "gw-logs"}} for action, _ in docs)
        assert sorted(doc["path"] for _, doc in docs) == [f"/echo/es/{i}" for i in range(5)]
        assert all("request_id" in doc and "trace_id" in doc for _, doc in docs)
        assert len(wait_lines(log, 5)) == 5  # the file too
    finally:
        es.close()


def test_access_log_logstash_sink_sends_json_lines(tmp_path, upstream, start_gateway):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(DEADLINE)
    received = bytearray()

    def accept() -> None:
        conn, _ = server.accept()
        with conn:
            conn.settimeout(DEADLINE)
            while received.count(b"\n") < 3:
                data = conn.recv(65536)
                if not data:
                    return
                received.extend(data)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = server.getsockname()[1]
        gw = start_gateway(
            gateway_yaml(
                upstream.port,
                f'{{enabled: true, path: "{tmp_path / "a.log"}", logstash: "127.0.0.1:{port}"}}',
            )
        )
        for i in range(3):
            assert get(gw.port, f"/echo/ls/{i}") == 200
        thread.join(DEADLINE)
        lines = [json.loads(line) for line in received.decode().splitlines()]
        assert sorted(line["path"] for line in lines) == [f"/echo/ls/{i}" for i in range(3)]
    finally:
        server.close()


def test_access_log_full_queue_drops_and_counts(tmp_path, upstream, start_gateway):
    log = tmp_path / "access.log"
    gw = start_gateway(
        gateway_yaml(upstream.port, f'{{enabled: true, path: "{log}", queue_size: 5}}')
    )
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=DEADLINE)
    sent = 0
    started = time.monotonic()
    try:
        while sent < 60 and time.monotonic() - started < 0.4:  # well within one hand-over
            conn.request("GET", f"/echo/burst/{sent}")
            resp = conn.getresponse()
            resp.read()
            sent += 1
    finally:
        conn.close()
    assert sent > 5
    assert gw.stop() == 0
    found = gw.wait_for_log(r"access log: (\d+) lines written, (\d+) dropped", timeout=DEADLINE)
    assert found, gw.output()
    written, dropped = int(found.group(1)), int(found.group(2))
    assert dropped > 0 and written == len(lines_of(log))
    assert written + dropped == sent
