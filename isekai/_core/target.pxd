from isekai._core.upstream cimport Pool


# Circuit breaker states of a target.
cdef enum BreakerState:
    BREAKER_CLOSED = 0
    BREAKER_OPEN = 1
    BREAKER_HALF_OPEN = 2

# The breaker's rolling window is this many buckets of window/WINDOW_BUCKETS seconds each.
cdef enum:
    WINDOW_BUCKETS = 10


cdef class Target:
    """One target (server) of one upstream in one worker: its pool and everything the balancer,
    the health verdicts, outlier ejection and the circuit breaker know about it. Kept across
    snapshots by the cluster registry (keyed by upstream name and address), so that state
    survives reloads and admin changes."""
    cdef readonly str upstream
    cdef readonly str address            # "host:port", as status and metrics show it
    cdef public Pool pool                # None only in balancer tests and benchmarks
    cdef public int weight               # >= 1
    cdef public int index                # position in its cluster's target list
    cdef public object owner             # the newest Cluster holding it (set by the registry)
    cdef public bint selectable          # the balancer may choose it (kept by the cluster)
    # load, for least_conn / p2c / ewma (in_flight: exchanges picked and not yet over)
    cdef public int in_flight
    cdef public double ewma              # seconds to the response head; 0: no sample yet
    cdef public double ewma_at           # when ewma was last updated (monotonic)
    # active health checks: the verdict (True until a check says otherwise)
    cdef public bint healthy
    # passive health (outlier detection)
    cdef public int consecutive_failures
    cdef public int ejections            # current multiplier of base_ejection
    cdef public double ejected_until     # 0: not ejected
    cdef public double quiet_since       # last ejection end (multiplier decays from here)
    cdef public long long ejections_total
    # circuit breaker
    cdef public int breaker              # BreakerState
    cdef public double opened_at
    cdef public double probe_at          # open: when half-open probes may start
    cdef public long long epoch          # half-open periods so far (tells probes apart)
    cdef public int probes_in_flight
    cdef public int probe_successes
    cdef public long long opened_total
    cdef long long win_requests[WINDOW_BUCKETS]
    cdef long long win_failures[WINDOW_BUCKETS]
    cdef long long win_bucket            # absolute index of the newest bucket
    # totals (since the target was made in this worker)
    cdef public long long requests
    cdef public long long failures

    cdef int window_add(self, double now, double bucket_width, bint failed) except -1
    cdef int window_sums(self, double now, double bucket_width, long long* requests,
                         long long* failures) except -1
    cdef int window_clear(self) except -1
