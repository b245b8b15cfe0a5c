# cython: language_level=3, boundscheck=False, wraparound=False
"""The policy contract on the request path (DESIGN.md §6).

Strategy. A route's policies arrive as a tuple of `CorePolicy` objects, listener policies first,
compiled once per snapshot by `isekai.policy.PolicySet`. Each has up to three phases, and flags
saying which it has, so `protocol` calls only what exists: `request` (None to continue, or an
answer to send instead of proxying), `response` (edits a `ResponseHead` before the head is
written, in reverse order) and `complete` (after the last byte; never fails the request). Hot
families are `cdef class` subclasses whose phases are C calls; anything written in Python goes
through the one adapter, `PythonPolicy`. An `async def` request phase marks the policy
`is_async`: `protocol` then hands the request to the slow path the worker installed (one Task),
which calls back when the coroutine is done. A synchronous request phase may also return an
awaitable instead of an answer (a cache miss that needs I/O): the request goes to the slow path
the same way, for this request only, so a policy that usually answers from memory stays inline.
A policy with `body_limit` > 0 reads the request body (`req.body`): its route's request phase
waits for the whole body (at most that many bytes, else 413) before the chain runs.

`ResponseHead` edits the flat list of head parts the upstream side already builds
([name, b": ", value, b"\r\n", ...]), so a route without response policies pays nothing and one
with them pays for the edits only. Field names are compared case-insensitively without
allocating (`same_name`).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from isekai._core.http cimport (
    H_CONNECTION, H_CONTENT_LENGTH, H_KEEP_ALIVE, H_PROXY_CONNECTION, H_TE, H_TRAILER,
    H_TRANSFER_ENCODING, H_UPGRADE, H_X_REQUEST_ID, header_kind, status_has_no_body,
)

import inspect
import json


cdef bint same_name(bytes name, bytes lower) noexcept:
    """Whether field name `name` (any case) is `lower` (already lower-case)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    cdef const char* a
    cdef const char* b
    cdef Py_ssize_t i
    cdef char c
    if n != PyBytes_GET_SIZE(lower):
        return False
    a = PyBytes_AS_STRING(name)
    b = PyBytes_AS_STRING(lower)
    for i in range(n):
        c = a[i]
        if b'A' <= c <= b'Z':
            c = c + 32
        if c != b[i]:
            return False
    return True


cdef bint same_field(bytes a, bytes b) noexcept:
    """Whether field names `a` and `b` are equal ignoring ASCII case (either in any case)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(a)
    cdef const char* p
    cdef const char* q
    cdef Py_ssize_t i
    cdef char c, d
    if n != PyBytes_GET_SIZE(b):
        return False
    p = PyBytes_AS_STRING(a)
    q = PyBytes_AS_STRING(b)
    for i in range(n):
        c = p[i]
        d = q[i]
        if c != d:
            if b'A' <= c <= b'Z':
                c = c + 32
            if b'A' <= d <= b'Z':
                d = d + 32
            if c != d:
                return False
    return True


# RFC 9110 §5.6.2 tchar: the bytes a field name may hold
cdef bint TCHAR[256]
for _c in range(256):
    TCHAR[_c] = (0x21 <= _c <= 0x7E) and chr(_c) not in '"(),/:;<=>?@[\\]{}'


cdef inline bytes _latin1(object value):
    return value if isinstance(value, bytes) else (<str>value).encode("latin-1")


cdef list header_parts(object pairs):
    """(name, value) pairs, str or bytes, as flat head parts."""
    cdef list parts = []
    for name, value in pairs:
        parts.append(_latin1(name))
        parts.append(b": ")
        parts.append(_latin1(value))
        parts.append(b"\r\n")
    return parts


cdef int check_answer_headers(object pairs) except -1:
    """The fields of a policy's answer: well formed, and none the gateway writes itself."""
    for name, value in pairs:
        check_response_field(_latin1(name), _latin1(value))
    return 0


cdef int check_field(bytes name, bytes value) except -1:
    """A field a policy writes must not be able to end the field or the head early: a name of
    token characters, a value without CR, LF or NUL. One pass over each, no allocation."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t i
    cdef unsigned char c
    if n == 0:
        raise ValueError("invalid header name b''")
    for i in range(n):
        if not TCHAR[p[i]]:
            raise ValueError(f"invalid header name {name!r}")
    p = <const unsigned char*>PyBytes_AS_STRING(value)
    n = PyBytes_GET_SIZE(value)
    for i in range(n):
        c = p[i]
        if c == 13 or c == 10 or c == 0:
            raise ValueError(f"invalid value for header {name.decode('latin-1')!r}")
    return 0


cdef bint response_managed(bytes name) noexcept:
    """Fields of a response the gateway writes itself: framing, connection handling and the
    request id. No policy sets, removes or renames them."""
    cdef int kind = header_kind(name)
    return (kind == H_CONTENT_LENGTH or kind == H_TRANSFER_ENCODING or kind == H_CONNECTION
            or kind == H_KEEP_ALIVE or kind == H_PROXY_CONNECTION or kind == H_TE
            or kind == H_TRAILER or kind == H_UPGRADE or kind == H_X_REQUEST_ID)


cdef int check_response_field(bytes name, bytes value) except -1:
    """`check_field`, and not a field the gateway manages."""
    check_field(name, value)
    if response_managed(name):
        raise ValueError(
            f"the {name.decode('latin-1').lower()} header is managed by the gateway")
    return 0


cdef bytes parts_get(list parts, bytes lname):
    """The first value of field `lname` in flat head parts, or None."""
    cdef Py_ssize_t i
    for i in range(0, len(parts) - 3, 4):
        if same_name(<bytes>parts[i], lname):
            return <bytes>parts[i + 2]
    return None


cdef list parts_drop(list parts, bytes name):
    """`parts` without the `name` fields, any case (the same list when there is none)."""
    cdef list kept
    cdef Py_ssize_t i, j
    for i in range(0, len(parts) - 3, 4):
        if same_field(<bytes>parts[i], name):
            break
    else:
        return parts
    kept = parts[:i]
    for j in range(i, len(parts) - 3, 4):
        if not same_field(<bytes>parts[j], name):
            kept.extend(parts[j:j + 4])
    return kept


cdef int parts_append(list parts, bytes name, bytes value) except -1:
    check_field(name, value)
    return parts_add(parts, name, value)


cdef int parts_add(list parts, bytes name, bytes value) except -1:
    """Append a field already checked (`check_field`)."""
    parts.append(name)
    parts.append(b": ")
    parts.append(value)
    parts.append(b"\r\n")
    return 0


cdef int parts_move(list parts, bytes lname, bytes new_name) except -1:
    cdef Py_ssize_t i
    check_field(new_name, b"")
    for i in range(0, len(parts) - 3, 4):
        if same_name(<bytes>parts[i], lname):
            parts[i] = new_name
    return 0


cdef class Answer:
    """A response a policy sends instead of letting the request continue."""

    def __init__(self, int status, tuple headers=(), bytes body=b""):
        if not 200 <= status <= 599:
            raise ValueError(f"a policy answers with a final status (200-599), not {status}")
        check_answer_headers(headers)
        self.status = status
        self.headers = headers
        self.body = body
        self.request_id_at = -1

    @staticmethod
    def error(int status, str message, str policy, tuple headers=()):
        """A refusal in the gateway's JSON error envelope, made once: ``{"success": false,
        "error": message, "policy": policy, "request_id": ...}``, the request id filled in
        per request when it is sent."""
        body = json.dumps(
            {"success": False, "error": message, "policy": policy, "request_id": ""},
            separators=(",", ":"),
        ).encode()
        answer = Answer(status, ((b"content-type", b"application/json"),) + headers, body)
        answer.request_id_at = len(body) - 2  # between the quotes of the last value
        return answer

    def __repr__(self):
        return f"Answer({self.status}, {self.headers!r}, {self.body!r})"


@cython.freelist(16)
cdef class ResponseHead:
    """Status and header fields of a response before its head is written (response phase).

    From Python: `status` (settable), `header(name)`, `set_header(name, value)`,
    `add_header(name, value)`, `remove_header(name)`, `headers()`. One object per worker is
    reused for every response: it is valid during the phase only.
    """

    def __init__(self, int status, list parts=None):
        self.status = status
        self.parts = parts if parts is not None else []

    cdef bytes get(self, bytes lname):
        return parts_get(self.parts, lname)

    cdef int put(self, bytes name, bytes value) except -1:
        check_response_field(name, value)
        self.parts = parts_drop(self.parts, name)
        return parts_add(self.parts, name, value)

    cdef int append(self, bytes name, bytes value) except -1:
        check_response_field(name, value)
        return parts_add(self.parts, name, value)

    cdef int put_valid(self, bytes name, bytes value) except -1:
        self.parts = parts_drop(self.parts, name)
        return parts_add(self.parts, name, value)

    cdef int append_valid(self, bytes name, bytes value) except -1:
        return parts_add(self.parts, name, value)

    cdef int drop(self, bytes lname) except -1:
        if response_managed(lname):
            check_response_field(lname, b"")
        self.parts = parts_drop(self.parts, lname)
        return 0

    cdef int move(self, bytes lname, bytes new_name) except -1:
        if response_managed(lname):
            check_response_field(lname, b"")
        check_response_field(new_name, b"")
        return parts_move(self.parts, lname, new_name)

    # -- Python API ----------------------------------------------------------------------------

    def header(self, name):
        """The first value of field `name` (any case) as str, or None."""
        value = self.get(_latin1(name).lower())
        return value.decode("latin-1") if value is not None else None

    def set_header(self, name, value):
        """Replace every `name` field by one with `value`."""
        self.put(_latin1(name), _latin1(value))

    def add_header(self, name, value):
        self.append(_latin1(name), _latin1(value))

    def remove_header(self, name):
        self.drop(_latin1(name).lower())

    def headers(self):
        """[(name, value), ...] as str, in order."""
        cdef list parts = self.parts
        return [(parts[i].decode("latin-1"), parts[i + 2].decode("latin-1"))
                for i in range(0, len(parts) - 3, 4)]

    def __setattr__(self, name, value):
        if name != "status":
            raise AttributeError(name)
        if not 200 <= value <= 599:
            raise ValueError(f"a response policy sets a final status (200-599), not {value}")
        if value != self.status and (status_has_no_body(value)
                                     or status_has_no_body(self.status)):
            # the body (or its absence) is framed for the status the response had
            raise ValueError(f"a response policy cannot change status {self.status} to {value}")
        self.status = value


cdef class CorePolicy:
    """Base of every policy on the request path; a subclass overrides the phases it has."""

    def __init__(self):
        self.name = type(self).__name__
        self.type_name = ""
        self.deadline = 10.0

    cdef object request(self, object req):
        return None

    cdef int response(self, object req, ResponseHead head) except -1:
        return 0

    cdef int complete(self, object req) except -1:
        return 0

    def close(self):
        """Called once when the instance is dropped (no snapshot uses it any more)."""

    # Python entry points (tests, the slow path)
    def run_request(self, req):
        return self.request(req)

    def run_response(self, req, ResponseHead head):
        self.response(req, head)

    def run_complete(self, req):
        self.complete(req)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}>"


cdef class PythonPolicy(CorePolicy):
    """Adapts an object with `on_request`, `on_response` and/or `on_complete` (and `close`)."""

    def __init__(self, target):
        CorePolicy.__init__(self)
        self.target = target
        self._on_request = getattr(target, "on_request", None)
        self._on_response = getattr(target, "on_response", None)
        self._on_complete = getattr(target, "on_complete", None)
        for phase in ("on_response", "on_complete"):
            if inspect.iscoroutinefunction(getattr(target, phase, None)):
                raise TypeError(f"{type(target).__name__}.{phase} must not be async")
        self.requests = self._on_request is not None
        self.responses = self._on_response is not None
        self.completes = self._on_complete is not None
        self.is_async = self.requests and inspect.iscoroutinefunction(self._on_request)
        self.name = type(target).__name__
        self.body_limit = getattr(target, "body_limit", 0) or 0
        if self.body_limit < 0:
            raise ValueError(f"{type(target).__name__}.body_limit must be >= 0")

    cdef object request(self, object req):
        return self._on_request(req)

    cdef int response(self, object req, ResponseHead head) except -1:
        self._on_response(req, head)
        return 0

    cdef int complete(self, object req) except -1:
        self._on_complete(req)
        return 0

    def start_async(self, req):
        """The coroutine of the async request phase (the slow path awaits it)."""
        return self._on_request(req)

    def close(self):
        close = getattr(self.target, "close", None)
        if close is not None:
            close()
