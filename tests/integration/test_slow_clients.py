"""Slow and idle clients do not starve normal ones (slowloris), and head timeouts reclaim them."""

from __future__ import annotations

import http.client
import resource
import socket
import time

import pytest

from tests.support import services

IDLE_CLIENTS = 2000


@pytest.fixture
def many_fds():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 8192)
    if wanted < IDLE_CLIENTS * 2 + 200:
        services.unavailable(
            f"RLIMIT_NOFILE hard limit {hard} is too low for {IDLE_CLIENTS} clients"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_slow_clients_do_not_block_normal_clients(many_fds, start_gateway, upstream):
    gw = start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        limits: {{header_read_timeout: 3s}}
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"]}}
        routes:
          - {{name: all, match: {{path: "/*"}}, upstream: app}}
        """
    )
    slow = []
    try:
        for i in range(IDLE_CLIENTS):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: t\r\nX-Slow: ")  # never ends
            slow.append(sock)
        started = time.monotonic()
        for _ in range(20):
            c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
            c.request("GET", "/status/200")
            resp = c.getresponse()
            resp.read()
            assert resp.status == 200
            c.close()
        assert time.monotonic() - started < 5
        # The header timeout reclaims the slow ones: each sees a 408 or a plain close.
        time.sleep(4.5)
        answers = set()
        for sock in slow[:50]:
            sock.settimeout(5)
            data = sock.recv(200)
            answers.add(data[:12])
        assert answers <= {b"", b"HTTP/1.1 408"}
        assert b"HTTP/1.1 408" in answers
    finally:
        for sock in slow:
            sock.close()
