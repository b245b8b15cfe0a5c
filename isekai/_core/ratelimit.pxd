# Declarations for the shared rate-limit table; definitions and the strategy essay live in
# ratelimit.pyx. The layout structs are the shared-memory format: change them and bump VERSION.

from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint64_t

cdef enum:
    ALG_TOKEN_BUCKET = 0
    ALG_GCRA = 1
    ALG_SLIDING_WINDOW = 2
    ALG_FIXED_WINDOW = 3

cdef enum:
    BUCKET_SLOTS = 8         # slots per bucket (one lock word, then 8 cache lines)


cdef struct Limit:
    int algorithm
    double count      # requests per period (windows: per window)
    double period     # seconds
    double burst      # token_bucket/gcra capacity (>= 1); unused by the windows


cdef struct Decision:
    bint allowed
    double limit
    double remaining
    double reset
    double retry_after


cdef struct TableHeader:     # 128 bytes at offset 0 of the buffer
    uint64_t magic           # 0 (zeroed), MAGIC_INIT while the first table sets up, MAGIC_READY
    uint64_t version
    uint64_t slots
    uint64_t buckets
    uint64_t k0              # the SipHash-2-4 key, random per table
    uint64_t k1
    uint64_t evictions       # live keys pushed out of a full bucket (atomic adds)
    uint64_t lock_steals     # bucket locks taken from a dead owner (atomic adds)
    uint64_t reserved[8]


cdef struct Slot:            # 64 bytes: one cache line
    uint64_t h1              # SipHash-2-4-128 of the key, both halves: a slot is this key's
    uint64_t h2              # iff both match
    uint64_t tag             # 0 = never used, else algorithm + 1
    double a                 # token_bucket: tokens; gcra: TAT; windows: window index k
    double b                 # token_bucket: stamp; windows: used in window k
    double c                 # sliding_window: used in window k - 1
    double idle_at           # from then on the state equals a fresh key's: reusable
    double last_used         # the `now` of the last take (LRU choice)


cdef struct Bucket:          # 576 bytes
    uint64_t lock            # 0 = free, else the owner's pid
    uint64_t reserved[7]
    Slot slots[BUCKET_SLOTS]


cdef double monotonic_now() noexcept nogil   # CLOCK_MONOTONIC seconds: one clock for every process of the host


cdef class LimitTable:
    cdef readonly Py_ssize_t slots
    cdef TableHeader* _header
    cdef Bucket* _buckets
    cdef uint64_t _nbuckets
    cdef uint64_t _k0
    cdef uint64_t _k1
    cdef Py_buffer _view
    cdef bint _has_view
    cdef void* _own          # the private table's memory (buffer=None), else NULL

    cdef int take(self, const char* key, Py_ssize_t n, const Limit* limit, double cost, double now, Decision* out) except -1
    cdef int peek(self, const char* key, Py_ssize_t n, const Limit* limit, double now, Decision* out) except -1
    # peek: the decision state as if a request of cost 0 came now; inserts nothing; an unknown key reads as fresh
    cdef int _attach(self) except -1
    cdef Bucket* _bucket(self, const char* key, Py_ssize_t n, uint64_t* h1, uint64_t* h2) noexcept nogil
