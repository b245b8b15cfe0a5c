"""Request heads: Host values, request-line whitespace and HTTP versions."""

from __future__ import annotations

import pytest

from tests.conformance.wire import assert_forwarded_once, assert_rejected

# RFC 9112 §3.2: 400 for a Host field with an invalid value (Host = uri-host [ ":" port ]).
HOST_CASES = {
    "list_value": b"GET /h HTTP/1.1\r\nHost: gw.test, evil.test\r\n\r\n",
    "space_in_value": b"GET /h HTTP/1.1\r\nHost: gw test\r\n\r\n",
    "bad_port": b"GET /h HTTP/1.1\r\nHost: gw.test:http\r\n\r\n",
    "userinfo": b"GET /h HTTP/1.1\r\nHost: user@gw.test\r\n\r\n",
}


@pytest.mark.parametrize("raw", HOST_CASES.values(), ids=HOST_CASES.keys())
def test_host_missing_duplicate_or_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


# RFC 9112 §3 lets a recipient parse the request line on whitespace boundaries. The gateway
# re-serialises the line, so the upstream only ever sees single spaces.
LENIENT_LINE_CASES = {
    "double_space_after_method": b"GET  /h HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "double_space_before_version": b"GET /h  HTTP/1.1\r\nHost: gw.test\r\n\r\n",
}


@pytest.mark.parametrize("raw", LENIENT_LINE_CASES.values(), ids=LENIENT_LINE_CASES.keys())
def test_request_line_extra_spaces_reserialised(gw, up, raw):
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.head.startswith(b"GET /h HTTP/1.1\r\n"), req.head


@pytest.mark.parametrize(
    "raw",
    [b"GET /h\r\nHost: gw.test\r\n\r\n", b"GET /h HTTP/2.0\r\nHost: gw.test\r\n\r\n"],
    ids=["http09_no_version", "http2_version"],
)
def test_version_other_than_http1_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw, status=(505, 400))
