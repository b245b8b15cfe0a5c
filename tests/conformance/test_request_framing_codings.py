"""Request framing: transfer codings, Content-Length range and trailer sections."""

from __future__ import annotations

import pytest

from tests.conformance.test_request_framing import chunked, content_length, transfer_encoding
from tests.conformance.wire import assert_forwarded_once, assert_rejected

CONTENT_LENGTH_CASES = {
    "two_pow_63": content_length(b"9223372036854775808"),
}


@pytest.mark.parametrize("raw", CONTENT_LENGTH_CASES.values(), ids=CONTENT_LENGTH_CASES.keys())
def test_content_length_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


TRANSFER_ENCODING_CASES = {
    "gzip_only": transfer_encoding(b"gzip"),
    "identity": transfer_encoding(b"identity"),
    "unknown_xchunked": transfer_encoding(b"xchunked"),
    "quoted_chunked": transfer_encoding(b'"chunked"'),
}


@pytest.mark.parametrize(
    "raw", TRANSFER_ENCODING_CASES.values(), ids=TRANSFER_ENCODING_CASES.keys()
)
def test_transfer_encoding_invalid_rejected(gw, up, raw):
    assert_rejected(gw.port, up, raw)


def test_transfer_encoding_unknown_coding_before_chunked_not_implemented(gw, up):
    # RFC 9112 §6.1: a coding the server does not understand -> 501. Forwarding it re-chunked
    # without the gzip coding would hand the upstream a body it cannot interpret.
    assert_rejected(gw.port, up, transfer_encoding(b"gzip, chunked"), status=501)


def test_chunked_trailer_fields_not_merged_into_head(gw, up):
    # RFC 9110 §6.5.1: trailer fields are never merged into the header section.
    raw = chunked(b"5\r\nhello\r\n0\r\nX-Trailer: secret\r\n\r\n")
    req = assert_forwarded_once(gw.port, up, raw)
    assert req.body == b"hello"
    assert b"secret" not in req.head
