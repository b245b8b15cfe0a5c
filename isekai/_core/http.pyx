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

from cpython.bytes cimport (
    PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
)
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from libc.stdio cimport snprintf
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec


cdef dict REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 201: b"Created",
    202: b"Accepted", 203: b"Non-Authoritative Information", 204: b"No Content",
    205: b"Reset Content", 206: b"Partial Content", 207: b"Multi-Status", 300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found", 303: b"See Other", 304: b"Not Modified", 307: b"Temporary Redirect",
    308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized", 403: b"Forbidden",
    402: b"Payment Required", 404: b"Not Found", 405: b"Method Not Allowed",
    406: b"Not Acceptable", 407: b"Proxy Authentication Required", 408: b"Request Timeout",
    409: b"Conflict", 410: b"Gone", 411: b"Length Required", 412: b"Precondition Failed",
    413: b"Content Too Large", 414: b"URI Too Long", 415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable", 417: b"Expectation Failed", 418: b"I'm a teapot",
    421: b"Misdirected Request", 422: b"Unprocessable Content", 423: b"Locked",
    424: b"Failed Dependency", 425: b"Too Early", 426: b"Upgrade Required",
    428: b"Precondition Required", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 451: b"Unavailable For Legal Reasons",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}

cdef bytes _ID_PREFIX = os.urandom(6).hex().encode()
cdef unsigned long long _id_counter = 0

# "HTTP/1.1 200 OK\r\n" for every status we know, built once.
cdef dict STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in REASONS.items()
}


cdef inline bint _is(const char* p, const char* lower, Py_ssize_t n) noexcept:
    # Case-insensitive match of a header name against a lower-case literal. OR-ing 0x20 folds
    # A-Z onto a-z and leaves "-" alone; the only other byte it could fold onto a literal's
    # character is a control byte, which a parsed field name never contains.
    cdef Py_ssize_t i
    for i in range(n):
        if (p[i] | 0x20) != lower[i]:
            return False
    return True


cdef int header_kind(bytes name) noexcept:
    """Which of the fields the gateway treats specially `name` is, without allocating."""
    cdef const char* p = PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if n == 4:
        return H_HOST if _is(p, b"host", 4) else H_OTHER
    if n == 2:
        return H_TE if _is(p, b"te", 2) else H_OTHER
    if n == 6:
        return H_EXPECT if _is(p, b"expect", 6) else H_OTHER
    if n == 7:
        if _is(p, b"upgrade", 7):
            return H_UPGRADE
        return H_TRAILER if _is(p, b"trailer", 7) else H_OTHER
    if n == 10:
        if _is(p, b"connection", 10):
            return H_CONNECTION
        if _is(p, b"user-agent", 10):
            return H_USER_AGENT
        return H_KEEP_ALIVE if _is(p, b"keep-alive", 10) else H_OTHER
    if n == 12:
        return H_X_REQUEST_ID if _is(p, b"x-request-id", 12) else H_OTHER
    if n == 14:
        return H_CONTENT_LENGTH if _is(p, b"content-length", 14) else H_OTHER
    if n == 15:
        return H_X_FORWARDED_FOR if _is(p, b"x-forwarded-for", 15) else H_OTHER
    if n == 16:
        if _is(p, b"proxy-connection", 16):
            return H_PROXY_CONNECTION
        if _is(p, b"x-forwarded-host", 16):
            return H_X_FORWARDED_HOST
        return H_OTHER
    if n == 17:
        if _is(p, b"transfer-encoding", 17):
            return H_TRANSFER_ENCODING
        return H_X_FORWARDED_PROTO if _is(p, b"x-forwarded-proto", 17) else H_OTHER
    return H_OTHER


cdef int connection_option(bytes value) noexcept:
    """A Connection value that is one common token, recognised without building a set."""
    cdef const char* p = PyBytes_AS_STRING(value)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    if n == 10 and _is(p, b"keep-alive", 10):
        return CONNECTION_KEEP_ALIVE
    if n == 5 and _is(p, b"close", 5):
        return CONNECTION_CLOSE
    if n == 7 and _is(p, b"upgrade", 7):
        return CONNECTION_UPGRADE
    return CONNECTION_OTHER


cdef bint kind_is_hop_by_hop(int kind) noexcept:
    return (kind == H_CONNECTION or kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION
            or kind == H_TE or kind == H_TRAILER or kind == H_TRANSFER_ENCODING
            or kind == H_UPGRADE)


cdef bytes status_line(int status):
    """The status line we send for `status`. The reason phrase is ours, not the upstream's
    (RFC 9112 §4: clients ignore it), so httptools need not hand it over per response."""
    line = STATUS_LINES.get(status)
    if line is not None:
        return <bytes>line
    return b"HTTP/1.1 %d Unknown\r\n" % status


cdef bytes join_bytes(list parts):
    """b"".join for a list known to hold only bytes, without the buffer protocol per item."""
    cdef Py_ssize_t count = PyList_GET_SIZE(parts)
    cdef Py_ssize_t i, size, total = 0
    cdef object part
    for i in range(count):
        total += PyBytes_GET_SIZE(<object>PyList_GET_ITEM(parts, i))
    cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
    cdef char* dst = PyBytes_AS_STRING(out)
    for i in range(count):
        part = <object>PyList_GET_ITEM(parts, i)
        size = PyBytes_GET_SIZE(part)
        memcpy(dst, PyBytes_AS_STRING(part), size)
        dst += size
    return out


cdef bytes int_bytes(long long value):
    cdef char buf[24]
    cdef int n = snprintf(buf, sizeof(buf), b"%lld", value)
    return PyBytes_FromStringAndSize(buf, n)


cdef double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef double wall_clock() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef bytes next_request_id():
    global _id_counter
    cdef char buf[48]
    cdef Py_ssize_t n = PyBytes_GET_SIZE(_ID_PREFIX)
    cdef Py_ssize_t i, digits = 8
    cdef unsigned long long value
    _id_counter += 1
    value = _id_counter
    while digits < 16 and (value >> (4 * digits)):
        digits += 1
    memcpy(buf, PyBytes_AS_STRING(_ID_PREFIX), n)
    buf[n] = b'-'
    for i in range(digits):
        buf[n + digits - i] = b"0123456789abcdef"[value & 15]
        value >>= 4
    return PyBytes_FromStringAndSize(buf, n + 1 + digits)


cdef set connection_tokens(bytes value):
    """Lower-case field names listed in a Connection header value."""
    cdef set tokens = set()
    for token in value.split(b","):
        token = token.strip().lower()
        if token:
            tokens.add(token)
    return tokens


cpdef bytes response_head(int status, object headers=()):
    """Status line and ``headers`` ((name, value) pairs, str or bytes) of a response the gateway
    makes itself, each line CRLF-ended; `gateway_response` adds the framing fields. Direct
    routes get theirs once per snapshot."""
    cdef list out = [status_line(status)]
    for name, value in headers:
        out.append(name.encode("latin-1") if isinstance(name, str) else name)
        out.append(b": ")
        out.append(value.encode("latin-1") if isinstance(value, str) else value)
        out.append(b"\r\n")
    return join_bytes(out)


cdef bint status_has_no_body(int status) noexcept:
    """204, 205 and 304 never carry content (RFC 9110 §15.3.5, §15.3.6, §15.4.5)."""
    return status == 204 or status == 205 or status == 304


cdef bytes gateway_response(bytes head, bytes body, bytes request_id, bint close, bint head_only,
                            bint bodyless=False):
    """The one serialiser of responses the gateway makes (errors, direct routes, policy
    answers): ``head`` from `response_head`, then content-length, x-request-id, connection and
    the body (none for HEAD, which still says how long it would be). A `bodyless` answer
    (204, 304) gets neither a body nor a length."""
    if bodyless:
        return join_bytes([
            head,
            b"x-request-id: ", request_id,
            b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n",
        ])
    return join_bytes([
        head,
        b"content-length: ", int_bytes(len(body)),
        b"\r\nx-request-id: ", request_id,
        b"\r\nconnection: close\r\n\r\n" if close else b"\r\n\r\n",
        b"" if head_only else body,
    ])


cdef bytes error_body(str message, bytes request_id):
    """The JSON body of every error the gateway answers."""
    return json.dumps(
        {"success": False, "error": message, "request_id": request_id.decode("latin-1")},
        separators=(",", ":"),
    ).encode()


cdef bytes error_response(int status, str message, bytes request_id, bint close,
                          bytes extra_headers=b"", bint head=False):
    """A complete JSON error response: {"success": false, "error": ..., "request_id": ...}."""
    body = error_body(message, request_id)
    return gateway_response(
        status_line(status) + b"content-type: application/json\r\n" + extra_headers,
        body, request_id, close, head)


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


cdef bytes chunk_frame(bytes data):
    return b"%x\r\n" % len(data) + data + b"\r\n"
