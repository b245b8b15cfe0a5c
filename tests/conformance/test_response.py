"""Malformed upstream responses (RFC 9112 §6.3, §5.1, §5.2, §2.2; RFC 9110 §5.5, §8.6).

The gateway never relays a response whose framing or syntax it cannot trust: the client gets a
502 JSON error, the upstream connection is dropped (never returned to the pool), and the next
request opens a new upstream connection. A defect found after the response has started (a bad
chunk in the body) aborts the client's response instead: it is never completed with a short body.
"""

from __future__ import annotations

import pytest

from tests.conformance.wire import (
    TIMEOUT,
    assert_json_error,
    connect,
    parse_responses,
    read_responses,
    read_until_close,
    send,
)
from tests.support.raw_upstream import RawUpstream, Reply

GET = b"GET /r HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def ok_head(*lines: bytes, status: bytes = b"HTTP/1.1 200 OK") -> bytes:
    return status + b"\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


HEAD_DEFECTS = {
    "cl_and_te": ok_head(b"Content-Length: 5", b"Transfer-Encoding: chunked")
    + b"5\r\nhello\r\n0\r\n\r\n",
    "te_and_cl": ok_head(b"Transfer-Encoding: chunked", b"Content-Length: 5")
    + b"5\r\nhello\r\n0\r\n\r\n",
    "two_cl_different": ok_head(b"Content-Length: 5", b"Content-Length: 6") + b"hello!",
    "cl_list_different": ok_head(b"Content-Length: 5, 6") + b"hello!",
    "cl_non_numeric": ok_head(b"Content-Length: abc") + b"hello",
    "cl_negative": ok_head(b"Content-Length: -5") + b"hello",
    "cl_plus_sign": ok_head(b"Content-Length: +5") + b"hello",
    "cl_huge": ok_head(b"Content-Length: 99999999999999999999999") + b"hello",
    # Not final chunked: by RFC 9112 §6.3 the body would run to close, still carrying a coding
    # the gateway would silently drop. The upstream closes after it to end the body either way.
    "te_chunked_then_gzip": Reply(
        [ok_head(b"Transfer-Encoding: chunked, gzip") + b"5\r\nhello\r\n0\r\n\r\n"], close=True
    ),
    "te_gzip_only": Reply([ok_head(b"Transfer-Encoding: gzip") + b"hello"], close=True),
    "te_unknown": Reply(
        [ok_head(b"Transfer-Encoding: xchunked") + b"5\r\nhello\r\n0\r\n\r\n"], close=True
    ),
    "obs_fold": ok_head(b"X-A: one", b" two", b"Content-Length: 2") + b"ok",
    "nul_in_value": ok_head(b"X-A: one\x00two", b"Content-Length: 2") + b"ok",
    "cr_in_value": ok_head(b"X-A: one\rtwo", b"Content-Length: 2") + b"ok",
    "space_in_name": ok_head(b"X A: one", b"Content-Length: 2") + b"ok",
    "space_before_colon": ok_head(b"X-A : one", b"Content-Length: 2") + b"ok",
    "bare_lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "not_http": b"THIS IS NOT HTTP\r\n\r\n",
    "status_code_four_digits": ok_head(b"Content-Length: 2", status=b"HTTP/1.1 2000 OK") + b"ok",
    "status_code_two_digits": ok_head(b"Content-Length: 2", status=b"HTTP/1.1 20 OK") + b"ok",
    "status_code_letters": ok_head(b"Content-Length: 2", status=b"HTTP/1.1 2x0 OK") + b"ok",
    "version_missing": ok_head(b"Content-Length: 2", status=b"200 OK") + b"ok",
}


def assert_upstream_dropped_and_replaced(gw, up: RawUpstream) -> None:
    """The defective upstream connection is closed by the gateway; the next request gets a fresh
    one, and a clean answer."""
    first = up.connections[0]
    assert first.wait_closed(TIMEOUT), "the gateway kept the defective upstream connection"
    with connect(gw.port) as sock:
        send(sock, b"GET /next HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert responses and responses[0].status == 200 and responses[0].body == b"ok", responses
    assert len(up.connections) == 2, "the next request did not open a new upstream connection"
    assert [r.target for r in up.connections[1].requests] == [b"/next"]
    assert [r.target for r in first.requests] == [b"/r"]


@pytest.mark.parametrize("reply", HEAD_DEFECTS.values(), ids=HEAD_DEFECTS.keys())
def test_response_malformed_head_becomes_502(gw, up, reply):
    up.replies.append(reply)
    with connect(gw.port) as sock:
        send(sock, GET)
        responses, rest = read_responses(sock, 1)
    assert responses, "no response to the client"
    assert_json_error(responses[0], 502)
    assert_upstream_dropped_and_replaced(gw, up)


CHUNK_DEFECTS = {
    "size_not_hex": b"zz\r\nhello\r\n0\r\n\r\n",
    "size_negative": b"-1\r\nhello\r\n0\r\n\r\n",
    "size_overflow": b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "data_longer_than_size": b"5\r\nhelloXX\r\n0\r\n\r\n",
    "extension_nul": b"5;\x00\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", CHUNK_DEFECTS.values(), ids=CHUNK_DEFECTS.keys())
def test_response_bad_chunk_after_head_aborts_client_response(gw, up, body):
    # The head is relayed before the body goes wrong: the client's response must end in an abort
    # (connection closed, the chunked body never terminated), not a complete short message.
    up.replies.append(Reply([ok_head(b"Transfer-Encoding: chunked"), 0.2, body]))
    with connect(gw.port) as sock:
        send(sock, GET)
        got = read_until_close(sock)
    responses, _ = parse_responses(got.data, eof=got.closed)
    assert responses and responses[0].status == 200, got.data
    assert not responses[0].complete, "a response with a bad chunk was relayed as complete"
    assert got.closed, "the client connection was not closed"
    assert_upstream_dropped_and_replaced(gw, up)


def test_response_content_length_short_then_close_aborts_client_response(gw, up):
    up.replies.append(Reply([ok_head(b"Content-Length: 100") + b"0123456789"], close=True))
    with connect(gw.port) as sock:
        send(sock, GET)
        responses, _ = read_responses(sock, 1)
    assert responses and responses[0].status == 200 and not responses[0].complete
    assert len(responses[0].body) == 10


def test_response_hop_by_hop_fields_not_relayed(gw, up):
    up.replies.append(
        ok_head(
            b"Content-Length: 2",
            b"Connection: X-Secret, keep-alive",
            b"X-Secret: hidden",
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: keep-alive",
            b"Trailer: X-T",
            b"Upgrade: h2c",
            b"X-Visible: yes",
        )
        + b"ok"
    )
    with connect(gw.port) as sock:
        send(sock, GET)
        responses, _ = read_responses(sock, 1)
    resp = responses[0]
    assert resp.status == 200 and resp.body == b"ok" and resp.complete
    for name in ("x-secret", "keep-alive", "proxy-connection", "trailer", "upgrade"):
        assert resp.header(name) is None, name
    assert resp.header("x-visible") == "yes"


def test_response_close_delimited_body_rechunked_for_http11_client(gw, up):
    up.replies.append(Reply([ok_head(), b"hello ", 0.1, b"world"], close=True))
    with connect(gw.port) as sock:
        send(sock, GET)
        responses, _ = read_responses(sock, 1)
    resp = responses[0]
    assert resp.status == 200 and resp.complete and resp.body == b"hello world"
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.header("content-length") is None


def test_response_stray_bytes_on_idle_connection_discard_it(gw, up):
    # A body sent (wrongly) after the response to a HEAD arrives while the connection is idle in
    # the pool: it reaches nobody, and the connection is not used again.
    up.replies.append(Reply([ok_head(b"Content-Length: 5"), 0.1, b"hello"]))
    with connect(gw.port) as sock:
        send(sock, b"HEAD /r HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        responses, rest = read_responses(sock, 1, head_only=True)
        assert responses[0].status == 200 and responses[0].header("content-length") == "5"
        assert up.connections[0].wait_closed(TIMEOUT), "stray bytes did not discard the connection"
        send(sock, b"GET /next HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        more, _ = read_responses(sock, 1)
    assert rest == b"" and more and more[0].status == 200 and more[0].body == b"ok", (rest, more)
    assert [r.target for r in up.connections[1].requests] == [b"/next"]
