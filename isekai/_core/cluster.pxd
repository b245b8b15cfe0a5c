from libc.stdint cimport uint64_t

from isekai._core.balancer cimport Balancer
from isekai._core.target cimport Target
from isekai._core.upstream cimport Exchange


# How an attempt on a target went, for outlier detection, the breaker and EWMA (`Cluster.report`).
# Every picked target gets exactly one report and one release.
cdef enum Outcome:
    OUTCOME_OK = 0          # a response head arrived (its status decides whether it failed)
    OUTCOME_CONNECT = 1     # connect refused, reset or timed out: nothing reached the target
    OUTCOME_RESET = 2       # closed or reset after the request was sent, before a response head
    OUTCOME_TIMEOUT = 3     # no response within the read (per-try) timeout
    OUTCOME_PROTOCOL = 4    # malformed response
    OUTCOME_CANCELLED = 5   # the exchange ended without a verdict (client left, pool wait)


# Why `Cluster.pick` answered None (`Cluster.refusal`); counted per kind.
cdef enum Refusal:
    REFUSE_NO_TARGET = 0    # no healthy target (or every breaker open)
    REFUSE_MAX_REQUESTS = 1
    REFUSE_MAX_PENDING = 2
    N_REFUSALS = 3


cdef class Cluster:
    cdef readonly str name
    cdef public int slot                       # its upstream latency slot in Counters; -1: none
    cdef readonly list pools
    cdef readonly list targets                 # list[Target], config order
    cdef readonly Balancer balancer
    cdef readonly str balancer_name
    cdef public object config                  # the Upstream it was built from (registry)
    # upstream limits (0: none), per worker
    cdef public int max_requests
    cdef public int max_pending
    cdef public int max_retries
    cdef public double panic_threshold         # share 0..1 of usable targets; below: all
    cdef readonly bint panic
    # outlier detection (consecutive_failures 0: off)
    cdef public int outlier_failures
    cdef public double base_ejection
    cdef public double max_ejection
    cdef public double max_ejection_share
    # circuit breaker (failure_ratio 0: off)
    cdef public double failure_ratio
    cdef public double window
    cdef public int min_requests
    cdef public double open_for
    cdef public int half_open_requests
    cdef bint failure_status[100]              # 500..599 that count for the breaker
    # retries (attempts 1: none)
    cdef public int attempts
    cdef public bint retry_connect
    cdef public bint retry_reset
    cdef public bint retry_timeout
    cdef bint retry_status[100]                # 500..599 upstream statuses retried
    cdef public double backoff
    cdef public double max_backoff
    cdef public double budget
    cdef public int min_concurrency
    cdef public double per_try_timeout         # 0: the route's / upstream's read timeout
    cdef public double overall_timeout         # 0: none
    cdef public bint retry_non_idempotent
    cdef public long long max_body             # request body bytes held for a replay
    # EWMA decay time (seconds)
    cdef public double ewma_decay
    # load, per worker
    cdef readonly int in_flight
    cdef readonly int retries_active
    cdef readonly long long retries_total
    cdef readonly long long retries_refused    # a retry wanted but budget / max_retries said no
    cdef long long refused[N_REFUSALS]
    cdef public int refusal                    # why the last pick answered None
    cdef readonly long long picked_epoch       # the last pick's probe epoch (0: not a probe)
    cdef uint64_t rng

    cdef Target pick(self, Exchange exchange, Target avoid)
    cdef Target _refuse(self, int why)
    cdef Py_ssize_t _pending(self)
    cdef int release(self, Target target) except -1
    cdef int report(self, Target target, int outcome, int status, double elapsed, double now,
                    long long probe) except -1
    cdef bint retry_wanted(self, int outcome, int status) noexcept
    cdef bint retry_allowed(self) noexcept
    cdef int retry_started(self) except -1
    cdef int retry_ended(self) except -1
    cdef double retry_delay(self, int attempt) noexcept
    cdef int refresh(self) except -1
    cdef int changed(self, Target target) except -1
    cdef int tick(self, double now) except -1
    cdef int _eject(self, Target target, double now) except -1
    cdef int _trip(self, Target target, double now, str why) except -1
