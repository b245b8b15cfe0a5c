# cython: language_level=3, boundscheck=False, wraparound=False
"""The ``rate_limit`` policy on the request path (DESIGN.md §6, §7).

Strategy. Everything the config decides is decided when the instance is built: each limit (the
policy's `rate`, then one per tier) is a C `Limit`; the key parts are (kind, name) pairs with
header names lower-cased; the 429 body is serialised once. Per request the policy picks the
limit (the consumer's tier, from `req.ctx`, when the policy has tiers), builds the key bytes
and takes `cost` from the shared table (`isekai._core.ratelimit.LimitTable`, one table in
shared memory for every worker of the host): one SipHash, one bucket lock, a few float
operations. Nothing per key lives in Python.

The key is the policy's namespace (its name, so every worker counts into the same bucket), the
tier, then each part after its length (so no two different part lists make the same bytes),
built with one allocation from prefixes made once. A
part the request lacks (no such header, no consumer resolved yet) makes the request count under
its client address instead: leaving a header out never escapes the limit. `param:NAME` reads
the query, percent-decoded, so `?k=%61` and `?k=a` share a bucket.

With `backend: redis` the decision is Redis's: the request phase returns the awaitable the
builder's `remote` callable makes (the slow path awaits it, for this request only), and that
awaitable comes back through `decided` / `backend_failed` so answers, headers and counts are
made here either way.

Headers (draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "name";q=Q;w=W` and
`RateLimit: "name";r=R;t=T` on 429s always and on allowed responses with `headers: true`;
`X-RateLimit-Limit/-Remaining/-Reset` too with `legacy_headers: true`. When several rate limits
pass one request, the one with the least remaining writes the allowed response's headers.

Decisions are counted in a C array per (limit, key class, outcome): key class 0 is the key as
configured, 1 the client-address fallback; outcomes are allowed, limited, and the two ways a
backend failure is settled (allowed, denied). `isekai.policies.rate_limit` reads them.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport ceil, floor
from libc.stdlib cimport free, malloc
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from isekai._core.policy cimport Answer, CorePolicy, ResponseHead
from isekai._core.protocol cimport ProxyRequest
from isekai._core.ratelimit cimport Decision, Limit, LimitTable, monotonic_now

import json

# key parts (`isekai.config.rate_limit_policy.key_part` kinds)
cdef enum:
    PART_CLIENT_IP = 0
    PART_CONSUMER = 1
    PART_ROUTE = 2
    PART_API_KEY = 3
    PART_HEADER = 4
    PART_PARAM = 5
    PART_JWT_CLAIM = 6

PART_KINDS = {
    "client_ip": PART_CLIENT_IP, "consumer": PART_CONSUMER, "route": PART_ROUTE,
    "api_key": PART_API_KEY, "header": PART_HEADER, "param": PART_PARAM,
    "jwt_claim": PART_JWT_CLAIM,
}
# the outcomes counted (`counts()` names them in this order)
OUTCOMES = ("allowed", "limited", "error_allowed", "error_denied")
DEF N_OUTCOMES = 4
DEF MAX_SF_INTEGER = 999999999999999.0  # the largest structured-field integer
DEF MAX_KEY = 4096   # bytes of a key part; longer values are cut (two that share their first
                     # MAX_KEY bytes share a bucket: merged, never escaped)

cdef bytes HEX = b"0123456789ABCDEF"


cdef inline int _unhex(unsigned char c) noexcept:
    if b'0' <= c <= b'9':
        return c - 48
    if b'a' <= c <= b'f':
        return c - 87
    if b'A' <= c <= b'F':
        return c - 55
    return -1


cdef bytes query_value(bytes query, bytes name):
    """The first value of parameter `name` in `query` (after its '?'), percent-decoded with
    '+' as a space; b"" for `name` alone or `name=`; None when absent. Names are compared as
    decoded too."""
    cdef const unsigned char* p
    cdef Py_ssize_t n, i, start, eq, end
    if query is None:
        return None
    p = <const unsigned char*>PyBytes_AS_STRING(query)
    n = PyBytes_GET_SIZE(query)
    start = 1 if n > 0 and p[0] == b'?' else 0
    while start <= n:
        end = start
        while end < n and p[end] != b'&':
            end += 1
        eq = start
        while eq < end and p[eq] != b'=':
            eq += 1
        if end > start and _decode(query, start, eq) == name:
            return _decode(query, eq + 1, end) if eq < end else b""
        start = end + 1
    return None


cdef bytes _decode(bytes raw, Py_ssize_t start, Py_ssize_t end):
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef bytes out
    cdef char* q
    cdef Py_ssize_t i = start, j = 0
    cdef int hi, lo
    if end <= start:
        return b""
    out = PyBytes_FromStringAndSize(NULL, end - start)
    q = PyBytes_AS_STRING(out)
    while i < end:
        if p[i] == b'%' and i + 2 < end:
            hi = _unhex(p[i + 1])
            lo = _unhex(p[i + 2])
            if hi >= 0 and lo >= 0:
                q[j] = <char>(hi * 16 + lo)
                j += 1
                i += 3
                continue
        q[j] = <char>(b' ' if p[i] == b'+' else p[i])
        j += 1
        i += 1
    return out[:j]


cdef inline bytes _utf8(object value):
    if value is None:
        return None
    if isinstance(value, bytes):
        return <bytes>value
    if isinstance(value, str):
        return (<str>value).encode("utf-8", "surrogatepass")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return json.dumps(value).encode()
    return None  # objects and lists do not name a bucket


cdef bytes _compose(bytes prefix, list values):
    """`prefix`, then each value after its length (2 bytes, big-endian; values are cut at
    MAX_KEY bytes): one allocation, and no two value lists give the same bytes."""
    cdef Py_ssize_t total = PyBytes_GET_SIZE(prefix), n, at
    cdef bytes value, out
    cdef char* q
    for value in values:
        total += 2 + min(PyBytes_GET_SIZE(value), MAX_KEY)
    out = PyBytes_FromStringAndSize(NULL, total)
    q = PyBytes_AS_STRING(out)
    at = PyBytes_GET_SIZE(prefix)
    memcpy(q, PyBytes_AS_STRING(prefix), at)
    for value in values:
        n = min(PyBytes_GET_SIZE(value), MAX_KEY)
        q[at] = <char>(n >> 8)
        q[at + 1] = <char>(n & 0xFF)
        memcpy(q + at + 2, PyBytes_AS_STRING(value), n)
        at += 2 + n
    return out


cdef inline double _sf_integer(double value) noexcept:
    """`value` within the sf-integers (RFC 8941 §3.3.1: 0 to 15 digits here): a huge rate or
    period in the config must not overflow the `long long` cast into a negative number."""
    if not value > 0:  # negative, or NaN
        return 0
    return value if value < MAX_SF_INTEGER else MAX_SF_INTEGER


cdef bytes _whole(double value):
    """A non-negative whole number as decimal digits (what the header fields carry)."""
    cdef char buffer[32]
    cdef int n = snprintf(buffer, sizeof(buffer), "%lld", <long long>_sf_integer(value))
    return PyBytes_FromStringAndSize(buffer, n)


cdef inline double _floored(double value) noexcept:
    return _sf_integer(floor(value + 1e-6)) if value > 0 else 0


cdef inline double _ceiled(double value) noexcept:
    return _sf_integer(ceil(value)) if value > 0 else 0


cdef bytes _sf_string(str text):
    """`text` as a structured-field String (RFC 8941 §3.3.3): printable ASCII, quoted."""
    cdef list out = ['"']
    for ch in text:
        if ch == '"' or ch == '\\':
            out.append('\\')
            out.append(ch)
        elif ' ' <= ch <= '~':
            out.append(ch)
        else:
            out.append('_')
    out.append('"')
    return "".join(out).encode("ascii")


@cython.final
cdef class RateLimitPolicy(CorePolicy):
    """``RateLimitPolicy(table, limits, tiers, parts, cost, headers, legacy, deny_on_error,
    remote=None)``: see the module's text. Its buckets are named after its `name` (set by
    the policy set once built), so every worker's instance counts into the same ones.

    `limits` is ((algorithm, count, period, burst), ...): the policy's `rate` first (None when
    it has none), then one per tier; `tiers` maps a tier name to its index in `limits`;
    `parts` is ((kind, name), ...) as `isekai.config.rate_limit_policy.key_part` gives them.
    """

    cdef LimitTable table
    cdef readonly object remote
    cdef Limit* limits
    cdef Py_ssize_t n_limits
    cdef bint has_base
    cdef dict tiers
    cdef tuple tier_names          # index -> name ("" for the base rate)
    cdef tuple prefixes            # index -> namespace + tier + b"\x00" (made on first use)
    cdef tuple fallbacks           # index -> namespace + tier + b"\x01": + a client address
    cdef tuple parts               # ((kind int, name bytes or str), ...)
    cdef readonly double cost
    cdef bint send_headers
    cdef bint legacy
    cdef readonly bint deny_on_error
    cdef bytes policy_label        # the name as an sf-string, for the headers
    cdef list policy_values        # index -> its RateLimit-Policy value (made on first use)
    cdef bytes body
    cdef Py_ssize_t body_rid
    cdef long long* decisions         # [limit][key class][outcome]
    cdef readonly tuple key_classes
    cdef public object on_close    # called with the instance when it is dropped
    cdef object __weakref__

    def __cinit__(self):
        self.limits = NULL
        self.decisions = NULL

    def __dealloc__(self):
        if self.limits != NULL:
            free(self.limits)
        if self.decisions != NULL:
            free(self.decisions)

    def __init__(self, LimitTable table, tuple limits, dict tiers, tuple parts,
                 double cost, bint headers, bint legacy, bint deny_on_error, remote=None):
        CorePolicy.__init__(self)
        cdef Py_ssize_t i, n = len(limits)
        self.type_name = "rate_limit"
        self.requests = True
        self.responses = headers
        if table is None and remote is None:
            raise ValueError("a rate_limit needs a table or a remote backend")
        self.table = table
        self.remote = remote
        self.n_limits = n
        self.limits = <Limit*>malloc(max(n, 1) * sizeof(Limit))
        self.decisions = <long long*>malloc(max(n, 1) * 2 * N_OUTCOMES * sizeof(long long))
        if self.limits == NULL or self.decisions == NULL:
            raise MemoryError()
        for i in range(n * 2 * N_OUTCOMES):
            self.decisions[i] = 0
        self.has_base = limits[0] is not None
        names = [""] * n
        for name, index in tiers.items():
            names[index] = name
        self.tier_names = tuple(names)
        for i in range(n):
            spec = limits[i]
            if spec is None:
                self.limits[i].algorithm = 0
                self.limits[i].count = self.limits[i].period = self.limits[i].burst = 1
                continue
            self.limits[i].algorithm = spec[0]
            self.limits[i].count = spec[1]
            self.limits[i].period = spec[2]
            self.limits[i].burst = spec[3]
        self.tiers = dict(tiers)
        self.parts = tuple(
            (PART_KINDS[kind], name.encode("latin-1") if kind in ("header", "param") else name)
            for kind, name in parts
        )
        classes = "+".join(kind if not name else f"{kind}:{name}" for kind, name in parts)
        self.key_classes = (classes, "client_ip")
        self.cost = cost
        self.send_headers = headers
        self.legacy = legacy
        self.deny_on_error = deny_on_error
        self.policy_label = b""
        self.body = json.dumps(
            {"success": False, "error": "rate limit exceeded", "policy": "rate_limit",
             "request_id": ""},
            separators=(",", ":"),
        ).encode()
        self.body_rid = len(self.body) - 2

    def close(self):
        if self.on_close is not None:
            self.on_close(self)

    cdef int _name_keys(self) except -1:
        """The key prefixes, from the name (set by the policy set once built)."""
        cdef bytes namespace = (self.name or "rate_limit").encode("utf-8") + b"\x00"
        tiers = [(<str>name).encode("utf-8") for name in self.tier_names]
        self.prefixes = tuple([namespace + tier + b"\x00" for tier in tiers])
        self.fallbacks = tuple([namespace + tier + b"\x01" for tier in tiers])
        return 0

    cdef bytes _label(self):
        if not self.policy_label:
            self.policy_label = _sf_string(self.name or "rate_limit")
        return self.policy_label

    # -- the request phase --------------------------------------------------------------------

    cdef Py_ssize_t _limit_index(self, ProxyRequest req):
        """Which limit applies: the consumer's tier when listed, else the base rate; -1: none."""
        cdef object ctx = req._ctx
        cdef object tier, index
        if self.tiers and ctx is not None:
            tier = (<dict>ctx).get("consumer_tier")
            if type(tier) is str:
                index = self.tiers.get(tier)
                if index is not None:
                    return <Py_ssize_t>index
        return 0 if self.has_base else -1

    cdef bytes _part(self, ProxyRequest req, int kind, object name):
        cdef object ctx = req._ctx
        cdef object value
        if kind == PART_CLIENT_IP:
            return req.client_address()
        if kind == PART_ROUTE:
            return req.route.name.encode("utf-8") if req.route is not None else b""
        if kind == PART_HEADER:
            return req.get_header(<bytes>name)
        if kind == PART_PARAM:
            return query_value(req.query, <bytes>name)
        if ctx is None:
            return None
        if kind == PART_CONSUMER:
            return _utf8((<dict>ctx).get("consumer"))
        if kind == PART_API_KEY:
            if (<dict>ctx).get("credential") != "api_key":
                return None
            return _utf8((<dict>ctx).get("credential_id"))
        if kind == PART_JWT_CLAIM:
            value = (<dict>ctx).get("claims")
            if not isinstance(value, dict):
                return None
            return _utf8((<dict>value).get(name))
        return None

    cdef bytes _key(self, ProxyRequest req, Py_ssize_t index, bint* fallback):
        """The bucket's key bytes; `fallback` set when a part was missing."""
        cdef tuple part
        cdef bytes value
        cdef list values = []
        if self.prefixes is None:
            self._name_keys()
        for part in self.parts:
            value = self._part(req, <int>part[0], part[1])
            if value is None:
                fallback[0] = True
                return <bytes>self.fallbacks[index] + req.client_address()
            values.append(value)
        fallback[0] = False
        return _compose(<bytes>self.prefixes[index], values)

    cdef object request(self, object req):
        cdef ProxyRequest r = <ProxyRequest>req
        cdef Py_ssize_t index = self._limit_index(r)
        cdef bint fallback = False
        cdef bytes key
        cdef Decision d
        cdef Py_ssize_t i
        if index < 0:
            return None
        for i in range(r.ran):
            # a named policy on the listener and on the route: one instance twice in the
            # chain, which takes once per request
            if r.chain[i] is self:
                return None
        key = self._key(r, index, &fallback)
        if self.remote is not None:
            return self.remote(self, req, key, index, fallback)
        self.table.take(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &self.limits[index],
                        self.cost, monotonic_now(), &d)
        return self._settle(r, index, fallback, &d)

    cdef object _settle(self, ProxyRequest req, Py_ssize_t index, bint fallback, Decision* d):
        self.decisions[(index * 2 + fallback) * N_OUTCOMES + (0 if d.allowed else 1)] += 1
        if d.allowed:
            if self.send_headers:
                self._note(req, index, d)
            return None
        if req._ctx is not None:
            # the response phase runs on this 429 too: an earlier rate_limit's note of a
            # roomier limit must not overwrite the refusal's own numbers
            (<dict>req._ctx).pop("rate_limit", None)
        return self._refusal(index, d)

    cdef Answer _refusal(self, Py_ssize_t index, Decision* d):
        cdef double wait = ceil(d.retry_after) if d.retry_after > 0 else 1
        cdef Answer answer
        cdef list fields = [(b"retry-after", _whole(wait if wait >= 1 else 1))]
        self._fields(fields, index, _floored(d.remaining), _ceiled(d.reset))
        answer = Answer(429, (((b"content-type", b"application/json"),) + tuple(fields)),
                        self.body)
        answer.request_id_at = self.body_rid
        return answer

    cdef bytes _policy_value(self, Py_ssize_t index):
        """`RateLimit-Policy` of limit `index` (the same for every request: made once)."""
        cdef Limit* limit = &self.limits[index]
        cdef double window, quota
        if self.policy_values is None:
            self.policy_values = [None] * self.n_limits
        value = self.policy_values[index]
        if value is None:
            if limit.algorithm == 0 or limit.algorithm == 1:  # buckets: the time to fill one
                window = ceil(limit.burst * limit.period / limit.count)
                quota = limit.burst
            else:
                window = ceil(limit.period)
                quota = limit.count
            value = self._label() + b";q=" + _whole(quota) + b";w=" + _whole(window)
            self.policy_values[index] = value
        return <bytes>value

    cdef int _fields(self, list fields, Py_ssize_t index, double remaining,
                     double reset) except -1:
        cdef char buffer[64]
        cdef int n
        cdef bytes label = self._label()
        n = snprintf(buffer, sizeof(buffer), ";r=%lld;t=%lld", <long long>remaining,
                     <long long>reset)
        fields.append((b"ratelimit-policy", self._policy_value(index)))
        fields.append((b"ratelimit", label + PyBytes_FromStringAndSize(buffer, n)))
        if self.legacy:
            limit = &self.limits[index]
            fields.append((b"x-ratelimit-limit", _whole(
                limit.burst if limit.algorithm == 0 or limit.algorithm == 1 else limit.count)))
            fields.append((b"x-ratelimit-remaining", _whole(remaining)))
            fields.append((b"x-ratelimit-reset", _whole(reset)))
        return 0

    cdef int _note(self, ProxyRequest req, Py_ssize_t index, Decision* d) except -1:
        """Remember this decision for the response phase, unless another rate limit of the
        chain left the request less room."""
        cdef dict ctx
        if req._ctx is None:
            req._ctx = {}
        ctx = <dict>req._ctx
        note = ctx.get("rate_limit")
        if note is not None and <double>(<tuple>note)[1] <= d.remaining:
            return 0
        ctx["rate_limit"] = (self, d.remaining, index, _ceiled(d.reset))
        return 0

    cdef int response(self, object req, ResponseHead head) except -1:
        cdef ProxyRequest r = <ProxyRequest>req
        cdef object note
        cdef list fields
        if r._ctx is None:
            return 0
        note = (<dict>r._ctx).get("rate_limit")
        if note is None or (<tuple>note)[0] is not self:
            return 0
        fields = []
        self._fields(fields, <Py_ssize_t>(<tuple>note)[2], _floored((<tuple>note)[1]),
                     <double>(<tuple>note)[3])
        for name, value in fields:
            head.put_valid(name, value)
        return 0

    # -- the remote backend's way back --------------------------------------------------------

    def decided(self, req, Py_ssize_t index, bint fallback, bint allowed, double limit,
                double remaining, double reset, double retry_after):
        """What a remote decision means for `req`: None (continue) or the 429 `Answer`."""
        cdef Decision d
        d.allowed = allowed
        d.limit = limit
        d.remaining = remaining
        d.reset = reset
        d.retry_after = retry_after
        return self._settle(<ProxyRequest?>req, index, fallback, &d)

    def backend_failed(self, req, Py_ssize_t index, bint fallback):
        """The backend could not decide: count it; None (allow) or a 503 `Answer` (deny)."""
        cdef Py_ssize_t at = (index * 2 + fallback) * N_OUTCOMES
        if self.deny_on_error:
            self.decisions[at + 3] += 1
            return Answer.error(503, "rate limit backend unavailable", "rate_limit",
                                ((b"retry-after", b"1"),))
        self.decisions[at + 2] += 1
        return None

    def limit_of(self, Py_ssize_t index):
        """(algorithm, count, period, burst) of limit `index`."""
        if not 0 <= index < self.n_limits:
            raise IndexError(index)
        return (self.limits[index].algorithm, self.limits[index].count,
                self.limits[index].period, self.limits[index].burst)

    def key_for(self, str tier, tuple values):
        """The key bytes of a request whose parts are `values` (str/bytes each, in the order
        of the key), for `tier` ("" for the base rate), and the limit's index: what the admin
        API peeks at. A single value with a key of several parts is taken as a client
        address (the fallback key)."""
        cdef Py_ssize_t index
        if tier and tier not in self.tiers:
            raise KeyError(tier)
        if not tier and not self.has_base:
            raise KeyError("")
        index = self.tiers[tier] if tier else 0
        if self.prefixes is None:
            self._name_keys()
        encoded = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        if len(encoded) != len(self.parts):
            if len(encoded) == 1:
                return index, <bytes>self.fallbacks[index] + encoded[0]
            raise ValueError(f"the key has {len(self.parts)} parts, got {len(encoded)}")
        return index, _compose(<bytes>self.prefixes[index], encoded)

    def peek(self, str tier, tuple values, now=None):
        """(allowed, limit, remaining, reset, retry_after) for the key of `values` (local
        table only): the state a request of cost `cost` would meet, taking nothing."""
        cdef Decision d
        cdef Py_ssize_t index
        cdef bytes key
        if self.table is None:
            raise RuntimeError("peek reads the local table; this policy counts in Redis")
        index, key = self.key_for(tier, values)
        self.table.peek(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &self.limits[index],
                        monotonic_now() if now is None else now, &d)
        return (d.allowed, d.limit, d.remaining, d.reset, d.retry_after)

    def counts(self):
        """[(tier, key class, outcome, count), ...] for every nonzero count."""
        cdef Py_ssize_t i, k, o
        rows = []
        for i in range(self.n_limits):
            if i == 0 and not self.has_base:
                continue
            for k in range(2):
                for o in range(N_OUTCOMES):
                    c = self.decisions[(i * 2 + k) * N_OUTCOMES + o]
                    if c:
                        rows.append((self.tier_names[i], self.key_classes[k], OUTCOMES[o], c))
        return rows
