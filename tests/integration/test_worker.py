"""A Worker in this process (own uvloop thread): counters and snapshot swap seen from Python."""

from __future__ import annotations

import asyncio
import http.client

import pytest

from isekai.config.loader import load_config_text
from tests.support.worker import ThreadedWorker, get


@pytest.fixture
def worker(upstream):
    text = f"""
    listeners: [{{name: public, bind: "127.0.0.1:0"}}]
    upstreams:
      app: {{targets: ["127.0.0.1:{upstream.port}"]}}
      dead: {{targets: ["127.0.0.1:1"]}}
    routes:
      - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
      - {{name: dead, match: {{path: "/dead"}}, upstream: dead}}
    """
    with ThreadedWorker(text) as tw:
        yield tw


def test_worker_counters_follow_traffic(worker):
    for _ in range(3):
        assert get(worker.port, "/app/bytes/100") == (200, b"0123456789abcdef" * 6 + b"0123")
    assert get(worker.port, "/dead")[0] == 502
    assert get(worker.port, "/nowhere")[0] == 404
    snap = worker.call(worker.worker.counters.snapshot)
    app = snap["slots"]["app"]
    assert app["requests"] == 3
    assert app["status"]["2xx"] == 3
    assert app["bytes_out"] == 300
    assert app["latency"]["count"] == 3
    assert snap["slots"]["dead"]["status"]["5xx"] == 1
    assert snap["slots"]["dead"]["upstream_errors"]["connect"] == 1
    assert snap["slots"][""]["status"]["4xx"] == 1
    assert snap["connections"]["total"] == 5


def test_worker_swap_applies_new_routes_to_open_connections(worker, upstream):
    c = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    c.request("GET", "/new")
    first = c.getresponse()
    first.read()
    assert first.status == 404
    new_config = load_config_text(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"]}}
        routes:
          - {{name: new, match: {{path: "/new"}}, respond: {{body: fresh}}}}
        """
    )
    snapshot = worker.call(worker.worker.swap, new_config)
    assert snapshot.version == 2
    c.request("GET", "/new")  # same keep-alive connection, new snapshot
    resp = c.getresponse()
    assert (resp.status, resp.read()) == (200, b"fresh")


def test_worker_counts_open_websocket_tunnels():
    import aiohttp

    from tests.support.ws_upstream import WebSocketUpstream

    with WebSocketUpstream() as up:
        text = f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          ws: {{targets: ["127.0.0.1:{up.port}"]}}
        routes:
          - {{name: ws, match: {{path: "/ws"}}, upstream: ws, websocket: true}}
        """
        with ThreadedWorker(text) as tw:

            def tunnels() -> int:
                return tw.call(lambda: tw.worker.state.tunnel_count)

            async def run() -> tuple[int, int]:
                async with aiohttp.ClientSession() as session:
                    async with session.ws_connect(f"http://127.0.0.1:{tw.port}/ws") as ws:
                        await ws.send_str("x")
                        await ws.receive()
                        during = tunnels()
                await asyncio.sleep(0.2)
                return during, tunnels()

            assert asyncio.run(run()) == (1, 0)
