"""Smuggling through trailer sections: trailers never change routing or forwarding."""

from __future__ import annotations

from tests.conformance.wire import assert_forwarded_once


def test_smuggling_trailer_host_and_xff_ignored(gw, up):
    # Fields in a trailer section must not change routing or forwarding headers.
    raw = (
        b"POST /a HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nHost: evil.test\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.body == b"hello"
    assert req.one("x-forwarded-host") == "gw.test"
    assert req.one("x-forwarded-for") == "127.0.0.1"
    assert req.values("content-length") == []
