"""Head parsing and request rules of DownstreamProtocol, fed bytes through an in-memory transport.

These cases need no upstream: every route answers directly, so what the protocol wrote back is
the whole observable behaviour.
"""

from __future__ import annotations

import json

import pytest

from isekai._core.counters import Counters
from isekai._core.http import response_head
from isekai._core.protocol import (
    RECORD_EXTRAS,
    RECORD_TEXT_LIMITS,
    CoreRoute,
    DownstreamProtocol,
    ServerState,
)
from isekai._core.router import Router
from isekai.config.units import parse_path_pattern
from isekai.store.base import LOG_KEYS, LOG_TEXT_DEFAULT_LIMIT, LOG_TEXT_LIMITS, normalize_log_row
from tests.support.memory import MemoryTransport

COUNTERS = Counters()


def direct(name: str, body: bytes, status: int = 200) -> CoreRoute:
    route = CoreRoute(name, COUNTERS.slot(name))
    route.direct = True
    route.respond_status = status
    route.respond_head = response_head(status, [("content-type", "text/plain")])
    route.respond_body = body
    return route


@pytest.fixture
def state():
    router = Router()
    router.add(None, None, parse_path_pattern("/hello"), direct("hello", b"hi"))
    router.add(None, ("POST",), parse_path_pattern("/submit"), direct("submit", b"got it"))
    st = ServerState(router, COUNTERS, None)
    st.max_request_line = 100
    st.max_header_count = 10
    st.max_header_bytes = 500
    return st


def serve(state, *chunks: bytes):
    proto = DownstreamProtocol(state)
    transport = MemoryTransport()
    proto.connection_made(transport)
    for chunk in chunks:
        proto.data_received(chunk)
    return bytes(transport.written), transport


def status_of(written: bytes) -> int:
    return int(written.split(b" ", 2)[1])


def test_protocol_direct_response_keepalive(state):
    out, transport = serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nhi")
    assert b"content-length: 2\r\n" in out
    assert not transport.closed


def test_protocol_pipelined_requests_in_one_packet(state):
    out, _ = serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
    assert out.count(b"HTTP/1.1 200 OK") == 3


def test_protocol_request_split_across_packets(state):
    raw = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbody"
    out, _ = serve(state, *[raw[i : i + 3] for i in range(0, len(raw), 3)])
    assert out.endswith(b"got it")


def test_protocol_http10_closes_after_response(state):
    out, transport = serve(state, b"GET /hello HTTP/1.0\r\n\r\n")
    assert status_of(out) == 200
    assert b"connection: close" in out
    assert transport.closed


def test_protocol_connection_close_honoured(state):
    out, transport = serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert b"connection: close" in out and transport.closed


@pytest.mark.parametrize(
    "raw, status",
    [
        (b"GET /hello HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n", 400),
        (b"GET /hello HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (
            b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
        (
            b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST /missing HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 404),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\n" + b"X-A: 1\r\n" * 11 + b"\r\n", 431),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: " + b"v" * 600 + b"\r\n\r\n", 431),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nExpect: something-else\r\n\r\n", 417),
    ],
)
def test_protocol_rejects_bad_heads(state, raw, status):
    out, transport = serve(state, raw)
    assert status_of(out) == status, out
    doc = json.loads(out.split(b"\r\n\r\n", 1)[1])
    assert doc["success"] is False and doc["request_id"]
    assert transport.closed


def test_protocol_error_after_good_request_keeps_order(state):
    out, transport = serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE\r\n\r\n")
    first, second = out.split(b"HTTP/1.1 ")[1:3]
    assert first.startswith(b"200") and second.startswith(b"400")
    assert transport.closed


def test_protocol_404_and_405(state):
    out, _ = serve(state, b"GET /missing HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(out) == 404
    out, _ = serve(state, b"GET /submit HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(out) == 405
    assert b"allow: POST\r\n" in out


def test_protocol_absolute_form_target_uses_its_authority(state):
    out, _ = serve(state, b"GET http://a.example/hello?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(out) == 200


def test_protocol_body_of_unrouted_request_is_discarded(state):
    raw = b"POST /missing HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
    out, transport = serve(state, raw, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
    assert status_of(out) == 404
    assert out.endswith(b"hi")
    assert not transport.closed


def test_protocol_counts_requests(state):
    before = state.counters.snapshot()
    serve(
        state,
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 2,
        b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    snap = state.counters.snapshot()

    def delta(*keys):
        a, b = before, snap
        for k in keys:
            a, b = a.get(k, {}) if isinstance(a, dict) else 0, b[k]
        return b - (a or 0)

    assert delta("slots", "hello", "requests") == 2
    assert delta("slots", "hello", "status", "2xx") == 2
    assert delta("slots", "", "status", "4xx") == 1
    assert delta("connections", "total") == 1


def test_protocol_max_requests_per_connection(state):
    state.max_requests_per_connection = 2
    out, transport = serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n" * 3)
    assert out.count(b"HTTP/1.1 200") == 2
    assert b"connection: close" in out
    assert transport.closed


def test_protocol_request_id_from_client_is_echoed(state):
    out, _ = serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Request-ID: r-1\r\n\r\n")
    assert b"x-request-id: r-1\r\n" in out


def test_protocol_request_log_records_and_bounded_buffer(state):
    # `_core` builds records in the order of the store's LOG_COLUMNS (it cannot import them):
    # every field is checked in its named place, so the two layouts cannot drift apart.
    state.log_requests = True
    state.log_capacity = 2
    state.take_request_log()
    dropped = state.log_dropped
    serve(
        state,
        b"GET /hello?q=1 HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8\r\nX-Request-ID: r-9\r\n\r\n",
        b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    raw = state.take_request_log()
    records = [dict(zip(LOG_KEYS + RECORD_EXTRAS, r, strict=True)) for r in raw]
    assert len(records) == 2
    assert state.log_dropped == dropped + 1
    first, second = records
    assert list(first)[: len(LOG_KEYS)] == list(LOG_KEYS)
    assert first["access"] is False and first["query"] is None  # the access log is off
    assert first["route"] == "hello" and first["status"] == 200
    assert first["method"] == "GET" and first["path"] == "/hello"
    assert first["upstream"] is None
    assert first["user_agent"] == "curl/8" and first["request_id"] == "r-9"
    assert first["client_ip"] == "127.0.0.1" and first["latency_ms"] >= 0
    assert first["bytes_in"] == 0 and first["bytes_out"] == 2
    assert first["ts"] > 1.7e9
    assert second["route"] is None and second["status"] == 404
    assert normalize_log_row(first)[LOG_KEYS.index("status")] == 200
    assert state.take_request_log() == []
    state.log_requests = False


def test_protocol_log_record_bounds_client_text_as_the_store_does(state):
    for field, limit in RECORD_TEXT_LIMITS.items():
        assert LOG_TEXT_LIMITS.get(field, LOG_TEXT_DEFAULT_LIMIT) == limit
    state.log_requests = True
    state.max_request_line = state.max_header_bytes = 8192
    state.take_request_log()
    serve(
        state,
        b"GET /"
        + b"p" * 3000
        + b" HTTP/1.1\r\nHost: a\r\nUser-Agent: "
        + b"u" * 900
        + b"\r\nX-Request-ID: "
        + b"r" * 300
        + b"\r\n\r\n",
    )
    (record,) = state.take_request_log()
    state.log_requests = False
    row = dict(zip(LOG_KEYS, record, strict=False))
    assert (len(row["path"]), len(row["user_agent"])) == (2048, 512)
    assert len(row["request_id"]) <= 128  # (one that long is replaced by the gateway's own)
    assert row["status"] == 404 and row["path"] == "/" + "p" * 2047


def test_protocol_log_record_carries_access_log_fields_and_header_values(state):
    state.access_log = True
    state.log_headers = (b"x-tenant", b"authorization")
    state.take_request_log()
    serve(
        state,
        b"GET /hello?q=1 HTTP/1.1\r\nHost: a.example\r\nReferer: http://r/\r\n"
        b"X-Tenant: t1\r\nX-Tenant: t2\r\n\r\n",
    )
    (record,) = state.take_request_log()
    state.access_log = False
    state.log_headers = ()
    fields = dict(zip(LOG_KEYS + RECORD_EXTRAS, record, strict=False))
    assert fields["method"] == "GET" and fields["path"] == "/hello"  # text, decoded in _core
    assert fields["query"] == b"?q=1" and fields["referer"] == b"http://r/"
    assert fields["host"] == b"a.example" and fields["access"] is True
    assert fields["trace_id"] is None and fields["span_id"] is None  # tracing is off
    assert record[len(LOG_KEYS) + len(RECORD_EXTRAS) :] == (b"t1, t2", None)


def test_protocol_access_log_sampling_is_per_route(state):
    state.access_log = True
    state.seed_sampling(12345)
    hello = state.router.match(b"a", b"GET", b"/hello")[0]
    try:
        for sample, low, high in ((0.0, 0, 0), (1.0, 200, 200), (0.25, 25, 75)):
            hello.access_sample = sample
            state.take_request_log()
            for _ in range(200):
                serve(state, b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
            taken = [r for r in state.take_request_log() if r[len(LOG_KEYS) + 6]]
            assert low <= len(taken) <= high, (sample, len(taken))
        # a request no route matched follows the global share
        state.access_sample = 0.0
        serve(state, b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
        assert state.take_request_log() == []  # the request log is off: no record at all
    finally:
        hello.access_sample = 1.0
        state.access_sample = 1.0
        state.access_log = False
