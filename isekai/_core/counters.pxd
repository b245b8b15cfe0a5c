# Declarations for per-worker counters; definitions and the strategy essay live in counters.pyx.

from libc.stdint cimport int64_t, uint64_t

cdef enum:
    N_BUCKETS = 14           # finite latency bounds; one more slot holds +Inf
    N_STATUS = 6             # 0 = other, 1..5 = 1xx..5xx
    N_UPSTREAM_ERRORS = 4    # the UpstreamFailure kinds: connect, timeout, protocol, unavailable
    N_METHODS = 8            # GET HEAD POST PUT DELETE PATCH OPTIONS, 7 = any other


cdef struct SlotStats:
    uint64_t requests
    uint64_t status[N_STATUS]
    uint64_t by_method[N_METHODS][N_STATUS]   # the same requests, by method and status class
    uint64_t bytes_in
    uint64_t bytes_out
    uint64_t upstream[N_UPSTREAM_ERRORS]
    uint64_t internal_errors  # exceptions from our own code or a policy (answered 500 or aborted)
    uint64_t latency[N_BUCKETS + 1]   # per bucket, not cumulative
    double latency_sum


cdef struct PolicyStats:
    uint64_t answers          # requests a policy answered itself (deny, preflight, abort...)
    uint64_t errors           # exceptions from the policy (answered 500, or logged)
    uint64_t timeouts         # async request phases past their deadline (answered 503)


cdef struct UpstreamStats:
    uint64_t latency[N_BUCKETS + 1]   # upstream exchanges: request sent -> response complete
    double latency_sum


cdef int method_index(bytes method) noexcept


cdef class Counters:
    cdef SlotStats* _stats   # _capacity structs, the first _size in use
    cdef Py_ssize_t _size
    cdef Py_ssize_t _capacity
    cdef dict _slots         # label -> slot index
    cdef list _names         # slot index -> label
    cdef int64_t _active
    cdef uint64_t _total
    cdef PolicyStats* _policies
    cdef Py_ssize_t _policy_size
    cdef Py_ssize_t _policy_capacity
    cdef dict _policy_slots
    cdef list _policy_names
    cdef UpstreamStats* _upstreams
    cdef Py_ssize_t _upstream_size
    cdef Py_ssize_t _upstream_capacity
    cdef dict _upstream_slots
    cdef list _upstream_names
    cdef public bint enabled    # False: requests are not recorded (observability.metrics.enabled)

    cpdef int slot(self, str name) except -1
    cdef void record(self, int slot, int method, int status, int64_t bytes_in,
                     int64_t bytes_out, double latency_s) noexcept
    cpdef int upstream_slot(self, str name) except -1
    cdef void record_upstream(self, int slot, double latency_s) noexcept
    cdef void connection_opened(self) noexcept
    cdef void connection_closed(self) noexcept
    cdef void upstream_error(self, int slot, int kind) noexcept
    cdef void internal_error(self, int slot) noexcept
    cdef int _grow(self) except -1
    cpdef int policy_slot(self, str name) except -1
    cdef void policy_answer(self, int slot) noexcept
    cdef void policy_error(self, int slot) noexcept
    cdef void policy_timeout(self, int slot) noexcept
