"""What the upstream receives for accepted requests: pipelining, bodies, X-Forwarded-For.

DESIGN §4/§11: every forwarded head is re-serialised from parsed fields (one framing field,
upstream Host first, no hop-by-hop fields). X-Forwarded-For from a peer outside
`trusted_proxies` is replaced by the peer address; from a trusted peer it is appended to.
"""

from __future__ import annotations

from tests.conformance.wire import (
    assert_forwarded_once,
    check_framing,
    connect,
    parse_forwarded,
    read_responses,
    send,
)


def test_pipelined_requests_forwarded_separately_and_answered_in_order(gw, up):
    raw = (
        b"".join(b"GET /p%d HTTP/1.1\r\nHost: gw.test\r\n\r\n" % i for i in range(3))
        + b"POST /p3 HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc"
    )
    with connect(gw.port) as sock:
        send(sock, raw)
        responses, rest = read_responses(sock, 4)
    assert [r.status for r in responses] == [200] * 4 and not rest
    parsed = parse_forwarded(up.received())
    assert [r.target for r in parsed.requests] == [b"/p0", b"/p1", b"/p2", b"/p3"]
    assert parsed.requests[3].body == b"abc"
    for req in parsed.requests:
        check_framing(req)


def test_body_with_content_length_forwarded_with_one_content_length(gw, up):
    body = bytes(range(256)) * 8
    raw = b"PUT /b HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.values("content-length") == [b"%d" % len(body)]
    assert req.values("transfer-encoding") == []
    assert req.body == body


def test_chunked_body_forwarded_rechunked(gw, up):
    raw = (
        b"POST /c HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n1\r\nd\r\n0\r\n\r\n"
    )
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.values("transfer-encoding") == [b"chunked"]
    assert req.values("content-length") == []
    assert req.body == b"abcd"


def xff_request(*values: bytes) -> bytes:
    fields = b"".join(b"X-Forwarded-For: " + v + b"\r\n" for v in values)
    return b"GET /x HTTP/1.1\r\nHost: gw.test\r\n" + fields + b"\r\n"


def test_xff_untrusted_peer_replaced_by_peer_address(gw, up):
    req = assert_forwarded_once(gw.port, up, xff_request(b"1.2.3.4"))
    assert req.values("x-forwarded-for") == [b"127.0.0.1"]


def test_xff_untrusted_peer_multiple_fields_replaced(gw, up):
    req = assert_forwarded_once(gw.port, up, xff_request(b"1.2.3.4", b"5.6.7.8, 9.9.9.9"))
    assert req.values("x-forwarded-for") == [b"127.0.0.1"]


def test_xff_absent_set_to_peer_address(gw, up):
    req = assert_forwarded_once(gw.port, up, xff_request())
    assert req.values("x-forwarded-for") == [b"127.0.0.1"]


def test_xff_trusted_peer_appended(make_gw, up):
    gw = make_gw(trusted_proxies=["127.0.0.1/32"])
    req = assert_forwarded_once(gw.port, up, xff_request(b"1.2.3.4"))
    assert req.values("x-forwarded-for") == [b"1.2.3.4, 127.0.0.1"]


def test_xff_trusted_peer_multiple_fields_joined_then_appended(make_gw, up):
    gw = make_gw(trusted_proxies=["127.0.0.0/8"])
    req = assert_forwarded_once(gw.port, up, xff_request(b"1.2.3.4", b"5.6.7.8"))
    assert req.values("x-forwarded-for") == [b"1.2.3.4, 5.6.7.8, 127.0.0.1"]


def test_xff_peer_outside_trusted_cidr_replaced(make_gw, up):
    gw = make_gw(trusted_proxies=["10.0.0.0/8"])
    req = assert_forwarded_once(gw.port, up, xff_request(b"1.2.3.4"))
    assert req.values("x-forwarded-for") == [b"127.0.0.1"]
