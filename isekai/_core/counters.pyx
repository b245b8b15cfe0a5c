# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Per-worker request counters and latency histograms, in plain C memory.

Strategy
--------
Every label that metrics break down by (a route name, "" for unrouted requests) gets a *slot*: an
index into one contiguous, growable array of ``SlotStats`` structs (request count, status classes,
bytes in/out, upstream errors, internal errors, a fixed-bucket latency histogram and its sum). The label -> slot
mapping is made once, when a snapshot is built (``slot()``, Python), and the hot path carries only
the integer, so recording a finished request is a handful of C additions: no dict lookup, no Python
object, no lock (a worker is one thread). Slots are never freed or renumbered, so a slot stays valid
across config reloads; a route that disappears just stops counting.

The histogram keeps per-bucket (non-cumulative) counts and picks the bucket with a short linear scan
over a C array of upper bounds (14 of them: a scan beats a binary search at this size). The
Prometheus shape (cumulative counts, +Inf, sum, count) is produced only by ``snapshot()``, at scrape
time, which is also the only place that builds Python objects.

The ``cdef`` recorders are ``noexcept`` and never fail: an out-of-range slot is counted in slot 0
(unrouted) rather than dropped, negative byte counts and negative or NaN latencies count as zero,
an unknown status counts as "other" and an unknown upstream error kind as "protocol". The active
connection gauge never goes below zero. The recorders are called by `protocol` only; tests reach
them through requests, not through Python entry points of their own.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcmp, memset

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0)

cdef double _BOUNDS[N_BUCKETS]
for _i, _b in enumerate(LATENCY_BUCKETS):
    _BOUNDS[_i] = _b

cdef Py_ssize_t _INITIAL_CAPACITY = 16

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER")
STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")
# one exported route row: (field, how many uint64) in order
ROUTE_LAYOUT = (
    ("requests", N_METHODS * N_STATUS),   # method-major: METHODS[i // 6], STATUS_CLASSES[i % 6]
    ("bytes_in", 1),
    ("bytes_out", 1),
    ("upstream_errors", N_UPSTREAM_ERRORS),  # connect, timeout, protocol, unavailable
    ("internal_errors", 1),
    ("latency", N_BUCKETS + 1),            # per bucket, +Inf last
)
cdef Py_ssize_t _ROUTE_WIDTH = N_METHODS * N_STATUS + 2 + N_UPSTREAM_ERRORS + 1 + N_BUCKETS + 1
ROUTE_WIDTH = _ROUTE_WIDTH


cdef int method_index(bytes method) noexcept:
    """The index of ``method`` in METHODS (7 for any other); a few byte compares."""
    cdef const char* m
    cdef Py_ssize_t n
    if method is None:
        return 7
    m = PyBytes_AS_STRING(method)
    n = PyBytes_GET_SIZE(method)
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return 0
        if memcmp(m, b"PUT", 3) == 0:
            return 3
    elif n == 4:
        if memcmp(m, b"POST", 4) == 0:
            return 2
        if memcmp(m, b"HEAD", 4) == 0:
            return 1
    elif n == 6:
        if memcmp(m, b"DELETE", 6) == 0:
            return 4
    elif n == 5:
        if memcmp(m, b"PATCH", 5) == 0:
            return 5
    elif n == 7:
        if memcmp(m, b"OPTIONS", 7) == 0:
            return 6
    return 7


cdef inline void _observe(uint64_t* buckets, double* total, double latency_s) noexcept:
    cdef int i = 0
    if not latency_s >= 0.0:          # negative or NaN
        latency_s = 0.0
    while i < N_BUCKETS and latency_s > _BOUNDS[i]:
        i += 1
    buckets[i] += 1
    total[0] += latency_s


cdef list _nonzero(uint64_t* values, Py_ssize_t n):
    """``values`` as a list, or None when all are zero (exports leave zeros out)."""
    cdef Py_ssize_t i
    for i in range(n):
        if values[i]:
            return [values[i] for i in range(n)]
    return None


cdef class Counters:
    """Counters of one worker; ``snapshot()`` turns them into plain Python data."""

    def __cinit__(self):
        self._stats = <SlotStats*>PyMem_Malloc(_INITIAL_CAPACITY * sizeof(SlotStats))
        if self._stats == NULL:
            raise MemoryError()
        memset(self._stats, 0, _INITIAL_CAPACITY * sizeof(SlotStats))
        self._capacity = _INITIAL_CAPACITY
        self._size = 0
        self._slots = {}
        self._names = []
        self._active = 0
        self._total = 0
        self._policies = <PolicyStats*>PyMem_Malloc(_INITIAL_CAPACITY * sizeof(PolicyStats))
        if self._policies == NULL:
            raise MemoryError()
        memset(self._policies, 0, _INITIAL_CAPACITY * sizeof(PolicyStats))
        self._policy_capacity = _INITIAL_CAPACITY
        self._policy_size = 0
        self._policy_slots = {}
        self._policy_names = []
        self._upstreams = <UpstreamStats*>PyMem_Malloc(_INITIAL_CAPACITY * sizeof(UpstreamStats))
        if self._upstreams == NULL:
            raise MemoryError()
        memset(self._upstreams, 0, _INITIAL_CAPACITY * sizeof(UpstreamStats))
        self._upstream_capacity = _INITIAL_CAPACITY
        self._upstream_size = 0
        self._upstream_slots = {}
        self._upstream_names = []
        self.enabled = True

    def __init__(self):
        if self._size == 0:
            self.slot("")
        if self._policy_size == 0:
            self.policy_slot("")

    def __dealloc__(self):
        PyMem_Free(self._stats)
        self._stats = NULL
        PyMem_Free(self._policies)
        self._policies = NULL
        PyMem_Free(self._upstreams)
        self._upstreams = NULL

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._capacity * 2
        cdef SlotStats* stats = <SlotStats*>PyMem_Realloc(self._stats, cap * sizeof(SlotStats))
        if stats == NULL:
            raise MemoryError()
        memset(stats + self._capacity, 0, (cap - self._capacity) * sizeof(SlotStats))
        self._stats = stats
        self._capacity = cap
        return 0

    cpdef int slot(self, str name) except -1:
        """The slot index of ``name``, allocating one on first use; "" is slot 0."""
        cdef object found
        cdef int index
        if name is None:
            raise TypeError("slot name must be a str")
        found = self._slots.get(name)
        if found is not None:
            return <int>found
        if self._size >= 0x7FFFFFFF:
            raise OverflowError("too many counter slots")
        if self._size == self._capacity:
            self._grow()
        index = <int>self._size
        self._slots[name] = index
        self._names.append(name)
        self._size += 1
        return index

    cpdef int policy_slot(self, str name) except -1:
        """The counter slot of policy ``name``, allocated on first use; "" is slot 0."""
        cdef object found = self._policy_slots.get(name)
        cdef PolicyStats* grown
        cdef Py_ssize_t cap
        if found is not None:
            return <int>found
        if self._policy_size >= 0x7FFFFFFF:
            raise OverflowError("too many policy counter slots")
        if self._policy_size == self._policy_capacity:
            cap = self._policy_capacity * 2
            grown = <PolicyStats*>PyMem_Realloc(self._policies, cap * sizeof(PolicyStats))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self._policy_capacity, 0,
                   (cap - self._policy_capacity) * sizeof(PolicyStats))
            self._policies = grown
            self._policy_capacity = cap
        self._policy_slots[name] = self._policy_size
        self._policy_names.append(name)
        self._policy_size += 1
        return <int>(self._policy_size - 1)

    cpdef int upstream_slot(self, str name) except -1:
        """The latency slot of upstream ``name``, allocated on first use."""
        cdef object found = self._upstream_slots.get(name)
        cdef UpstreamStats* grown
        cdef Py_ssize_t cap
        if name is None:
            raise TypeError("slot name must be a str")
        if found is not None:
            return <int>found
        if self._upstream_size >= 0x7FFFFFFF:
            raise OverflowError("too many upstream counter slots")
        if self._upstream_size == self._upstream_capacity:
            cap = self._upstream_capacity * 2
            grown = <UpstreamStats*>PyMem_Realloc(self._upstreams, cap * sizeof(UpstreamStats))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self._upstream_capacity, 0,
                   (cap - self._upstream_capacity) * sizeof(UpstreamStats))
            self._upstreams = grown
            self._upstream_capacity = cap
        self._upstream_slots[name] = self._upstream_size
        self._upstream_names.append(name)
        self._upstream_size += 1
        return <int>(self._upstream_size - 1)

    cdef void record_upstream(self, int slot, double latency_s) noexcept:
        cdef UpstreamStats* u
        if not self.enabled or slot < 0 or slot >= self._upstream_size:
            return
        u = &self._upstreams[slot]
        _observe(u.latency, &u.latency_sum, latency_s)

    cdef void policy_answer(self, int slot) noexcept:
        if 0 <= slot < self._policy_size:
            self._policies[slot].answers += 1

    cdef void policy_error(self, int slot) noexcept:
        if 0 <= slot < self._policy_size:
            self._policies[slot].errors += 1

    cdef void policy_timeout(self, int slot) noexcept:
        if 0 <= slot < self._policy_size:
            self._policies[slot].timeouts += 1

    cdef void record(self, int slot, int method, int status, int64_t bytes_in,
                     int64_t bytes_out, double latency_s) noexcept:
        cdef SlotStats* s
        cdef int cls = status // 100
        if not self.enabled:
            return
        if slot < 0 or slot >= self._size:
            slot = 0
        if method < 0 or method >= N_METHODS:
            method = N_METHODS - 1
        s = &self._stats[slot]
        s.requests += 1
        if status < 100 or cls > 5:
            cls = 0
        s.status[cls] += 1
        s.by_method[method][cls] += 1
        if bytes_in > 0:
            s.bytes_in += <uint64_t>bytes_in
        if bytes_out > 0:
            s.bytes_out += <uint64_t>bytes_out
        _observe(s.latency, &s.latency_sum, latency_s)

    cdef void connection_opened(self) noexcept:
        self._active += 1
        self._total += 1

    cdef void connection_closed(self) noexcept:
        if self._active > 0:
            self._active -= 1

    cdef void upstream_error(self, int slot, int kind) noexcept:
        if slot < 0 or slot >= self._size:
            slot = 0
        if kind < 0 or kind >= N_UPSTREAM_ERRORS:
            kind = 2
        self._stats[slot].upstream[kind] += 1

    cdef void internal_error(self, int slot) noexcept:
        if slot < 0 or slot >= self._size:
            slot = 0
        self._stats[slot].internal_errors += 1

    def snapshot(self):
        """All counters as plain data, histograms cumulative (Prometheus shape)."""
        cdef SlotStats* s
        cdef Py_ssize_t k
        cdef int i
        cdef uint64_t cum
        slots = {}
        for k in range(self._size):
            s = &self._stats[k]
            buckets = []
            cum = 0
            for i in range(N_BUCKETS):
                cum += s.latency[i]
                buckets.append((_BOUNDS[i], cum))
            cum += s.latency[N_BUCKETS]
            buckets.append((float("inf"), cum))
            slots[self._names[k]] = {
                "requests": s.requests,
                "status": {
                    "1xx": s.status[1], "2xx": s.status[2], "3xx": s.status[3],
                    "4xx": s.status[4], "5xx": s.status[5], "other": s.status[0],
                },
                "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out,
                "upstream_errors": {
                    "connect": s.upstream[0], "timeout": s.upstream[1],
                    "protocol": s.upstream[2], "unavailable": s.upstream[3],
                },
                "internal_errors": s.internal_errors,
                "latency": {"buckets": buckets, "sum": s.latency_sum, "count": cum},
            }
        policies = {}
        for k in range(1, self._policy_size):
            policies[self._policy_names[k]] = {
                "answers": self._policies[k].answers,
                "errors": self._policies[k].errors,
                "timeouts": self._policies[k].timeouts,
            }
        return {"connections": {"active": self._active, "total": self._total}, "slots": slots,
                "policies": policies}

    def export(self):
        """This worker's numbers as compact data (marshal-friendly: dicts, lists, str, bytes),
        zeros left out: what a worker ships to the process that sums the workers
        (isekai.observability.metrics). Rows are packed C arrays, so a worker with 10,000 busy
        routes exports in a few milliseconds and the aggregator reads them with one
        ``memoryview.cast``.

        ``{"buckets": bounds, "methods", "status_classes", "route_layout",
        "connections": {"active", "total"},
        "routes": {"names": [...], "counts": bytes, "sums": bytes},
        "upstreams": {"names": [...], "counts": bytes, "sums": bytes},
        "policies": {name: [answers, errors, timeouts]}}``. Route rows are ``ROUTE_WIDTH``
        native uint64 each (`ROUTE_LAYOUT`: requests by method and status class, bytes in and
        out, upstream errors by kind, internal errors, latency buckets with +Inf last), upstream
        rows ``N_BUCKETS + 1`` latency buckets; ``sums`` holds one double (latency seconds) per
        row. A route with nothing counted, an upstream with no exchange and a policy with
        nothing to count are left out.
        """
        cdef SlotStats* s
        cdef UpstreamStats* u
        cdef PolicyStats* p
        cdef Py_ssize_t k, rows = 0, i
        cdef int m, c
        cdef uint64_t* out
        cdef double* sums
        cdef bytearray counts_buf, sums_buf
        names = []
        counts_buf = bytearray(self._size * _ROUTE_WIDTH * sizeof(uint64_t))
        sums_buf = bytearray(self._size * sizeof(double))
        out = <uint64_t*><char*>counts_buf
        sums = <double*><char*>sums_buf
        for k in range(self._size):
            s = &self._stats[k]
            if s.requests == 0 and s.internal_errors == 0 and _nonzero(s.upstream,
                                                                        N_UPSTREAM_ERRORS) is None:
                continue
            names.append(self._names[k])
            i = 0
            for m in range(N_METHODS):
                for c in range(N_STATUS):
                    out[i] = s.by_method[m][c]
                    i += 1
            out[i] = s.bytes_in
            out[i + 1] = s.bytes_out
            i += 2
            for m in range(N_UPSTREAM_ERRORS):
                out[i] = s.upstream[m]
                i += 1
            out[i] = s.internal_errors
            i += 1
            for m in range(N_BUCKETS + 1):
                out[i] = s.latency[m]
                i += 1
            sums[rows] = s.latency_sum
            rows += 1
            out += _ROUTE_WIDTH
        routes = {
            "names": names,
            "counts": bytes(counts_buf[:rows * _ROUTE_WIDTH * sizeof(uint64_t)]),
            "sums": bytes(sums_buf[:rows * sizeof(double)]),
        }
        names = []
        counts_buf = bytearray(self._upstream_size * (N_BUCKETS + 1) * sizeof(uint64_t))
        sums_buf = bytearray(self._upstream_size * sizeof(double))
        out = <uint64_t*><char*>counts_buf
        sums = <double*><char*>sums_buf
        rows = 0
        for k in range(self._upstream_size):
            u = &self._upstreams[k]
            if _nonzero(u.latency, N_BUCKETS + 1) is None:
                continue
            names.append(self._upstream_names[k])
            for m in range(N_BUCKETS + 1):
                out[m] = u.latency[m]
            sums[rows] = u.latency_sum
            rows += 1
            out += N_BUCKETS + 1
        upstreams = {
            "names": names,
            "counts": bytes(counts_buf[:rows * (N_BUCKETS + 1) * sizeof(uint64_t)]),
            "sums": bytes(sums_buf[:rows * sizeof(double)]),
        }
        policies = {}
        for k in range(1, self._policy_size):
            p = &self._policies[k]
            if p.answers or p.errors or p.timeouts:
                policies[self._policy_names[k]] = [p.answers, p.errors, p.timeouts]
        return {
            "buckets": list(LATENCY_BUCKETS),
            "methods": list(METHODS),
            "status_classes": list(STATUS_CLASSES),
            "route_layout": [list(field) for field in ROUTE_LAYOUT],
            "connections": {"active": self._active, "total": self._total},
            "routes": routes,
            "upstreams": upstreams,
            "policies": policies,
        }

    def __len__(self):
        return self._size
