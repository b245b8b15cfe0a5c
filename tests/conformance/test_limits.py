"""Protocol limits and timeouts (DESIGN §11), configured small through `limits:`.

Size limits answer before anything is forwarded (414, 431, 413 with Content-Length) or, for a
streamed chunked body, as soon as the limit is crossed (413 while the response has not started);
time limits answer 408 to a client stalled in a head or body, and silently close an idle
keep-alive connection. Timeouts are enforced by a periodic sweep (about 1 s granularity), so each
wait below allows a few seconds but stays within the 5 s socket bound.
"""

from __future__ import annotations

import select
import time

from tests.conformance.wire import (
    assert_json_error,
    assert_no_complete_request,
    assert_rejected,
    check_framing,
    connect,
    parse_forwarded,
    parse_responses,
    read_responses,
    read_until_close,
    send,
    settle,
    warm,
)

GET = b"GET /l HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def test_request_line_too_long_414(make_gw, up):
    gw = make_gw(limits={"max_request_line": "1KiB"})
    raw = b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    assert_rejected(gw.port, up, raw, status=414)


def test_request_line_within_limit_forwarded(make_gw, up):
    gw = make_gw(limits={"max_request_line": "1KiB"})
    target = b"/" + b"a" * 900
    with connect(gw.port) as sock:
        send(sock, b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert responses[0].status == 200
    assert [r.target for r in up.requests] == [target]


def test_header_block_too_large_431(make_gw, up):
    gw = make_gw(limits={"max_header_bytes": "1KiB"})
    raw = b"GET /l HTTP/1.1\r\nHost: gw.test\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n"
    assert_rejected(gw.port, up, raw, status=431)


def test_header_block_many_small_fields_too_large_431(make_gw, up):
    gw = make_gw(limits={"max_header_bytes": "1KiB"})
    fields = b"".join(b"X-F%02d: %s\r\n" % (i, b"v" * 60) for i in range(30))
    raw = b"GET /l HTTP/1.1\r\nHost: gw.test\r\n" + fields + b"\r\n"
    assert_rejected(gw.port, up, raw, status=431)


def test_header_count_too_many_431(make_gw, up):
    gw = make_gw(limits={"max_header_count": 10})
    fields = b"".join(b"X-F%02d: v\r\n" % i for i in range(20))
    raw = b"GET /l HTTP/1.1\r\nHost: gw.test\r\n" + fields + b"\r\n"
    assert_rejected(gw.port, up, raw, status=431)


def test_body_content_length_too_large_413(make_gw, up):
    gw = make_gw(limits={"max_body_size": "1KiB"})
    raw = b"POST /l HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000
    assert_rejected(gw.port, up, raw, status=413)


def test_body_content_length_declared_too_large_413_before_body_sent(make_gw, up):
    # Only the head is sent: the gateway must answer from Content-Length alone.
    gw = make_gw(limits={"max_body_size": "1KiB"})
    raw = b"POST /l HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 5000000\r\n\r\n"
    assert_rejected(gw.port, up, raw, status=413)


def test_body_chunked_over_limit_413_while_streaming(make_gw, up):
    gw = make_gw(limits={"max_body_size": "1KiB"})
    baseline = warm(gw.port, up)
    piece = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    with connect(gw.port) as sock:
        send(sock, b"POST /l HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        send(sock, piece)
        time.sleep(0.2)
        send(sock, piece)
        got = read_until_close(sock)
    responses, rest = parse_responses(got.data, eof=got.closed)
    assert responses, got
    assert_json_error(responses[0], 413)
    assert len(responses) == 1 and not rest
    assert got.closed
    assert_no_complete_request(gw.port, up, baseline)


def test_body_within_limit_forwarded(make_gw, up):
    gw = make_gw(limits={"max_body_size": "1KiB"})
    body = b"x" * 1024
    raw = b"POST /l HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1024\r\n\r\n" + body
    with connect(gw.port) as sock:
        send(sock, raw)
        responses, _ = read_responses(sock, 1)
    assert responses[0].status == 200
    assert up.wait_requests(1) and up.requests[0].body == body


def test_header_read_timeout_partial_head_408_then_close(make_gw, up):
    gw = make_gw(limits={"header_read_timeout": "500ms"})
    with connect(gw.port) as sock:
        send(sock, b"GET /l HTTP/1.1\r\nHost: gw.test\r\n")
        got = read_until_close(sock, timeout=4.0)
    responses, _ = parse_responses(got.data, eof=got.closed)
    assert responses, f"no 408 within {got.elapsed:.1f}s: {got.data!r}"
    assert_json_error(responses[0], 408)
    assert got.closed and 0.4 <= got.elapsed < 4.0
    assert settle(gw.port, up) == {}


def test_header_read_timeout_slowloris_trickle_408(make_gw, up):
    # One byte every 100 ms keeps the connection busy but never completes the head: the limit is
    # on the whole head, not on the gap between bytes.
    gw = make_gw(limits={"header_read_timeout": "500ms"})
    head = b"GET /l HTTP/1.1\r\nHost: gw.test\r\n" + b"X-Pad: " + b"a" * 200
    started = time.monotonic()
    data = b""
    closed = False
    with connect(gw.port) as sock:
        for byte in head:
            if time.monotonic() - started > 4.0:
                break
            send(sock, bytes([byte]))
            ready, _, _ = select.select([sock], [], [], 0.1)
            if ready:
                got = read_until_close(sock, timeout=1.0)
                data, closed = got.data, got.closed
                break
    elapsed = time.monotonic() - started
    responses, _ = parse_responses(data, eof=closed)
    assert responses, f"the trickling client was not cut off within {elapsed:.1f}s"
    assert_json_error(responses[0], 408)
    assert closed and elapsed < 4.0
    assert settle(gw.port, up) == {}


def test_body_idle_timeout_408(make_gw, up):
    gw = make_gw(limits={"body_idle_timeout": "500ms"})
    baseline = warm(gw.port, up)
    with connect(gw.port) as sock:
        send(sock, b"POST /l HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 10\r\n\r\nabc")
        got = read_until_close(sock, timeout=4.0)
    responses, _ = parse_responses(got.data, eof=got.closed)
    assert responses, f"no 408 within {got.elapsed:.1f}s: {got.data!r}"
    assert_json_error(responses[0], 408)
    assert got.closed and 0.4 <= got.elapsed < 4.0
    assert_no_complete_request(gw.port, up, baseline)


def test_keepalive_timeout_closes_idle_connection(make_gw, up):
    gw = make_gw(limits={"keepalive_timeout": "500ms"})
    with connect(gw.port) as sock:
        send(sock, GET)
        responses, rest = read_responses(sock, 1)
        assert responses[0].status == 200 and responses[0].header("connection") is None
        got = read_until_close(sock, timeout=4.0)
    assert got.closed, "the idle keep-alive connection was not closed"
    assert got.data == b"" and not rest, "an idle close must not send a response"
    assert 0.4 <= got.elapsed < 4.0


def test_keepalive_connection_used_before_timeout_stays_open(make_gw, up):
    gw = make_gw(limits={"keepalive_timeout": "2s"})
    with connect(gw.port) as sock:
        for _ in range(3):
            send(sock, GET)
            responses, _ = read_responses(sock, 1)
            assert responses[0].status == 200
            time.sleep(0.3)
    assert len(up.requests) == 3


def test_max_requests_per_connection_last_response_closes(make_gw, up):
    gw = make_gw(limits={"max_requests_per_connection": 3})
    with connect(gw.port) as sock:
        seen = []
        for _ in range(3):
            send(sock, GET)
            responses, _ = read_responses(sock, 1)
            seen.append(responses[0])
        got = read_until_close(sock, timeout=2.0)
    assert [r.status for r in seen] == [200, 200, 200]
    assert [r.header("connection") for r in seen] == [None, None, "close"]
    assert got.closed and got.data == b""


def test_max_requests_per_connection_pipelined_extra_not_forwarded(make_gw, up):
    gw = make_gw(limits={"max_requests_per_connection": 3})
    raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % i for i in range(5))
    with connect(gw.port) as sock:
        send(sock, raw)
        got = read_until_close(sock)
    responses, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in responses] == [200, 200, 200] and not rest
    assert responses[2].header("connection") == "close"
    assert got.closed
    parsed = parse_forwarded(b"".join(settle(gw.port, up).values()))
    assert [r.target for r in parsed.requests] == [b"/p0", b"/p1", b"/p2"]
    for req in parsed.requests:
        check_framing(req)
