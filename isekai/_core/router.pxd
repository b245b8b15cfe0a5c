# Declarations for the route trie; definitions and the strategy essay live in router.pyx.

cdef enum:
    MAX_PARAMS = 32          # {param} segments allowed in one pattern


cdef struct Walk:
    # State of one match: the request path and what the depth-first search captured.
    const char* buf
    Py_ssize_t n
    Py_ssize_t cap_start[MAX_PARAMS]
    Py_ssize_t cap_end[MAX_PARAMS]
    Py_ssize_t tail          # offset where the "*" tail starts
    bint path_hit            # some leaf matched the path but refused the method


cdef class RouteEntry:
    # One added route: what match() hands back.
    cdef object value
    cdef tuple names         # {param} names in pattern order
    cdef bint wildcard       # pattern ends in "/*"
    cdef tuple plain         # cached (value, None) for patterns without params
    cdef str where           # "host pattern" for error messages


cdef class RouteLeaf:
    # Routes that end at the same trie position (same host + shape), by method.
    cdef dict explicit       # bytes method -> RouteEntry, as configured
    cdef dict table          # explicit + HEAD implied by GET; what lookups use
    cdef RouteEntry any      # methods=None route, or None

    cdef RouteEntry pick(self, bytes method)


cdef class RouteNode:
    # One path position; children per kind of next segment.
    cdef dict static         # bytes segment -> RouteNode
    cdef bytes one_key       # the only static key when there is exactly one, else None
    cdef RouteNode one_child
    cdef RouteNode param     # child for a {param} segment
    cdef RouteLeaf leaf      # routes whose pattern ends here
    cdef RouteLeaf wild      # routes whose "*" starts here


cdef class HostGroup:
    # Trie of the routes of one "*.suffix" host.
    cdef bytes suffix        # b".example.com"
    cdef RouteNode root


cdef class Router:
    cdef RouteNode _any      # routes for any host
    cdef dict _exact         # bytes host -> RouteNode
    cdef list _wild          # HostGroup, longest suffix first
    cdef Py_ssize_t _count

    cpdef object match(self, bytes host, bytes method, bytes path)
    cdef RouteNode _root(self, int hkind, bytes hkey)
    cdef object _allow(self, RouteNode exact, bytes hkey, Walk* w)
