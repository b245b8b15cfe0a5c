"""Small raw-socket HTTP/1.1 client helpers for tests that need exact bytes on the wire."""

from __future__ import annotations

import json
import socket

import h11


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return sock


def read_response(sock: socket.socket, conn: h11.Connection | None = None, *, method: str = "GET"):
    """Read one response with h11; returns (status, headers dict lower-case, body bytes, conn)."""
    if conn is None:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
    status = None
    headers: dict[str, str] = {}
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = sock.recv(65536)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
            headers = {k.decode().lower(): v.decode() for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            break
    return status, headers, bytes(body), conn


def request(port: int, raw: bytes, *, method: str = "GET"):
    """Send raw request bytes on a new connection and parse one response."""
    with connect(port) as sock:
        sock.sendall(raw)
        status, headers, body, _ = read_response(sock, method=method)
        return status, headers, body


def json_body(body: bytes) -> dict:
    return json.loads(body.decode())


def read_responses(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """Read ``count`` pipelined responses to GETs, in order: [(status, headers, body)]."""
    responses = []
    leftover = b""
    for _ in range(count):
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        if leftover:
            conn.receive_data(leftover)
        status, headers, body, conn = read_response(sock, conn)
        leftover = conn.trailing_data[0]
        responses.append((status, headers, body))
    return responses
