"""Request smuggling vectors: the front end (us) and the upstream must never disagree on where a
request ends. The gateway either rejects an ambiguous message outright (400 + close, upstream sees
nothing) or re-frames it so that the upstream receives exactly the requests the gateway saw.

Payloads follow the classic CL.TE / TE.CL / TE.TE families, with our own bytes.
"""

from __future__ import annotations

import pytest

from tests.conformance.wire import (
    BARRIER,
    assert_forwarded_once,
    assert_json_error,
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

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"


def test_smuggling_cl_te_rejected(gw, up):
    # A CL-trusting front end forwards 6 body bytes "0\r\n\r\nG"; a TE-trusting back end ends the
    # body at the zero chunk and prefixes the next request with "G".
    raw = (
        b"POST /a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"
    )
    assert_rejected(gw.port, up, raw)


def test_smuggling_te_cl_rejected(gw, up):
    # A TE-trusting front end forwards the whole chunked body; a CL-trusting back end reads 4 bytes
    # ("2c\r\n") and parses the chunk data as a request of its own.
    inner = b"GET /smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    raw = (
        b"POST /a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(inner) + inner + b"\r\n0\r\n\r\n"
    )
    assert_rejected(gw.port, up, raw)


def te_te(field_lines: bytes) -> bytes:
    """TE.TE: one side is made to miss an obfuscated Transfer-Encoding and fall back to CL."""
    return (
        b"POST /a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\n"
        + field_lines
        + b"\r\n5c\r\nGPOST /a HTTP/1.1\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n"
    )


TE_TE_CASES = {
    "xchunked": te_te(b"Transfer-Encoding: xchunked\r\n"),
    "space_before_colon": te_te(b"Transfer-Encoding : chunked\r\n"),
    "second_bogus_value": te_te(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n"),
    "vertical_tab": te_te(b"Transfer-Encoding:\x0bchunked\r\n"),
    "leading_space_fold": te_te(b"X: y\r\n Transfer-Encoding: chunked\r\n"),
    "bare_lf_before": te_te(b"X: y\nTransfer-Encoding: chunked\r\n"),
    "newline_in_name": te_te(b"Transfer-Encoding\n: chunked\r\n"),
    "nul_after_value": te_te(b"Transfer-Encoding: chunked\x00\r\n"),
    "upper_case_value": te_te(b"Transfer-Encoding: CHUNKED\r\n"),
    "quoted": te_te(b'Transfer-Encoding: "chunked"\r\n'),
    "comma_prefix": te_te(b"Transfer-Encoding: , chunked\r\n"),
}


@pytest.mark.parametrize("raw", TE_TE_CASES.values(), ids=TE_TE_CASES.keys())
def test_smuggling_te_te_obfuscation_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


CL_CL_CASES = {
    "space_before_colon": b"Content-Length: 0\r\nContent-Length : 45\r\n",
    "fold_second": b"Content-Length: 0\r\nX: y\r\n Content-Length: 45\r\n",
    "list": b"Content-Length: 0, 45\r\n",
}


@pytest.mark.parametrize("fields", CL_CL_CASES.values(), ids=CL_CL_CASES.keys())
def test_smuggling_cl_cl_rejected(gw, up, fields):
    raw = b"POST /a HTTP/1.1\r\nHost: gw.test\r\n" + fields + b"\r\n" + SMUGGLED
    assert_rejected(gw.port, up, raw)


def test_smuggling_request_in_content_length_body_stays_body(gw, up):
    # The second request hides in the first one's body: the upstream must see it as body bytes,
    # then the real second request, and the client exactly two responses.
    raw = (
        b"GET /a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: %d\r\n\r\n" % len(SMUGGLED)
        + SMUGGLED
        + b"GET /b HTTP/1.1\r\nHost: gw.test\r\n\r\n"
    )
    with connect(gw.port) as sock:
        send(sock, raw)
        responses, rest = read_responses(sock, 2)
        assert [r.status for r in responses] == [200, 200] and not rest
        assert all(r.complete and r.body == b"ok" for r in responses)
        # barrier on the same connection: the next response is its answer, not a third one
        send(sock, b"GET /c HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        extra, rest = read_responses(sock, 1)
        assert [r.status for r in extra] == [200] and not rest, "the body was parsed as a request"
    parsed = parse_forwarded(up.received())
    assert [r.target for r in parsed.requests] == [b"/a", b"/b", b"/c"] and not parsed.incomplete
    assert parsed.requests[0].body == SMUGGLED
    assert parsed.requests[0].values("content-length") == [b"%d" % len(SMUGGLED)]
    for req in parsed.requests:
        check_framing(req)


def test_smuggling_chunked_body_containing_request_stays_body(gw, up):
    raw = (
        b"POST /a HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(SMUGGLED)
        + SMUGGLED
        + b"\r\n0\r\n\r\n"
    )
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.body == SMUGGLED
    assert [r.target for r in up.requests if not r.target.startswith(BARRIER)] == [b"/a"]


def test_smuggling_body_without_framing_is_next_request(gw, up):
    # CL.0: a GET without Content-Length has no body, so the bytes after it are the next request,
    # for the gateway and, because it re-frames every request, for the upstream too.
    raw = b"GET /a HTTP/1.1\r\nHost: gw.test\r\n\r\n" + SMUGGLED
    with connect(gw.port) as sock:
        send(sock, raw)
        responses, _ = read_responses(sock, 2)
    assert [r.status for r in responses] == [200, 200]
    parsed = parse_forwarded(up.received())
    assert [r.target for r in parsed.requests] == [b"/a", b"/smuggled"]
    for req in parsed.requests:
        check_framing(req)
        assert req.body == b""


def test_smuggling_rejected_request_after_valid_one_not_forwarded(gw, up):
    # A valid pipelined request is answered, then the bad one gets its 400 in order, the
    # connection closes, and nothing of the bad one (or what follows it) reaches the upstream.
    baseline = warm(gw.port, up)
    raw = (
        b"GET /ok HTTP/1.1\r\nHost: gw.test\r\n\r\n"
        b"POST /bad HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 6\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" + SMUGGLED
    )
    with connect(gw.port) as sock:
        send(sock, raw)
        got = read_until_close(sock)
    responses, rest = parse_responses(got.data, eof=got.closed)
    assert [r.status for r in responses] == [200, 400] and not rest, got.data
    assert_json_error(responses[1], 400)
    assert got.closed
    seen = b"".join(settle(gw.port, up, baseline).values())
    parsed = parse_forwarded(seen)
    assert [r.target for r in parsed.requests] == [b"/ok"] and not parsed.incomplete, seen
