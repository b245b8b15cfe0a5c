# cython: language_level=3, boundscheck=False, wraparound=False
"""The hot policy families: headers, cors and ip_filter (DESIGN.md §6).

Strategy. Each family is a `CorePolicy` subclass whose phases are C calls, built once per policy
instance from plain values (the builders in `isekai.policies` turn the config classes into
them; `_core` never sees config objects). Everything that can be decided when the instance is
built is: header names are encoded and lower-cased, value templates are split into literal bytes
and placeholders, origins are sorted into an exact set and suffix patterns, answers (403, the
preflight 204 when it does not depend on the request) are prebuilt `Answer`s. Per request there
is only the work itself: a few header lookups and edits on the request's flat field list, one
trie walk, one set lookup. Nothing here raises on bad client input: a value that cannot match
simply does not.

headers  Request and response edits in the order remove, rename, set, add. A template is a
         constant (no per-request work) or parts joined per request; `${param.NAME}` comes from
         the percent-decoded path, so its bytes are re-encoded: every byte that is not visible
         ASCII (0x21-0x7E) becomes %XX and no CR, LF or control byte reaches a header.
cors     A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered here,
         204 or 403, and never reaches the upstream. Other requests pass; the response phase
         adds Access-Control-Allow-Origin (+ credentials, expose) when the Origin is allowed,
         and `Vary: Origin` whenever the answer depends on the Origin (every response unless
         the policy answers "*").
ip_filter  `IpSet` lookups of the client address (after trusted proxies): deny wins; with an
         allow list, an address not in it is refused. An unparseable address is in no set.
"""


from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String

from isekai._core.http cimport join_bytes
from isekai._core.iptrie cimport IpSet
from isekai._core.policy cimport (
    Answer, CorePolicy, ResponseHead, check_field, check_response_field, same_name,
)
from isekai._core.protocol cimport CoreRoute, ProxyRequest

cdef bytes OPTIONS = b"OPTIONS"
cdef bytes HEX = b"0123456789ABCDEF"
cdef dict PART_KINDS = {
    "literal": PART_LITERAL, "client_ip": PART_CLIENT_IP, "request_id": PART_REQUEST_ID,
    "route": PART_ROUTE, "param": PART_PARAM,
}
cdef tuple JSON_TYPE = ((b"content-type", b"application/json"),)


cdef bytes visible(bytes raw):
    """`raw` with every byte outside visible ASCII (0x21-0x7E) percent-encoded."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t i, j, extra = 0
    cdef unsigned char c
    cdef bytes out
    cdef char* q
    for i in range(n):
        if p[i] < 0x21 or p[i] > 0x7E:
            extra += 2
    if extra == 0:
        return raw
    out = PyBytes_FromStringAndSize(NULL, n + extra)
    q = PyBytes_AS_STRING(out)
    j = 0
    for i in range(n):
        c = p[i]
        if c < 0x21 or c > 0x7E:
            q[j] = b'%'
            q[j + 1] = HEX[c >> 4]
            q[j + 2] = HEX[c & 15]
            j += 3
        else:
            q[j] = c
            j += 1
    return out


def percent_visible(bytes raw):
    """Python entry point of `visible` (tests)."""
    return visible(raw)


cdef inline bytes _b(object text):
    return text if isinstance(text, bytes) else (<str>text).encode("latin-1")


cdef Answer json_answer(int status, str message, str family, tuple extra=()):
    return Answer.error(status, message, family, extra)


# -- headers -------------------------------------------------------------------------------------

cdef class Template:
    """``Template((("literal", b"id="), ("request_id", None)))``: the parts of one header value,
    as `isekai.policies.headers.compile_template` makes them."""

    def __init__(self, parts):
        kinds = []
        data = []
        for kind, value in parts:
            code = PART_KINDS[kind]
            if code == PART_LITERAL:
                value = _b(value)
                if not value:
                    continue
                if kinds and kinds[len(kinds) - 1] == PART_LITERAL:
                    data[len(data) - 1] = data[len(data) - 1] + value
                    continue
            elif code == PART_PARAM:
                if not isinstance(value, str) or not value:
                    raise ValueError("a param placeholder needs a name")
            else:
                value = None
            kinds.append(code)
            data.append(value)
        self.kinds = tuple(kinds)
        self.data = tuple(data)
        if not kinds:
            self.constant = b""
        elif len(kinds) == 1 and kinds[0] == PART_LITERAL:
            self.constant = data[0]
        for i, kind in enumerate(kinds):
            if kind == PART_LITERAL and any(c < 0x20 or c == 0x7F for c in data[i] if c != 9):
                raise ValueError("a header value may not contain control characters")

    cdef bytes render(self, ProxyRequest req):
        cdef Py_ssize_t i, n
        cdef list out
        if self.constant is not None:
            return self.constant
        n = len(self.kinds)
        if n == 1:
            return self._part(0, req)
        out = []
        for i in range(n):
            out.append(self._part(i, req))
        return join_bytes(out)

    cdef bytes _part(self, Py_ssize_t i, ProxyRequest req):
        cdef int kind = <int>self.kinds[i]
        cdef object value
        cdef CoreRoute route
        cdef str name
        if kind == PART_LITERAL:
            return <bytes>self.data[i]
        if kind == PART_CLIENT_IP:
            value = req.client_address()
            return value if value is not None else b""
        if kind == PART_REQUEST_ID:
            return req.request_id if req.request_id is not None else b""
        if kind == PART_ROUTE:
            route = req.route
            name = route.name if route is not None else ""
            if name is not self.route_name:
                self.route_bytes = visible(PyUnicode_AsUTF8String(name or ""))
                self.route_name = name
            return self.route_bytes
        # PART_PARAM
        if req.params is None:
            return b""
        value = req.params.get(self.data[i])
        if value is None:
            return b""
        return visible(PyUnicode_AsUTF8String(value))

    def __repr__(self):
        return f"Template({list(zip(self.kinds, self.data))!r})"


cdef class HeaderEdits:
    """``HeaderEdits(remove=(name, ...), rename=((old, new), ...), set=((name, template), ...),
    add=((name, template), ...))``; names str or bytes, templates `Template` or its parts."""

    def __init__(self, remove=(), rename=(), set=(), add=()):
        self.remove = tuple(_b(name).lower() for name in remove)
        self.rename = tuple((_b(old).lower(), _b(new)) for old, new in rename)
        self.set_ = tuple((_b(name), _template(t)) for name, t in set)
        self.add = tuple((_b(name), _template(t)) for name, t in add)
        self.empty = not (self.remove or self.rename or self.set_ or self.add)
        # checked once here, so each request writes them without checking again
        for name, _ in (*self.set_, *self.add):
            check_field(name, b"")
        for _, name in self.rename:
            check_field(name, b"")

    cdef int apply_request(self, ProxyRequest req) except -1:
        cdef object item
        cdef tuple pair
        for item in self.remove:
            req.drop_header(<bytes>item)
        for item in self.rename:
            pair = <tuple>item
            req.move_header(<bytes>pair[0], <bytes>pair[1])
        for item in self.set_:
            pair = <tuple>item
            req.put_valid_header(<bytes>pair[0], (<Template>pair[1]).render(req))
        for item in self.add:
            pair = <tuple>item
            req.append_valid_header(<bytes>pair[0], (<Template>pair[1]).render(req))
        return 0

    cdef int apply_response(self, ProxyRequest req, ResponseHead head) except -1:
        cdef object item
        cdef tuple pair
        for item in self.remove:
            head.drop(<bytes>item)
        for item in self.rename:
            pair = <tuple>item
            head.move(<bytes>pair[0], <bytes>pair[1])
        for item in self.set_:
            pair = <tuple>item
            head.put_valid(<bytes>pair[0], (<Template>pair[1]).render(req))
        for item in self.add:
            pair = <tuple>item
            head.append_valid(<bytes>pair[0], (<Template>pair[1]).render(req))
        return 0


cdef Template _template(object value):
    return value if isinstance(value, Template) else Template(value)


cdef class HeadersPolicy(CorePolicy):
    """``HeadersPolicy(request: HeaderEdits, response: HeaderEdits)``."""

    def __init__(self, HeaderEdits request not None, HeaderEdits response not None):
        CorePolicy.__init__(self)
        self.type_name = "headers"
        self.request_edits = request
        self.response_edits = response
        self.requests = not request.empty
        self.responses = not response.empty
        # response edits are written unchecked per request: none may touch a managed field
        for name in (*response.remove, *[old for old, _ in response.rename],
                     *[new for _, new in response.rename], *[n for n, _ in response.set_],
                     *[n for n, _ in response.add]):
            check_response_field(name, b"")

    cdef object request(self, object req):
        self.request_edits.apply_request(<ProxyRequest>req)
        return None

    cdef int response(self, object req, ResponseHead head) except -1:
        return self.response_edits.apply_response(<ProxyRequest>req, head)


# -- cors ----------------------------------------------------------------------------------------

cdef bint _has_token(bytes value, bytes lower):
    for token in value.split(b","):
        if token.strip().lower() == lower:
            return True
    return False


cdef bint _host_chars(bytes origin, Py_ssize_t start, Py_ssize_t end):
    # the labels a "*" stands for: letters, digits, "-" and "." (a dot neither first nor last)
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(origin)
    cdef Py_ssize_t i
    cdef unsigned char c
    if end <= start or p[start] == b'.':
        return False
    for i in range(start, end):
        c = p[i]
        if not ((b'a' <= c <= b'z') or (b'0' <= c <= b'9') or c == b'-' or c == b'.'):
            return False
    return True


cdef class CorsPolicy(CorePolicy):
    """``CorsPolicy(any_origin, exact, patterns, methods, headers, expose_headers, credentials,
    max_age)``: `exact` lower-case origins, `patterns` ((scheme or None, ".suffix"), ...) as
    `isekai.policies.cors.compile_origins` makes them; `methods` / `headers` may hold "*"
    (any); `max_age` seconds or None."""

    def __init__(self, bint any_origin, exact, patterns, methods, headers, expose_headers,
                 bint credentials, max_age):
        CorePolicy.__init__(self)
        self.type_name = "cors"
        self.requests = True
        self.responses = True
        self.any_origin = any_origin
        self.credentials = credentials
        self.echo = not any_origin or credentials
        self.exact = frozenset(_b(o).lower() for o in exact)
        self.patterns = tuple((_b(s).lower() if s is not None else None, _b(x).lower())
                              for s, x in patterns)
        methods = [_b(m) for m in methods]
        self.any_method = b"*" in methods
        self.methods = frozenset(methods)
        headers = [_b(h) for h in headers]
        self.any_header = b"*" in headers
        self.headers = frozenset(h.lower() for h in headers)
        self.allow_methods = None if self.any_method else b", ".join(methods)
        self.allow_headers = None if self.any_header else b", ".join(headers)
        self.expose = b", ".join(_b(h) for h in expose_headers) or None
        if self.expose is not None:
            check_field(b"access-control-expose-headers", self.expose)
        vary = ((b"vary", b"Origin"),) if self.echo else ()
        fields = []
        if self.allow_methods is not None:
            fields.append((b"access-control-allow-methods", self.allow_methods))
        if self.allow_headers:
            fields.append((b"access-control-allow-headers", self.allow_headers))
        if credentials:
            fields.append((b"access-control-allow-credentials", b"true"))
        if max_age is not None:
            fields.append((b"access-control-max-age", b"%d" % int(max_age)))
        self.preflight_fields = tuple(fields) + vary
        if not self.echo and not self.any_method and not self.any_header:
            self.preflight_star = Answer(
                204, self.preflight_fields + ((b"access-control-allow-origin", b"*"),), b"")
        self.refuse_origin = json_answer(403, "CORS preflight refused: origin not allowed",
                                         "cors", vary)
        self.refuse_method = json_answer(403, "CORS preflight refused: method not allowed",
                                         "cors", vary)
        self.refuse_headers = json_answer(403, "CORS preflight refused: header not allowed",
                                          "cors", vary)

    cdef bint origin_ok(self, bytes origin):
        cdef Py_ssize_t sep, n, k
        cdef object item
        cdef tuple pattern
        cdef bytes scheme, suffix
        if not origin:
            return False
        if self.any_origin:
            return True
        if origin in self.exact:
            return True
        if not self.patterns and not self.exact:
            return False
        if not origin.islower() and origin.lower() != origin:
            origin = origin.lower()
            if origin in self.exact:
                return True
        sep = origin.find(b"://")
        if sep <= 0:
            return False
        n = len(origin)
        for item in self.patterns:
            pattern = <tuple>item
            if pattern[0] is not None:
                scheme = <bytes>pattern[0]
                if sep != len(scheme) or not origin.startswith(scheme):
                    continue
            suffix = <bytes>pattern[1]
            k = len(suffix)
            if origin.endswith(suffix) and _host_chars(origin, sep + 3, n - k):
                return True
        return False

    def origin_allowed(self, origin):
        """Whether `origin` (str or bytes) is allowed (tests, tools)."""
        return self.origin_ok(_b(origin))

    cdef object request(self, object req):
        cdef ProxyRequest r = <ProxyRequest>req
        cdef bytes origin, method
        if r.method != OPTIONS:
            return None
        origin = r.get_header(b"origin")
        if origin is None:
            return None
        method = r.get_header(b"access-control-request-method")
        if method is None:
            return None  # an actual OPTIONS request, not a preflight
        return self.preflight(r, origin, method.strip())

    cdef object preflight(self, ProxyRequest req, bytes origin, bytes method):
        cdef bytes requested, token
        cdef list fields
        if not self.origin_ok(origin):
            return self.refuse_origin
        if not self.any_method and method not in self.methods:
            return self.refuse_method
        requested = req.get_header_joined(b"access-control-request-headers")
        if requested is not None and not self.any_header:
            for token in requested.split(b","):
                token = token.strip().lower()
                if token and token not in self.headers:
                    return self.refuse_headers
        if self.preflight_star is not None:
            return self.preflight_star
        fields = list(self.preflight_fields)
        fields.append((b"access-control-allow-origin", origin if self.echo else b"*"))
        if self.any_method:
            fields.append((b"access-control-allow-methods", method))
        if self.any_header and requested is not None and requested.strip():
            fields.append((b"access-control-allow-headers", requested.strip()))
        return Answer(204, tuple(fields), b"")

    cdef int response(self, object req, ResponseHead head) except -1:
        cdef bytes origin = (<ProxyRequest>req).get_header(b"origin")
        cdef bint allowed = origin is not None and self.origin_ok(origin)
        cdef list parts
        cdef Py_ssize_t i, vary = -1
        cdef bint varies = not self.echo, upstream_cors = False
        cdef bytes name, value
        if not allowed and not self.echo:
            return 0
        # One pass over the fields: the first Vary (and whether Origin is in one), and CORS
        # fields the upstream set itself (then replaced: put, not append).
        parts = head.parts
        for i in range(0, len(parts) - 3, 4):
            name = <bytes>parts[i]
            if same_name(name, b"vary"):
                value = <bytes>parts[i + 2]
                if not varies and (value.strip() == b"*" or _has_token(value, b"origin")):
                    varies = True
                elif vary < 0:
                    vary = i
            elif (same_name(name, b"access-control-allow-origin")
                    or same_name(name, b"access-control-allow-credentials")
                    or same_name(name, b"access-control-expose-headers")):
                upstream_cors = True
        if not varies:
            if vary < 0:
                head.append_valid(b"vary", b"Origin")
            else:
                value = <bytes>parts[vary + 2]
                parts[vary + 2] = value + b", Origin" if value.strip() else b"Origin"
        if not allowed:
            return 0
        if upstream_cors:
            head.drop(b"access-control-allow-origin")
            head.drop(b"access-control-allow-credentials")
            head.drop(b"access-control-expose-headers")
        # the origin is a parsed request field, the rest was checked when the policy was built
        head.append_valid(b"access-control-allow-origin", origin if self.echo else b"*")
        if self.credentials:
            head.append_valid(b"access-control-allow-credentials", b"true")
        if self.expose is not None:
            head.append_valid(b"access-control-expose-headers", self.expose)
        return 0


# -- ip_filter -----------------------------------------------------------------------------------

cdef class IpFilterPolicy(CorePolicy):
    """``IpFilterPolicy(allow: IpSet | None, deny: IpSet | None)``: deny wins; with `allow`,
    anything not in it is refused (403)."""

    def __init__(self, IpSet allow, IpSet deny):
        CorePolicy.__init__(self)
        self.type_name = "ip_filter"
        self.requests = True
        self.allow = allow
        self.deny = deny
        self.refused = json_answer(403, "client address not allowed", "ip_filter")

    cdef object request(self, object req):
        cdef bytes address = (<ProxyRequest>req).client_address()
        if self.deny is not None and self.deny.has_bytes(address):
            return self.refused
        if self.allow is not None and not self.allow.has_bytes(address):
            return self.refused
        return None

    def allows(self, address):
        """Whether a client at textual `address` passes (tests, tools)."""
        if isinstance(address, str):
            address = address.encode("ascii", "replace")
        if self.deny is not None and self.deny.has_bytes(address):
            return False
        return self.allow is None or self.allow.has_bytes(address)
