"""Micro-benchmark: one request head through DownstreamProtocol, answered by a direct route.

Run after building the extension:  PYTHONPATH=. python bench/micro/bench_parse.py
Whole requests are fed to `data_received` of one keep-alive connection over an in-memory
transport (as tests/unit/_core/test_protocol.py does), so a request costs: httptools parsing and
its callbacks, the head rules (Host, framing, limits), the route match and the prebuilt direct
response written back. No socket and no event loop are involved: this is the user-space floor of
the request path, before any upstream work. Best of REPEATS runs of LOOPS requests.
"""

from __future__ import annotations

import time

from isekai._core.counters import Counters
from isekai._core.http import response_head
from isekai._core.protocol import CoreRoute, DownstreamProtocol, ServerState
from isekai._core.router import Router
from isekai.config.units import parse_path_pattern

LOOPS = 50_000
REPEATS = 5

MINIMAL = b"GET /hello HTTP/1.1\r\nHost: api.example.com\r\n\r\n"

# What a browser sends for an XHR: 11 header fields, ~600 bytes.
BROWSER = (
    b"GET /api/v1/users/42?fields=name,email HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Language: en-GB,en;q=0.7,fr;q=0.3\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: https://app.example.com/dashboard\r\n"
    b"Origin: https://app.example.com\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark; lang=en\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Sec-Fetch-Mode: cors\r\n"
)
BROWSER += b"\r\n"

POST_BODY = b'{"name":"a","email":"b@c.d"}'
POST_SMALL = (
    b"POST /api/v1/users HTTP/1.1\r\nHost: api.example.com\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(POST_BODY), POST_BODY)
)


class NullTransport:
    """Accepts writes and drops them (counting bytes), like a socket that never fills."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def write(self, data) -> None:
        self.written += len(data)

    def writelines(self, parts) -> None:
        for part in parts:
            self.written += len(part)

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str):
        return ("127.0.0.1", 40000) if name == "peername" else None


def make_state() -> ServerState:
    counters = Counters()
    router = Router()
    for path in (b"/hello", b"/api/v1/users/{id}", b"/api/v1/users"):
        route = CoreRoute(path.decode(), counters.slot(path.decode()))
        route.direct = True
        route.respond_status = 200
        route.respond_head = response_head(200, [("content-type", "text/plain")])
        route.respond_body = b"hi"
        router.add(None, None, parse_path_pattern(path.decode()), route)
    state = ServerState(router, counters, None)
    state.max_requests_per_connection = 1 << 30
    return state


def per_request_ns(raw: bytes, state: ServerState) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        proto = DownstreamProtocol(state)
        transport = NullTransport()
        proto.connection_made(transport)
        feed = proto.data_received
        start = time.perf_counter_ns()
        for _ in range(LOOPS):
            feed(raw)
        elapsed = time.perf_counter_ns() - start
        if transport.closed:
            raise RuntimeError(f"connection closed while feeding {raw[:40]!r}")
        if transport.written < LOOPS * 40:
            raise RuntimeError(f"too little written for {raw[:40]!r}: {transport.written}")
        proto.connection_lost(None)
        best = min(best, elapsed / LOOPS)
    return best


def results() -> list[tuple[str, float]]:
    state = make_state()
    return [
        (f"minimal GET ({len(MINIMAL)} B, 1 header)", per_request_ns(MINIMAL, state)),
        (f"browser-like GET ({len(BROWSER)} B, 11 headers)", per_request_ns(BROWSER, state)),
        (f"small POST ({len(POST_SMALL)} B, 3 headers + body)", per_request_ns(POST_SMALL, state)),
    ]


def main() -> None:
    print(f"DownstreamProtocol head parse + direct response, best of {REPEATS} x {LOOPS:,}")
    for label, ns in results():
        print(f"  {label:<46} {ns:8.0f} ns/request")


if __name__ == "__main__":
    main()
