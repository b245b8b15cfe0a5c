# cython: language_level=3, boundscheck=False, wraparound=False
"""Per-target state of the upstream side: what balancers read and the cluster maintains.

Strategy. A `Target` is plain C fields: the balancers (`balancer.pyx`) read `selectable`,
`weight`, `in_flight` and `ewma` on every pick, and the cluster (`cluster.pyx`) keeps them —
`selectable` only changes when health, ejection or the breaker change, so a pick never
re-derives it. The breaker's rolling window is a ring of WINDOW_BUCKETS counters indexed by
absolute bucket number (time / bucket width): adding advances the ring, clearing the buckets it
skipped; summing ignores buckets older than the window. No allocation after construction.
"""

from libc.math cimport floor


cdef inline int _slot(long long bucket) noexcept:
    cdef long long r = bucket % WINDOW_BUCKETS
    return <int>(r + WINDOW_BUCKETS if r < 0 else r)


cdef class Target:

    def __init__(self, str upstream, str address, Pool pool=None, int weight=1):
        if weight < 1:
            raise ValueError("a target's weight is at least 1")
        self.upstream = upstream
        self.address = address
        self.pool = pool
        self.weight = weight
        self.selectable = True
        self.healthy = True
        self.breaker = BREAKER_CLOSED

    def __repr__(self):
        return f"<Target {self.upstream} {self.address} weight={self.weight}>"

    cdef int window_add(self, double now, double bucket_width, bint failed) except -1:
        cdef long long bucket = <long long>floor(now / bucket_width)
        cdef long long i
        if bucket != self.win_bucket:
            if bucket - self.win_bucket >= WINDOW_BUCKETS or bucket < self.win_bucket:
                self.window_clear()
            else:
                i = self.win_bucket + 1
                while i <= bucket:
                    self.win_requests[_slot(i)] = 0
                    self.win_failures[_slot(i)] = 0
                    i += 1
            self.win_bucket = bucket
        self.win_requests[_slot(bucket)] += 1
        if failed:
            self.win_failures[_slot(bucket)] += 1
        return 0

    cdef int window_sums(self, double now, double bucket_width, long long* requests,
                         long long* failures) except -1:
        cdef long long bucket = <long long>floor(now / bucket_width)
        cdef long long age = bucket - self.win_bucket
        cdef long long i
        requests[0] = 0
        failures[0] = 0
        if age < 0 or age >= WINDOW_BUCKETS:
            return 0
        # buckets win_bucket - (WINDOW_BUCKETS - 1 - age) .. win_bucket are inside the window
        i = 0
        while i < WINDOW_BUCKETS - age:
            requests[0] += self.win_requests[_slot(self.win_bucket - i)]
            failures[0] += self.win_failures[_slot(self.win_bucket - i)]
            i += 1
        return 0

    cdef int window_clear(self) except -1:
        cdef int i
        for i in range(WINDOW_BUCKETS):
            self.win_requests[i] = 0
            self.win_failures[i] = 0
        return 0

    def window(self, double now, double width):
        """(requests, failures) in the rolling window ending at ``now`` (``width`` seconds)."""
        cdef long long requests, failures
        self.window_sums(now, width / WINDOW_BUCKETS, &requests, &failures)
        return requests, failures
