"""Request line and header section syntax.

RFC 9112 §2.2 (line terminators), §3 (request line), §3.2 (request target and Host), §5.1 (field
line syntax, whitespace before the colon), §5.2 (obs-fold); RFC 9110 §5.5 (CR, LF, NUL in field
values), §2.5 / RFC 9112 §2.3 (versions). Every malformed head is answered 400 (505 for an
unsupported major version) and the connection closed; nothing reaches the upstream.
"""

from __future__ import annotations

import pytest

from tests.conformance.wire import (
    assert_forwarded_once,
    assert_json_error,
    assert_rejected,
    check_framing,
    exchange,
    parse_forwarded,
    parse_responses,
    settle,
    warm,
)

GET = b"GET /h HTTP/1.1\r\nHost: gw.test\r\n"


def with_field(line: bytes) -> bytes:
    return GET + line + b"\r\n\r\n"


HEADER_CASES = {
    "obs_fold_space": GET + b"X-A: one\r\n two\r\n\r\n",
    "obs_fold_tab": GET + b"X-A: one\r\n\ttwo\r\n\r\n",
    "obs_fold_first_field": b"GET /h HTTP/1.1\r\n X-A: one\r\nHost: gw.test\r\n\r\n",
    "value_cr": with_field(b"X-A: one\rtwo"),
    "value_nul": with_field(b"X-A: one\x00two"),
    "value_lf": with_field(b"X-A: one\ntwo"),
    "name_nul": with_field(b"X-\x00A: one"),
    "name_space": with_field(b"X A: one"),
    "name_paren": with_field(b"X(A): one"),
    "name_quote": with_field(b'X"A: one'),
    "name_slash": with_field(b"X/A: one"),
    "name_at": with_field(b"X@A: one"),
    "name_high_bit": with_field(b"X\xe9A: one"),
    "name_empty": with_field(b": one"),
    "no_colon": with_field(b"X-A one"),
    "space_before_colon": with_field(b"X-A : one"),
    "tab_before_colon": with_field(b"X-A\t: one"),
    "space_before_colon_host": b"GET /h HTTP/1.1\r\nHost : gw.test\r\n\r\n",
}


@pytest.mark.parametrize("raw", HEADER_CASES.values(), ids=HEADER_CASES.keys())
def test_header_field_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


LINE_ENDING_CASES = {
    "bare_lf_everywhere": b"GET /h HTTP/1.1\nHost: gw.test\nX-A: one\n\n",
    "bare_lf_after_request_line": b"GET /h HTTP/1.1\nHost: gw.test\r\n\r\n",
    "bare_lf_after_field": b"GET /h HTTP/1.1\r\nHost: gw.test\nX-A: one\r\n\r\n",
    "bare_lf_ends_head": b"GET /h HTTP/1.1\r\nHost: gw.test\r\n\n",
    "bare_cr_line_ending": b"GET /h HTTP/1.1\rHost: gw.test\r\n\r\n",
}


@pytest.mark.parametrize("raw", LINE_ENDING_CASES.values(), ids=LINE_ENDING_CASES.keys())
def test_line_terminator_bare_lf_or_cr_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


HOST_CASES = {
    "missing_on_http11": b"GET /h HTTP/1.1\r\nX-A: one\r\n\r\n",
    "duplicate_same": b"GET /h HTTP/1.1\r\nHost: gw.test\r\nHost: gw.test\r\n\r\n",
    "duplicate_different": b"GET /h HTTP/1.1\r\nHost: gw.test\r\nHost: evil.test\r\n\r\n",
}


@pytest.mark.parametrize("raw", HOST_CASES.values(), ids=HOST_CASES.keys())
def test_host_missing_duplicate_or_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


REQUEST_LINE_CASES = {
    "trailing_space": b"GET /h HTTP/1.1 \r\nHost: gw.test\r\n\r\n",
    "leading_space": b" GET /h HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "tab_separators": b"GET\t/h\tHTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "space_in_target": b"GET /a b HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "nul_in_target": b"GET /a\x00b HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "lowercase_protocol": b"GET /h http/1.1\r\nHost: gw.test\r\n\r\n",
    "junk_after_version": b"GET /h HTTP/1.1x\r\nHost: gw.test\r\n\r\n",
    "method_not_token": b"G@T /h HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "method_with_nul": b"G\x00T /h HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "authority_form_with_get": b"GET gw.test:80 HTTP/1.1\r\nHost: gw.test\r\n\r\n",
    "asterisk_form_with_get": b"GET * HTTP/1.1\r\nHost: gw.test\r\n\r\n",
}


@pytest.mark.parametrize("raw", REQUEST_LINE_CASES.values(), ids=REQUEST_LINE_CASES.keys())
def test_request_line_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


def test_version_http3_rejected(gw, up):
    assert_rejected(gw.port, up, b"GET /h HTTP/3.0\r\nHost: gw.test\r\n\r\n", status=(505, 400))


def test_version_higher_minor_served_as_http11_or_rejected(gw, up):
    # RFC 9110 §2.5: a higher minor version SHOULD be processed as the highest one implemented
    # (1.1); rejecting is tolerable. Either way the upstream sees only HTTP/1.1, or nothing.
    baseline = warm(gw.port, up)
    got = exchange(gw.port, b"GET /h HTTP/1.2\r\nHost: gw.test\r\nConnection: close\r\n\r\n")
    responses, _ = parse_responses(got.data, eof=got.closed)
    assert responses, got
    seen = settle(gw.port, up, baseline)
    if responses[0].status == 200:
        assert len(seen) == 1
        parsed = parse_forwarded(next(iter(seen.values())))
        assert len(parsed.requests) == 1 and parsed.requests[0].target == b"/h"
        check_framing(parsed.requests[0])
    else:
        assert_json_error(responses[0], (400, 505))
        assert got.closed and seen == {}


# -- accepted heads are re-serialised ------------------------------------------------------------


def test_request_line_leading_empty_line_ignored(gw, up):
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request line.
    req = assert_forwarded_once(gw.port, up, b"\r\nGET /h HTTP/1.1\r\nHost: gw.test\r\n\r\n")
    assert req.target == b"/h"


def test_http10_without_host_forwarded_as_http11(gw, up):
    got = exchange(gw.port, b"GET /h HTTP/1.0\r\n\r\n")
    responses, _ = parse_responses(got.data, eof=got.closed)
    assert responses and responses[0].status == 200 and responses[0].body == b"ok"
    assert got.closed  # HTTP/1.0 without keep-alive: close after the response
    parsed = parse_forwarded(up.received())
    assert len(parsed.requests) == 1
    check_framing(parsed.requests[0])
    assert parsed.requests[0].head.startswith(b"GET /h HTTP/1.1\r\n")


def test_absolute_form_authority_wins_over_host(gw, up):
    # RFC 9112 §3.2.2: with an absolute-form target the authority replaces Host.
    raw = b"GET http://other.test/p?q=1 HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.target == b"/p?q=1"
    assert req.one("x-forwarded-host") == "other.test"
    assert req.one("host") == f"127.0.0.1:{up.port}"


def test_absolute_form_without_path_forwarded_as_root(gw, up):
    raw = b"GET http://other.test HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.target == b"/"
    assert req.one("x-forwarded-host") == "other.test"


def test_header_names_and_hop_by_hop_fields_normalised(gw, up):
    raw = (
        b"GET /h?x=1 HTTP/1.1\r\n"
        b"X-Custom:   padded value \t\r\n"
        b"hOsT: gw.test\r\n"
        b"Connection: keep-alive, X-Drop\r\n"
        b"X-Drop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-T\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Host: evil.test\r\n"
        b"\r\n"
    )
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.target == b"/h?x=1"
    assert req.headers[0] == (b"host", f"127.0.0.1:{up.port}".encode())
    assert req.values("x-custom") == [b"padded value"]
    assert req.values("x-drop") == []
    for name in ("connection", "keep-alive", "te", "trailer", "proxy-connection"):
        assert req.values(name) == [], name
    assert req.one("x-forwarded-proto") == "http"
    assert req.one("x-forwarded-host") == "gw.test"
    assert req.values("content-length") == [] and req.values("transfer-encoding") == []
