# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/1.1 message helpers shared by the downstream and upstream protocols.

Strategy: everything here is a small C-level function called from `protocol` and `upstream`;
nothing is called from Python per request. Header names are handled as lower-case `bytes` and
compared against module-level frozensets; the status-line table is prebuilt at import, so an error
response costs one bytes join. The clock is CLOCK_MONOTONIC read directly (no Python call).
Request ids are a per-process random prefix plus a counter: unique, cheap, and sortable per worker.
"""

import json
import os

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

# RFC 9110 §7.6.1 hop-by-hop fields, plus the de-facto ones proxies also drop.
cdef frozenset HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
))

cdef dict REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
    202: b"Accepted", 204: b"No Content", 206: b"Partial Content", 301: b"Moved Permanently",
    302: b"Found", 303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
    411: b"Length Required", 413: b"Content Too Large", 414: b"URI Too Long",
    415: b"Unsupported Media Type", 417: b"Expectation Failed", 422: b"Unprocessable Content",
    429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

cdef bytes _ID_PREFIX = os.urandom(6).hex().encode()
cdef unsigned long long _id_counter = 0


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef bytes reason_phrase(int status):
    r = REASONS.get(status)
    return r if r is not None else b"Unknown"


cdef bytes next_request_id():
    global _id_counter
    _id_counter += 1
    return _ID_PREFIX + (b"-%08x" % _id_counter)


cdef bint is_hop_by_hop(bytes lname):
    return lname in HOP_BY_HOP


cdef set connection_tokens(bytes value):
    """Lower-case field names listed in a Connection header value."""
    cdef set tokens = set()
    for token in value.split(b","):
        token = token.strip().lower()
        if token:
            tokens.add(token)
    return tokens


cdef bytes error_response(int status, str message, bytes request_id, bint close,
                          bytes extra_headers=b""):
    """A complete JSON error response: {"success": false, "error": ..., "request_id": ...}."""
    body = json.dumps(
        {"success": False, "error": message, "request_id": request_id.decode("latin-1")},
        separators=(",", ":"),
    ).encode()
    return b"".join((
        b"HTTP/1.1 %d " % status, reason_phrase(status), b"\r\n",
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"x-request-id: ", request_id, b"\r\n",
        extra_headers,
        b"connection: close\r\n\r\n" if close else b"\r\n",
        body,
    ))


cdef bint valid_host(bytes host):
    """Host = uri-host [ ":" port ] (RFC 9112 §3.2, RFC 3986 §3.2.2): no userinfo, no spaces, no
    lists; an IP literal in brackets; a port of 1 to 5 digits."""
    cdef const unsigned char* p = host
    cdef Py_ssize_t n = len(host)
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t digits
    cdef unsigned char c
    if n == 0:
        return True  # an empty Host is allowed when the target has no authority
    if p[0] == b'[':
        while i < n and p[i] != b']':
            c = p[i]
            if not (c == b'[' and i == 0) and not (
                    (b'0' <= c <= b'9') or (b'a' <= c <= b'f') or (b'A' <= c <= b'F')
                    or c == b':' or c == b'.'):
                return False
            i += 1
        if i == n:
            return False
        i += 1
    else:
        while i < n and p[i] != b':':
            c = p[i]
            if not ((b'a' <= c <= b'z') or (b'A' <= c <= b'Z') or (b'0' <= c <= b'9')
                    or c == b'-' or c == b'.' or c == b'_' or c == b'~' or c == b'%'):
                return False
            i += 1
    if i == n:
        return True
    if p[i] != b':':
        return False
    i += 1
    digits = n - i
    if digits < 1 or digits > 5:
        return digits == 0  # "host:" (empty port) is allowed by RFC 3986
    while i < n:
        if not (b'0' <= p[i] <= b'9'):
            return False
        i += 1
    return True


def _valid_host_py(host):
    """Test hook for valid_host."""
    return valid_host(host)


cdef bytes chunk_frame(bytes data):
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _error_response_py(status, message, request_id, close=False):
    """Test hook for error_response."""
    return error_response(status, message, request_id, close)


def _next_request_id_py():
    """Test hook for next_request_id."""
    return next_request_id()


def reason_phrase_py(int status):
    """The reason phrase Isekai sends for ``status``."""
    return reason_phrase(status)
