# Declarations of the hot policy families; definitions and the strategy essay live in
# families.pyx.

from isekai._core.iptrie cimport IpSet
from isekai._core.policy cimport Answer, CorePolicy, ResponseHead
from isekai._core.protocol cimport ProxyRequest


cdef enum PartKind:
    PART_LITERAL = 0
    PART_CLIENT_IP = 1
    PART_REQUEST_ID = 2
    PART_ROUTE = 3
    PART_PARAM = 4


cdef class Template:
    """A header value template, compiled: literal bytes and placeholders."""
    cdef readonly bytes constant     # the value when the template has no placeholder, else None
    cdef tuple kinds                 # PartKind per part
    cdef tuple data                  # per part: literal bytes, or the param name (str), or None
    cdef str route_name              # last route name seen and its bytes (names rarely change)
    cdef bytes route_bytes

    cdef bytes render(self, ProxyRequest req)
    cdef bytes _part(self, Py_ssize_t i, ProxyRequest req)


cdef class HeaderEdits:
    """One direction's edits, applied in the order remove, rename, set, add."""
    cdef readonly bint empty
    cdef tuple remove                # lower-case names
    cdef tuple rename                # ((lower-case old name, new name), ...)
    cdef tuple set_                  # ((name, Template), ...)
    cdef tuple add                   # ((name, Template), ...)

    cdef int apply_request(self, ProxyRequest req) except -1
    cdef int apply_response(self, ProxyRequest req, ResponseHead head) except -1


cdef class HeadersPolicy(CorePolicy):
    cdef readonly HeaderEdits request_edits
    cdef readonly HeaderEdits response_edits


cdef class CorsPolicy(CorePolicy):
    cdef bint any_origin             # "*" is among the origins
    cdef bint echo                   # answer with the request's Origin (else "*")
    cdef bint credentials
    cdef frozenset exact             # lower-case origins
    cdef tuple patterns              # ((scheme or None, ".suffix"), ...)
    cdef bint any_method
    cdef frozenset methods
    cdef bint any_header
    cdef frozenset headers           # lower-case names
    cdef tuple preflight_fields      # 204 fields but Access-Control-Allow-Origin (and -Headers
                                     # / -Methods when they echo the request)
    cdef bytes allow_methods         # joined, or None: echo the requested method
    cdef bytes allow_headers         # joined, or None: echo the requested headers
    cdef Answer preflight_star       # the whole 204 when it does not depend on the request
    cdef Answer refuse_origin
    cdef Answer refuse_method
    cdef Answer refuse_headers
    cdef bytes expose                # Access-Control-Expose-Headers value, or None

    cdef bint origin_ok(self, bytes origin)
    cdef object preflight(self, ProxyRequest req, bytes origin, bytes method)


cdef class IpFilterPolicy(CorePolicy):
    cdef readonly IpSet allow        # None: every address not denied passes
    cdef readonly IpSet deny         # None: nothing is denied by list
    cdef readonly Answer refused
