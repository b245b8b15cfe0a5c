"""A HEAD response ends with its head (RFC 9110 §9.3.2). Bytes an upstream sends after it in the
same read belong to no exchange: they never reach the client of the next request on that
upstream connection (pipelined, or another client waiting for the pool), and the connection is
not reused. Found by a review; the raw upstream writes the head and a forged response together.
"""

from __future__ import annotations

import socket
import threading
import time

from tests.support.raw_upstream import RawUpstream, Reply
from tests.support.worker import ThreadedWorker

FORGED = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nx-injected: yes\r\n\r\nSECRET"


def config(port: int, extra: str = "") -> str:
    return f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{port}"]{extra}}}
routes:
  - {{name: app, match: {{path: "/*"}}, upstream: app}}
"""


def exchange(port: int, raw: bytes, until: bytes, timeout: float = 5.0) -> bytes:
    """Send `raw`; read until `until` has arrived (or the connection closes / times out)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        data = b""
        deadline = time.monotonic() + timeout
        while until not in data and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
        return data


def answer(head_delay: float):
    def reply(req):
        if req.method == b"HEAD":
            head = b"HTTP/1.1 200 OK\r\ncontent-length: 60\r\n\r\n"
            return Reply([head_delay, head + FORGED])
        return b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

    return reply


def test_head_response_bytes_after_it_never_answer_the_next_pipelined_request():
    with RawUpstream(answer(0.0)) as up, ThreadedWorker(config(up.port)) as tw:
        data = exchange(
            tw.port,
            b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n",
            until=b"\r\n\r\nok",
        )
    assert b"SECRET" not in data and b"x-injected" not in data
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 60" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"\r\n\r\nok")
    # the connection that carried the stray bytes was not reused
    assert len(up.connections) == 2


def test_head_response_bytes_after_it_never_reach_a_client_waiting_for_the_pool():
    results = {}
    with (
        RawUpstream(answer(0.5)) as up,
        ThreadedWorker(config(up.port, ", max_connections: 1")) as tw,
    ):

        def head():
            results["a"] = exchange(tw.port, b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\n", b"\r\n\r\n")

        def get():
            time.sleep(0.15)  # parks on the pool while HEAD holds its one connection
            results["b"] = exchange(tw.port, b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n", b"\r\n\r\nok")

        threads = [threading.Thread(target=head), threading.Thread(target=get)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(15)
    assert results["b"].startswith(b"HTTP/1.1 200 ") and results["b"].endswith(b"\r\n\r\nok")
    assert b"SECRET" not in results["b"] and b"x-injected" not in results["b"]
    assert b"SECRET" not in results["a"]
