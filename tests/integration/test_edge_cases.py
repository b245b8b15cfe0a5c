"""Edge cases of the request path found in review: each once let a connection hang, answered the
wrong client, or passed a broken response off as complete."""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time

import pytest

from tests.support.client import connect

ROUTES = """
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{port}"]{extra}}}
  dead: {{targets: ["127.0.0.1:1"]}}
limits: {{max_body_size: 1KiB}}
routes:
  - {{name: api, match: {{path: "/api/*"}}, upstream: app, strip_prefix: /api}}
  - {{name: ws, match: {{path: "/ws"}}, upstream: app, websocket: true}}
  - {{name: wsdead, match: {{path: "/wsdead"}}, upstream: dead, websocket: true}}
  - {{name: hello, match: {{path: "/hello"}}, respond: {{body: hi}},
     limits: {{max_body_size: 1MiB}}}}
"""


def read_all(sock: socket.socket, seconds: float) -> bytes:
    """What arrives within `seconds`, or until the peer closes (then ends with <EOF>)."""
    sock.settimeout(0.1)
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            return data + b"<EOF>"
        data += chunk
    return data


class RawUpstream:
    """Answers each request head with `answer(target) -> bytes`; records request lines."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.lines: list[bytes] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(10)
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                line = head.split(b"\r\n")[0]
                self.lines.append(line)
                reply = self.answer(line.split()[1])
                if reply is None:  # reset the connection
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.sendall(reply)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


def named_answer(target: bytes) -> bytes:
    if b"slow" in target:
        time.sleep(0.8)
    body = b"answer-for " + target
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture
def raw_gateway(start_gateway):
    upstreams = []

    def start(answer=named_answer, extra=""):
        up = RawUpstream(answer)
        upstreams.append(up)
        return up, start_gateway(ROUTES.format(port=up.port, extra=extra))

    yield start
    for up in upstreams:
        up.close()


def test_edge_head_error_has_no_body_and_keeps_framing(raw_gateway):
    _, gw = raw_gateway()
    with connect(gw.port) as sock:
        sock.sendall(b"HEAD /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_all(sock, 0.5)
        assert head.startswith(b"HTTP/1.1 404") and head.endswith(b"\r\n\r\n")
        assert b"content-length: 94" in head
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(sock, 0.5).endswith(b"\r\n\r\nhi")


def test_edge_upgrade_bytes_never_reach_upstream_without_101(raw_gateway):
    up, gw = raw_gateway()
    with connect(gw.port) as sock:  # the pool is still empty: the connect is under way
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            b"GET /api/slow-secret HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        reply = read_all(sock, 2.0)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"answer-for /ws<EOF>")
    assert b"connection: close" in reply
    with connect(gw.port) as sock:
        sock.sendall(b"GET /api/public HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_all(sock, 1.0).endswith(b"answer-for /public")
    assert up.lines == [b"GET /ws HTTP/1.1", b"GET /public HTTP/1.1"]


def test_edge_failed_upgrade_closes_the_connection(raw_gateway):
    _, gw = raw_gateway()
    with connect(gw.port) as sock:
        sock.sendall(
            b"GET /wsdead HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        reply = read_all(sock, 3.0)
    assert reply.startswith(b"HTTP/1.1 502") and b"connection: close" in reply
    assert reply.endswith(b"<EOF>")


def test_edge_buffered_body_answered_directly_does_not_stall_reading(raw_gateway):
    """A queued request's body fills the buffer (reading pauses) and completes in the same read;
    it is answered without an upstream: reading must resume for the request after it."""
    _, gw = raw_gateway()
    body = b"x" * 300_000
    with connect(gw.port) as sock:
        sock.sendall(
            b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n" + body[:200_000]
        )
        time.sleep(0.2)
        sock.sendall(body[200_000:])
        time.sleep(0.2)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Request-ID: last\r\n\r\n")
        data = read_all(sock, 4.0)
    assert data.count(b"HTTP/1.1 ") == 3, data[-300:]
    assert b"x-request-id: last\r\n\r\nhi" in data


def test_edge_half_close_after_pipelining_answers_every_request(raw_gateway):
    _, gw = raw_gateway()
    with connect(gw.port) as sock:
        sock.sendall(
            b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        sock.shutdown(socket.SHUT_WR)
        data = read_all(sock, 3.0)
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.endswith(b"hi<EOF>")


def test_edge_rejected_body_is_never_sent_upstream(raw_gateway):
    up, gw = raw_gateway()
    with connect(gw.port) as sock:  # pool empty: the connect is under way when 413 is decided
        sock.sendall(
            b"POST /api/upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"800\r\n" + b"z" * 0x800 + b"\r\n0\r\n\r\n"
        )
        assert read_all(sock, 1.0).startswith(b"HTTP/1.1 413")
    time.sleep(0.5)
    assert up.lines == []


def test_edge_upstream_reset_in_close_delimited_body_aborts(raw_gateway):
    def answer(target: bytes):
        return None if target == b"/rst" else named_answer(target)

    class Resetting(RawUpstream):
        def _serve(self, conn):
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n" + b"A" * 100)
            time.sleep(0.1)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    _, gw = raw_gateway()
    up = Resetting(answer)
    try:
        gw_text = ROUTES.format(port=up.port, extra="")
        path = gw.config_path.with_name("reset.yaml")
        path.write_text(gw_text + "admin: {enabled: false}\n")
        from tests.support.gateway import Gateway

        other = Gateway(path)
        try:
            with connect(other.port) as sock:
                sock.sendall(b"GET /api/rst HTTP/1.1\r\nHost: x\r\n\r\n")
                data = read_all(sock, 2.0)
        finally:
            other.stop()
    finally:
        up.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"<EOF>")
    assert b"\r\n0\r\n\r\n" not in data  # never completed with a short body


def test_edge_waiters_of_a_pool_closed_by_reload_get_503(raw_gateway):
    # 503: try again; the target is not to blame (no failure is counted against it)
    up, gw = raw_gateway(extra=", max_connections: 1, read_timeout: 5s")
    with connect(gw.port) as first, connect(gw.port) as second:
        first.sendall(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
        second.sendall(b"GET /api/queued HTTP/1.1\r\nHost: x\r\n\r\n")  # waits for the slot
        time.sleep(0.1)
        text = gw.config_path.read_text().replace("read_timeout: 5s", "read_timeout: 6s")
        gw.config_path.write_text(text)
        gw.send_signal(signal.SIGHUP)
        assert read_all(first, 2.0).startswith(b"HTTP/1.1 200")
        reply = read_all(second, 3.0)
    assert reply.startswith(b"HTTP/1.1 503") and b"pool closed" in reply


def test_edge_slow_reader_is_not_an_upstream_timeout(start_gateway, upstream):
    gw = start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"], read_timeout: 1s}}
        routes:
          - {{name: all, match: {{path: "/*"}}, upstream: app}}
        """
    )
    size = 4 * 1024 * 1024
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gw.port))
    received = 0
    with sock:
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        received = len(data.partition(b"\r\n\r\n")[2])
        deadline = time.monotonic() + 20
        while received < size and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += len(chunk)
            time.sleep(0.1)  # ~640 KB/s: the download outlasts read_timeout several times
    assert received == size


def test_edge_head_and_broken_chunk_in_one_read_is_a_502(raw_gateway):
    """The upstream's head and a malformed chunk arrive together: nothing reached the client
    yet, so it gets a proper 502 rather than a bare close."""

    def answer(target: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nbad\r\n"

    _, gw = raw_gateway(answer)
    with connect(gw.port) as sock:
        sock.sendall(b"GET /api/broken HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_all(sock, 2.0)
    assert data.startswith(b"HTTP/1.1 502"), data


def test_edge_pipelined_chunked_body_over_the_limit_gets_413(raw_gateway):
    up, gw = raw_gateway()
    chunk = b"x" * 2048  # over the 1 KiB limit, all of it read before the PUT is routed
    with connect(gw.port) as sock:
        sock.sendall(
            b"GET /api/first HTTP/1.1\r\nHost: x\r\n\r\n"
            b"PUT /api/second HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(chunk)
            + chunk
            + b"\r\n0\r\n\r\n"
        )
        replies = read_all(sock, 2.0)
    assert replies.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 413" in replies and replies.endswith(b"<EOF>")
    assert [line.split()[1] for line in up.lines] == [b"/first"]  # the PUT never went upstream
