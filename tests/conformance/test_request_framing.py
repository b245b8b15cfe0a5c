"""Request message framing: Content-Length, Transfer-Encoding and chunked bodies.

RFC 9112 §6.1 (Transfer-Encoding), §6.2 (Content-Length), §6.3 (message body length), §7.1
(chunked coding); RFC 9110 §8.6. A request whose length cannot be determined unambiguously is
answered 400 and the connection closed; the upstream must not see a byte of it.
"""

from __future__ import annotations

import pytest

from tests.conformance.wire import (
    assert_forwarded_once,
    assert_rejected,
    assert_rejected_mid_body,
)

POST = b"POST /f HTTP/1.1\r\nHost: gw.test\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"

CL_TE_CASES = {
    "cl_then_te": POST
    + b"Content-Length: 15\r\nTransfer-Encoding: chunked\r\n\r\n"
    + CHUNKED_HELLO,
    "te_then_cl": POST
    + b"Transfer-Encoding: chunked\r\nContent-Length: 15\r\n\r\n"
    + CHUNKED_HELLO,
    "cl_zero_and_te": POST
    + b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n"
    + CHUNKED_HELLO,
}


@pytest.mark.parametrize("raw", CL_TE_CASES.values(), ids=CL_TE_CASES.keys())
def test_framing_content_length_with_transfer_encoding_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


def content_length(*values: bytes, body: bytes = b"hello") -> bytes:
    fields = b"".join(b"Content-Length: " + v + b"\r\n" for v in values)
    return POST + fields + b"\r\n" + body


CONTENT_LENGTH_CASES = {
    "duplicate_same": content_length(b"5", b"5"),
    "duplicate_different": content_length(b"5", b"6", body=b"hello!"),
    "list_same": content_length(b"5,5"),
    "list_same_with_space": content_length(b"5, 5"),
    "list_different": content_length(b"5,6", body=b"hello!"),
    "non_numeric": content_length(b"abc"),
    "negative": content_length(b"-5"),
    "plus_sign": content_length(b"+5"),
    "hex": content_length(b"0x5"),
    "decimal_point": content_length(b"5.0"),
    "inner_space": content_length(b"5 5"),
    "empty": content_length(b""),
    "huge": content_length(b"99999999999999999999999"),
}


@pytest.mark.parametrize("raw", CONTENT_LENGTH_CASES.values(), ids=CONTENT_LENGTH_CASES.keys())
def test_content_length_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


def transfer_encoding(*values: bytes, version: bytes = b"1.1") -> bytes:
    fields = b"".join(b"Transfer-Encoding: " + v + b"\r\n" for v in values)
    head = b"POST /f HTTP/" + version + b"\r\nHost: gw.test\r\n"
    return head + fields + b"\r\n" + CHUNKED_HELLO


TRANSFER_ENCODING_CASES = {
    "chunked_then_gzip": transfer_encoding(b"chunked, gzip"),
    "chunked_then_gzip_two_lines": transfer_encoding(b"chunked", b"gzip"),
    "chunked_twice_one_line": transfer_encoding(b"chunked, chunked"),
    "chunked_twice_two_lines": transfer_encoding(b"chunked", b"chunked"),
    "empty": transfer_encoding(b""),
    "chunked_on_http10": transfer_encoding(b"chunked", version=b"1.0"),
}


@pytest.mark.parametrize(
    "raw", TRANSFER_ENCODING_CASES.values(), ids=TRANSFER_ENCODING_CASES.keys()
)
def test_transfer_encoding_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


def chunked(body: bytes) -> bytes:
    return POST + b"Transfer-Encoding: chunked\r\n\r\n" + body


CHUNK_CASES = {
    "size_not_hex": chunked(b"zz\r\nhello\r\n0\r\n\r\n"),
    "size_negative": chunked(b"-1\r\nhello\r\n0\r\n\r\n"),
    "size_overflow": chunked(b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    "size_0x_prefix": chunked(b"0x5\r\nhello\r\n0\r\n\r\n"),
    "size_empty": chunked(b"\r\nhello\r\n0\r\n\r\n"),
    "size_leading_space": chunked(b" 5\r\nhello\r\n0\r\n\r\n"),
    "extension_nul": chunked(b"5;\x00\r\nhello\r\n0\r\n\r\n"),
    "extension_bare_cr": chunked(b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
    "data_longer_than_size": chunked(b"5\r\nhelloXX\r\n0\r\n\r\n"),
    "data_not_followed_by_crlf": chunked(b"5\r\nhello0\r\n\r\n"),
    "bare_lf_after_size": chunked(b"5\nhello\r\n0\r\n\r\n"),
    "bare_lf_after_data": chunked(b"5\r\nhello\n0\r\n\r\n"),
}


@pytest.mark.parametrize("raw", CHUNK_CASES.values(), ids=CHUNK_CASES.keys())
def test_chunked_body_invalid_rejected(gw, up, raw):
    assert_rejected_mid_body(gw.port, up, raw)


# -- accepted framing is re-serialised -----------------------------------------------------------


def test_content_length_with_whitespace_forwarded_normalised(gw, up):
    req = assert_forwarded_once(gw.port, up, POST + b"Content-Length:   5  \r\n\r\nhello")
    assert req.values("content-length") == [b"5"]
    assert req.body == b"hello"
    assert b"content-length: 5\r\n" in req.head


def test_content_length_zero_forwarded(gw, up):
    req = assert_forwarded_once(gw.port, up, POST + b"Content-Length: 0\r\n\r\n")
    assert req.values("content-length") == [b"0"]
    assert req.body == b""


def test_transfer_encoding_case_insensitive_forwarded_chunked(gw, up):
    raw = POST + b"Transfer-Encoding: Chunked\r\n\r\n" + CHUNKED_HELLO
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.values("transfer-encoding") == [b"chunked"]
    assert req.body == b"hello"


def test_chunked_extensions_not_forwarded(gw, up):
    raw = chunked(b"0005;name=value\r\nhello\r\n6;flag\r\n world\r\n0;last=1\r\n\r\n")
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.values("transfer-encoding") == [b"chunked"]
    assert req.body == b"hello world"
    received = up.received()
    assert b"name=value" not in received and b"flag" not in received and b"last" not in received
