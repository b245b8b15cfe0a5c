# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Route matching: host -> path trie -> method, once per request.

Strategy
--------
Routes are grouped by host: an exact-host table (dict of lower-case bytes -> trie), a list of
wildcard hosts ("*.example.com", kept longest suffix first) and one any-host trie. A request tries
the groups in that order and the first group holding a route that accepts the method wins. Within a
group the trie is walked one path segment at a time, depth first with backtracking, trying at every
node the static child first, then the {param} child, then a trailing "*"; the first leaf that
accepts the method is the answer. That order is "most specific wins" read left to right: of two
patterns matching the same path, the one that is static at the first position where they differ
ranks higher, and a param ranks above a wildcard.

Per request the work is pointer scanning over the path bytes (memchr for "/"), one dict lookup per
static segment (a node with a single static child compares with memcmp and allocates nothing), and
one dict lookup per method at the leaf. Param positions are remembered in a C array on the stack;
strings are only made for a route that has params, after it has won. A route without params
returns a tuple built when it was added, so a plain match allocates at most the segment slices.
The 405 case (some leaf matched the path, none the method) is rare and does a second walk that
collects the Allow set across every group that applies to the host.

Semantics worth knowing:
- Paths are compared as raw bytes, no percent-decoding, no dot-segment removal; the pattern is
  UTF-8 encoded once. A trailing slash is significant ("/a/" is not "/a") and empty segments
  only match empty segments ("/a//b" is not "/a/b"); patterns may not contain empty segments
  except a trailing one.
- Patterns come parsed (isekai.config.units.PathPattern: the one grammar, in the config loader).
  "{name}" is a whole, non-empty segment. Its value is percent-decoded and decoded as UTF-8
  (errors replaced). "/static/*" matches "/static/" plus anything ("/static/", "/static/x/y"),
  not "/static"; the tail (percent-decoded) is returned under the key "*".
- Host headers are matched case-insensitively, with the port and one trailing dot removed;
  "[::1]:8080" becomes "[::1]". "*.example.com" matches any depth of subdomain, not the bare
  domain. An empty Host only reaches any-host routes.
- GET also answers HEAD unless the same host + pattern routes HEAD itself; a route naming the
  method beats a methods=None route at the same position (GET-implied HEAD counts as naming it).
- Route conflicts are the config loader's to report (with file and line). As a guard, an add that
  would replace an entry (same host, pattern shape and method) raises RouteConflictError and
  leaves the router unchanged.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr, memcmp

from isekai.errors import ConfigError, RouteConflictError

cdef enum SegKind:
    SEG_STATIC = 0
    SEG_PARAM = 1
    SEG_WILD = 2

cdef bytes _HEAD = b"HEAD"
cdef bytes _GET = b"GET"
cdef str _TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------
# Trie objects (built at configuration time, read per request)

cdef class RouteEntry:
    def __cinit__(self, object value, tuple names, bint wildcard, str where):
        self.value = value
        self.names = names
        self.wildcard = wildcard
        self.plain = (value, None)
        self.where = where


cdef class RouteLeaf:
    def __cinit__(self):
        self.explicit = {}
        self.table = {}
        self.any = None

    cdef RouteEntry pick(self, bytes method):
        cdef object e
        if self.table:
            e = self.table.get(method)
            if e is not None:
                return <RouteEntry>e
        return self.any


cdef class RouteNode:
    def __cinit__(self):
        self.static = None
        self.one_key = None
        self.one_child = None
        self.param = None
        self.leaf = None
        self.wild = None


cdef class HostGroup:
    def __cinit__(self, bytes suffix):
        self.suffix = suffix
        self.root = RouteNode()


# ---------------------------------------------------------------------------------------------
# Per-request helpers

cdef inline Py_ssize_t _seg_end(const char* buf, Py_ssize_t pos, Py_ssize_t n) noexcept:
    cdef const char* p = <const char*>memchr(buf + pos, c'/', <size_t>(n - pos))
    if p == NULL:
        return n
    return p - buf


cdef inline RouteNode _static_child(RouteNode node, const char* buf, Py_ssize_t pos,
                                    Py_ssize_t end):
    cdef bytes key = node.one_key
    cdef Py_ssize_t size = end - pos
    cdef object child
    if key is not None:
        if PyBytes_GET_SIZE(key) == size and memcmp(PyBytes_AS_STRING(key), buf + pos,
                                                     <size_t>size) == 0:
            return node.one_child
        return None
    if node.static is None:
        return None
    child = node.static.get(PyBytes_FromStringAndSize(buf + pos, size))
    return <RouteNode>child


cdef RouteEntry _find(RouteNode node, Py_ssize_t pos, int depth, Walk* w, bytes method):
    """Depth-first search from ``node`` with the segment starting at ``pos``; None if no leaf
    accepts ``method``. ``pos > n`` means the path is used up."""
    cdef Py_ssize_t n = w.n
    cdef Py_ssize_t end
    cdef RouteNode child
    cdef RouteEntry e
    if pos > n:
        if node.leaf is not None:
            e = node.leaf.pick(method)
            if e is None:
                w.path_hit = True
            return e
        return None
    end = _seg_end(w.buf, pos, n)
    child = _static_child(node, w.buf, pos, end)
    if child is not None:
        e = _find(child, end + 1, depth, w, method)
        if e is not None:
            return e
    if node.param is not None and end > pos:
        w.cap_start[depth] = pos
        w.cap_end[depth] = end
        e = _find(node.param, end + 1, depth + 1, w, method)
        if e is not None:
            return e
    if node.wild is not None:
        e = node.wild.pick(method)
        if e is not None:
            w.tail = pos
            return e
        w.path_hit = True
    return None


cdef int _collect(RouteNode node, Py_ssize_t pos, Walk* w, set out) except -1:
    """Add the methods of every leaf matching the rest of the path to ``out`` (405 path)."""
    cdef Py_ssize_t end
    cdef RouteNode child
    if pos > w.n:
        if node.leaf is not None:
            out.update(node.leaf.table)
        return 0
    end = _seg_end(w.buf, pos, w.n)
    child = _static_child(node, w.buf, pos, end)
    if child is not None:
        _collect(child, end + 1, w, out)
    if node.param is not None and end > pos:
        _collect(node.param, end + 1, w, out)
    if node.wild is not None:
        out.update(node.wild.table)
    return 0


cdef inline int _hexval(char c) noexcept:
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef str _decode(const char* buf, Py_ssize_t start, Py_ssize_t end):
    """Percent-decode ``buf[start:end]`` and decode it as UTF-8 (errors replaced)."""
    cdef Py_ssize_t size = end - start
    cdef Py_ssize_t i = 0, m = 0
    cdef int hi, lo
    cdef char* tmp
    if memchr(buf + start, c'%', <size_t>size) == NULL:
        return PyUnicode_DecodeUTF8(buf + start, size, "replace")
    tmp = <char*>PyMem_Malloc(<size_t>size)
    if tmp == NULL:
        raise MemoryError()
    try:
        while i < size:
            if buf[start + i] == c'%' and i + 2 < size:
                hi = _hexval(buf[start + i + 1])
                lo = _hexval(buf[start + i + 2])
                if hi >= 0 and lo >= 0:
                    tmp[m] = <char>(hi * 16 + lo)
                    m += 1
                    i += 3
                    continue
            tmp[m] = buf[start + i]
            m += 1
            i += 1
        return PyUnicode_DecodeUTF8(tmp, m, "replace")
    finally:
        PyMem_Free(tmp)


cdef bytes _host_key(bytes host):
    """Lower-case host without port or trailing dot; ``host`` itself when already normal."""
    cdef const char* buf = PyBytes_AS_STRING(host)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(host)
    cdef Py_ssize_t end = 0, i
    cdef const char* p
    cdef bint upper = False
    cdef bytes out
    cdef char* dst
    cdef char c
    if n == 0:
        return host
    if buf[0] == c'[':
        p = <const char*>memchr(buf, c']', <size_t>n)
        end = n if p == NULL else (p - buf) + 1
    else:
        p = <const char*>memchr(buf, c':', <size_t>n)
        end = n if p == NULL else p - buf
        if end > 0 and buf[end - 1] == c'.':
            end -= 1
    for i in range(end):
        c = buf[i]
        if c'A' <= c <= c'Z':
            upper = True
            break
    if not upper:
        if end == n:
            return host
        return PyBytes_FromStringAndSize(buf, end)
    out = PyBytes_FromStringAndSize(NULL, end)
    dst = PyBytes_AS_STRING(out)
    for i in range(end):
        c = buf[i]
        if c'A' <= c <= c'Z':
            c = c + 32
        dst[i] = c
    return out


cdef inline bint _suffix_match(bytes hkey, bytes suffix) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(hkey)
    cdef Py_ssize_t k = PyBytes_GET_SIZE(suffix)
    return n > k and memcmp(PyBytes_AS_STRING(hkey) + (n - k), PyBytes_AS_STRING(suffix),
                            <size_t>k) == 0


cdef object _result(RouteEntry e, Walk* w):
    cdef dict params
    cdef Py_ssize_t i
    if not e.wildcard and not e.names:
        return e.plain
    params = {}
    for i in range(len(e.names)):
        params[e.names[i]] = _decode(w.buf, w.cap_start[i], w.cap_end[i])
    if e.wildcard:
        params["*"] = _decode(w.buf, w.tail, w.n)
    return (e.value, params)


# ---------------------------------------------------------------------------------------------
# Configuration-time parsing

def _parse_host(object host):
    """-> (0, None) any host, (1, key) exact, (2, suffix) wildcard."""
    if host is None:
        return 0, None
    if not isinstance(host, str) or not host:
        raise ConfigError(f"route host must be a non-empty string or None, got {host!r}")
    h = host.lower()
    if not h.isascii():
        raise ConfigError(f"route host {host!r} is not ASCII; use its punycode (xn--) form")
    if h.startswith("["):
        if not h.endswith("]"):
            raise ConfigError(f"route host {host!r}: unterminated IPv6 literal")
        return 1, h.encode("ascii")
    if ":" in h:
        raise ConfigError(f"route host {host!r} must not carry a port")
    if h.endswith("."):
        h = h[:len(h) - 1]
    if h.startswith("*."):
        rest = h[2:]
        if not rest or "*" in rest or rest.startswith(".") or ".." in rest:
            raise ConfigError(f"route host {host!r}: bad wildcard host")
        return 2, h[1:].encode("ascii")
    if not h or "*" in h or ".." in h or h.startswith(".") or "/" in h:
        raise ConfigError(f"route host {host!r}: bad host name")
    return 1, h.encode("ascii")


def _parse_methods(object methods):
    """-> None (any method) or a tuple of distinct upper-case method bytes."""
    if methods is None:
        return None
    if isinstance(methods, (str, bytes)):
        raise ConfigError(f"route methods must be a tuple of names, got {methods!r}")
    out = []
    for m in methods:
        if not isinstance(m, str) or not m or any(ch not in _TOKEN_CHARS for ch in m):
            raise ConfigError(f"route method {m!r} is not an HTTP method token")
        b = m.upper().encode("ascii")
        if b not in out:
            out.append(b)
    if not out:
        raise ConfigError("route methods must not be empty; use None for any method")
    return tuple(out)


def _segments(object pattern):
    """-> (segments, names, wildcard, text) of an already-parsed pattern.

    The grammar of patterns (and route conflicts) belong to the config loader
    (isekai.config.units.parse_path_pattern -> PathPattern); the router only turns the parsed
    segments into trie keys: a str is a static segment, None a {param}, a last "*" the wildcard.
    """
    try:
        parts = pattern.segments
        names = tuple(pattern.params)
        wildcard = bool(pattern.wildcard)
        text = pattern.text
    except AttributeError:
        raise TypeError(
            f"Router.add takes a parsed path pattern (isekai.config.units.parse_path_pattern), "
            f"got {pattern!r}") from None
    if not parts:
        raise ConfigError(f"route pattern {text!r} has no segments")
    if len(names) > MAX_PARAMS:
        raise ConfigError(f"route pattern {text!r}: more than {MAX_PARAMS} parameters")
    segs = []
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if part is None:
            segs.append((SEG_PARAM, None))
        elif wildcard and i == last:
            segs.append((SEG_WILD, None))
        else:
            segs.append((SEG_STATIC, part.encode("utf-8")))
    return segs, names, wildcard, text


cdef RouteNode _descend(RouteNode node, list segs, bint create):
    """Walk (and with ``create`` grow) the trie along the non-wildcard segments."""
    cdef RouteNode child
    for kind, key in segs:
        if kind == SEG_WILD:
            break
        if kind == SEG_STATIC:
            child = None if node.static is None else node.static.get(key)
            if child is None:
                if not create:
                    return None
                child = RouteNode()
                if node.static is None:
                    node.static = {}
                node.static[key] = child
                if len(node.static) == 1:
                    node.one_key = key
                    node.one_child = child
                else:
                    node.one_key = None
                    node.one_child = None
        else:
            child = node.param
            if child is None:
                if not create:
                    return None
                child = RouteNode()
                node.param = child
        node = child
    return node


# ---------------------------------------------------------------------------------------------

cdef class Router:
    """Host + path + method route table; see the module docstring for the rules."""

    def __init__(self):
        self._any = RouteNode()
        self._exact = {}
        self._wild = []
        self._count = 0

    def __len__(self):
        return self._count

    def add(self, host, methods, pattern, value):
        """Add a route; ``pattern`` is parsed (``isekai.config.units.PathPattern``).

        Raises RouteConflictError when the entry would replace another (same host, shape and
        method: a guard, the config loader reports conflicts first), ConfigError on bad input.
        """
        cdef RouteNode root, node
        cdef RouteLeaf leaf
        cdef RouteEntry entry
        cdef HostGroup group
        hkind, hkey = _parse_host(host)
        mset = _parse_methods(methods)
        segs, names, wildcard, text = _segments(pattern)

        # Find the would-be leaf without growing anything, and check for a tie.
        root = self._root(hkind, hkey)
        leaf = None
        if root is not None:
            node = _descend(root, segs, False)
            if node is not None:
                leaf = node.wild if wildcard else node.leaf
        if leaf is not None:
            if mset is None:
                if leaf.any is not None:
                    raise RouteConflictError(
                        f"route {text!r} (host {host!r}, any method) conflicts with "
                        f"{leaf.any.where}")
            else:
                for m in mset:
                    if m in leaf.explicit:
                        raise RouteConflictError(
                            f"route {text!r} (host {host!r}, method {m.decode()}) conflicts "
                            f"with {(<RouteEntry>leaf.explicit[m]).where}")

        # No tie: grow the trie and insert.
        if root is None:
            if hkind == 1:
                root = RouteNode()
                self._exact[hkey] = root
            else:
                group = HostGroup(hkey)
                root = group.root
                self._wild.append(group)
                self._wild.sort(key=_suffix_len, reverse=True)
        node = _descend(root, segs, True)
        if leaf is None:
            leaf = RouteLeaf()
            if wildcard:
                node.wild = leaf
            else:
                node.leaf = leaf
        entry = RouteEntry(value, names, wildcard, f"route {text!r} (host {host!r})")
        if mset is None:
            leaf.any = entry
        else:
            for m in mset:
                leaf.explicit[m] = entry
            table = dict(leaf.explicit)
            if _GET in table and _HEAD not in table:
                table[_HEAD] = table[_GET]
            leaf.table = table
        self._count += 1

    cdef RouteNode _root(self, int hkind, bytes hkey):
        """The trie of a parsed host (`_parse_host`), or None when it has none yet."""
        cdef HostGroup group
        if hkind == 0:
            return self._any
        if hkind == 1:
            return self._exact.get(hkey)
        for group in self._wild:
            if group.suffix == hkey:
                return group.root
        return None

    def remove(self, host, methods, pattern):
        """Remove the route added with the same ``host``, ``methods`` and ``pattern`` shape;
        return its value. KeyError when there is none (nothing is changed then).

        Together with `add` this changes one route in place: the loop runs no request between
        the two calls, and a request that matched the old route keeps its value.
        """
        cdef RouteNode root = None, node
        cdef RouteLeaf leaf = None
        cdef RouteEntry entry
        hkind, hkey = _parse_host(host)
        mset = _parse_methods(methods)
        segs, names, wildcard, text = _segments(pattern)
        root = self._root(hkind, hkey)
        node = None if root is None else _descend(root, segs, False)
        if node is not None:
            leaf = node.wild if wildcard else node.leaf
        if leaf is None:
            raise KeyError(f"no route {text!r} (host {host!r})")
        if mset is None:
            if leaf.any is None:
                raise KeyError(f"no route {text!r} (host {host!r}, any method)")
            entry = leaf.any
            leaf.any = None
        else:
            found = [leaf.explicit.get(m) for m in mset]
            if found[0] is None or any(e is not found[0] for e in found):
                raise KeyError(f"no route {text!r} (host {host!r}) with exactly these methods")
            entry = <RouteEntry>found[0]
            if len([e for e in leaf.explicit.values() if e is entry]) != len(mset):
                raise KeyError(f"no route {text!r} (host {host!r}) with exactly these methods")
            for m in mset:
                del leaf.explicit[m]
            table = dict(leaf.explicit)
            if _GET in table and _HEAD not in table:
                table[_HEAD] = table[_GET]
            leaf.table = table
        if leaf.any is None and not leaf.explicit:
            # an empty leaf would still count as a path match (405 instead of 404)
            if wildcard:
                node.wild = None
            else:
                node.leaf = None
        self._count -= 1
        return entry.value

    cpdef object match(self, bytes host, bytes method, bytes path):
        """-> (value, params|None), (None, allow_bytes) for 405, or None for 404."""
        cdef Walk w
        cdef RouteEntry e
        cdef RouteNode exact = None
        cdef HostGroup group
        cdef bytes hkey = None
        cdef object found
        if method is None or path is None:
            raise TypeError("match() needs bytes method and path")
        w.n = PyBytes_GET_SIZE(path)
        w.buf = PyBytes_AS_STRING(path)
        w.path_hit = False
        w.tail = 0
        if w.n == 0 or w.buf[0] != c'/':
            return None
        if host is not None and PyBytes_GET_SIZE(host) > 0 and (self._exact or self._wild):
            hkey = _host_key(host)
            if self._exact:
                found = self._exact.get(hkey)
                if found is not None:
                    exact = <RouteNode>found
                    e = _find(exact, 1, 0, &w, method)
                    if e is not None:
                        return _result(e, &w)
            for group in self._wild:
                if _suffix_match(hkey, group.suffix):
                    e = _find(group.root, 1, 0, &w, method)
                    if e is not None:
                        return _result(e, &w)
        e = _find(self._any, 1, 0, &w, method)
        if e is not None:
            return _result(e, &w)
        if w.path_hit:
            return (None, self._allow(exact, hkey, &w))
        return None

    cdef object _allow(self, RouteNode exact, bytes hkey, Walk* w):
        cdef set methods = set()
        cdef HostGroup group
        if exact is not None:
            _collect(exact, 1, w, methods)
        if hkey is not None:
            for group in self._wild:
                if _suffix_match(hkey, group.suffix):
                    _collect(group.root, 1, w, methods)
        _collect(self._any, 1, w, methods)
        return b", ".join(sorted(methods))


def _suffix_len(HostGroup group):
    return len(group.suffix)
