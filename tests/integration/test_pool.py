"""Upstream pool limits: max_connections, max_keepalive_connections, keepalive_expiry."""

from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor


def _get(port: int, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    c.request("GET", path)
    resp = c.getresponse()
    resp.read()
    c.close()
    return resp.status


def test_pool_max_connections_queues_requests(start_gateway, upstream):
    gw = start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"], max_connections: 2}}
        routes:
          - {{name: all, match: {{path: "/*"}}, upstream: app}}
        """
    )
    with ThreadPoolExecutor(6) as ex:
        statuses = list(ex.map(lambda _: _get(gw.port, "/slow/200"), range(6)))
    assert statuses == [200] * 6
    assert upstream.connections == 2


def test_pool_keepalive_expiry_closes_idle_connections(start_gateway, upstream):
    gw = start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"], keepalive_expiry: 200ms}}
        routes:
          - {{name: all, match: {{path: "/*"}}, upstream: app}}
        """
    )
    assert _get(gw.port, "/status/200") == 200
    assert _get(gw.port, "/status/200") == 200
    assert upstream.connections == 1
    time.sleep(0.6)
    assert _get(gw.port, "/status/200") == 200
    assert upstream.connections == 2


def test_pool_max_keepalive_zero_opens_a_connection_per_request(start_gateway, upstream):
    gw = start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"], max_keepalive_connections: 0}}
        routes:
          - {{name: all, match: {{path: "/*"}}, upstream: app}}
        """
    )
    for _ in range(3):
        assert _get(gw.port, "/status/200") == 200
    assert upstream.connections == 3


def test_pool_round_robin_over_targets(start_gateway):
    from tests.support.upstream import Upstream

    with Upstream() as a, Upstream() as b:
        gw = start_gateway(
            f"""
            listeners: [{{name: public, bind: "127.0.0.1:0"}}]
            upstreams:
              app: {{targets: ["127.0.0.1:{a.port}", "127.0.0.1:{b.port}"]}}
            routes:
              - {{name: all, match: {{path: "/*"}}, upstream: app}}
            """
        )
        for _ in range(10):
            assert _get(gw.port, "/status/200") == 200
        assert len(a.requests) == 5 and len(b.requests) == 5


def test_pool_connect_timeout_is_504(start_gateway):
    """A listener whose accept queue is full drops SYNs, so connecting hangs until the timeout."""
    import socket

    from tests.support.client import json_body, request

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    try:
        gw = start_gateway(
            f"""
            listeners: [{{name: public, bind: "127.0.0.1:0"}}]
            upstreams:
              hole: {{targets: ["127.0.0.1:{port}"], connect_timeout: 300ms}}
            routes:
              - {{name: all, match: {{path: "/*"}}, upstream: hole}}
            """
        )
        started = time.monotonic()
        status, _, body = request(gw.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert status == 504
        assert "connect timed out" in json_body(body)["error"]
        assert time.monotonic() - started < 3
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()
