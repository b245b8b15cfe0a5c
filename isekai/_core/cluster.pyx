# cython: language_level=3, boundscheck=False, wraparound=False
"""A cluster: the targets of one upstream in one worker, and what decides which one is used.

Strategy. `pick` is the only call on the way in: it applies the upstream limits (`max_requests`,
`max_pending`), asks the balancer for a selectable target (preferring one other than the target a
retry just failed on) and counts the target's load. Every picked target then gets exactly one
`report` (how the attempt went) and one `release` (the attempt is over). Reports drive three
independent mechanisms, all per worker and all in C fields of the `Target`:

- EWMA of the time from the request head sent to the response head (the old average weighs
  decay / (decay + dt), `ewma_decay` seconds), for the `ewma` balancer;
- outlier detection: `outlier_failures` consecutive failures (a 5xx, a connect failure, reset,
  timeout or malformed response) eject the target for `base_ejection` x the number of times it
  was ejected in a row (at most `max_ejection`); the multiplier decays by one per quiet
  `base_ejection`; at most `max_ejection_share` of the targets (and always one) are ejected;
- the circuit breaker: closed -> open when the failure ratio over the rolling `window` reaches
  `failure_ratio` with at least `min_requests` requests (which statuses fail is configurable;
  transport failures always do) -> after `open_for`, half-open: `half_open_requests` probes
  (never more at once) -> closed when all succeed, open again when one fails.

Active health verdicts arrive from the checker (`set_health`); a target the checker finds healthy
again is no longer ejected (Envoy's default). Which targets the balancer may
choose (`Target.selectable`) is recomputed only when one of these changes (`refresh`), never per
pick: healthy, not ejected, and the breaker closed (or half-open with a probe slot free). Below
`panic_threshold` (the share of healthy, non-ejected targets) health and ejection are ignored, as
Envoy does; an open breaker never is. Time passes in `tick` (the worker's upstream sweep): ejections
end, open breakers become half-open. Each state change is logged once.

Retries are decided by the request (`_core/protocol.pyx`) with `retry_wanted` (is this outcome in
`retry.on`), `retry_allowed` (the budget: retries in flight below `budget` x requests in flight,
at least `min_concurrency`, and below `max_retries`) and `retry_delay` (exponential backoff with
full jitter).
"""

import logging

from libc.math cimport floor
from libc.stdint cimport uint64_t

from isekai._core.balancer cimport Balancer
from isekai._core.fastrand cimport next_uniform
from isekai._core.http cimport monotonic
from isekai._core.target cimport (
    BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN, WINDOW_BUCKETS, Target,
)
from isekai._core.upstream cimport Exchange, Pool

from posix.unistd cimport getpid

log = logging.getLogger("isekai.upstream")

BREAKER_STATES = ("closed", "open", "half_open")
OUTCOMES = ("ok", "connect_failure", "reset", "timeout", "protocol", "cancelled")
REFUSALS = ("no_target", "max_requests", "max_pending")
REFUSAL_REASONS = (
    "no healthy upstream target",
    "upstream max_requests reached",
    "upstream max_pending reached",
)


cdef class Cluster:
    """The targets of one upstream, its balancer, and its health, breaker and retry rules."""

    def __init__(self, str name, Balancer balancer, str balancer_name="round_robin"):
        cdef Target target
        self.name = name
        self.balancer = balancer
        self.balancer_name = balancer_name
        self.targets = balancer.targets
        self.pools = [target.pool for target in self.targets if target.pool is not None]
        self.slot = -1
        self.attempts = 1
        self.backoff = 0.025
        self.max_backoff = 0.25
        self.budget = 0.2
        self.min_concurrency = 3
        self.max_body = 64 * 1024
        self.window = 10.0
        self.min_requests = 20
        self.open_for = 30.0
        self.half_open_requests = 3
        self.base_ejection = 30.0
        self.max_ejection = 300.0
        self.max_ejection_share = 1.0
        self.ewma_decay = 10.0
        self.rng = (<uint64_t>id(self)) ^ (<uint64_t>getpid() << 40) | 1
        self.set_failure_statuses((500, 502, 503, 504))
        self.refresh()

    # -- configuration (the registry sets the public fields from the Upstream) ---------------

    def set_failure_statuses(self, statuses):
        """The 5xx statuses the breaker counts as failures."""
        _fill(self.failure_status, statuses)

    def set_retry_on(self, conditions):
        """`retry.on`: "connect_failure", "reset", "timeout", or a 5xx status (504 also covers
        a per-try timeout)."""
        statuses = [c for c in conditions if isinstance(c, int)]
        _fill(self.retry_status, statuses)
        self.retry_connect = "connect_failure" in conditions
        self.retry_reset = "reset" in conditions
        self.retry_timeout = "timeout" in conditions or 504 in statuses

    # -- the request path ----------------------------------------------------------------------

    cdef Target pick(self, Exchange exchange, Target avoid):
        cdef Target target
        cdef Pool pool
        if self.max_requests > 0 and self.in_flight >= self.max_requests:
            return self._refuse(REFUSE_MAX_REQUESTS)
        target = self.balancer.choose(exchange, avoid)
        if target is None:
            return self._refuse(REFUSE_NO_TARGET)
        pool = target.pool
        if (self.max_pending > 0 and pool is not None and not pool.idle
                and pool.total >= pool.max_connections and self._pending() >= self.max_pending):
            return self._refuse(REFUSE_MAX_PENDING)
        target.in_flight += 1
        self.in_flight += 1
        self.picked_epoch = 0
        if target.breaker == BREAKER_HALF_OPEN:
            # a probe: only its own report may count for the half-open breaker
            self.picked_epoch = target.epoch
            target.probes_in_flight += 1
            if target.probes_in_flight + target.probe_successes >= self.half_open_requests:
                self.changed(target)
        return target

    cdef Target _refuse(self, int why):
        self.refusal = why
        self.refused[why] += 1
        return None

    cdef Py_ssize_t _pending(self):
        cdef Pool pool
        cdef Py_ssize_t waiting = 0
        for pool in self.pools:
            waiting += len(pool.waiters)
        return waiting

    cdef int release(self, Target target) except -1:
        target.in_flight -= 1
        self.in_flight -= 1
        return 0

    cdef int report(self, Target target, int outcome, int status, double elapsed,
                    double now, long long probe) except -1:
        """How an attempt went; `probe` is the epoch `pick` gave it (`picked_epoch`): a
        request picked before the breaker went half-open, or in an earlier half-open period,
        is not a probe."""
        cdef bint failed, breaker_failed
        cdef bint is_probe = (probe != 0 and target.breaker == BREAKER_HALF_OPEN
                              and probe == target.epoch)
        cdef double w
        cdef long long requests, failures
        if is_probe and target.probes_in_flight > 0:
            target.probes_in_flight -= 1
        if outcome == OUTCOME_CANCELLED:
            if is_probe:
                self.changed(target)
            return 0
        target.requests += 1
        if outcome == OUTCOME_OK:
            failed = status >= 500
            breaker_failed = 500 <= status <= 599 and self.failure_status[status - 500]
            if target.ewma <= 0.0 or self.ewma_decay <= 0.0:
                target.ewma = elapsed
            else:
                # the weight of the old average: exp(-dt/decay) to first order, without exp()
                w = self.ewma_decay / (self.ewma_decay + (now - target.ewma_at))
                target.ewma = target.ewma * w + elapsed * (1.0 - w)
            target.ewma_at = now
        else:
            failed = breaker_failed = True
            if elapsed > target.ewma:  # a failure is at least as slow as it took
                target.ewma = elapsed
                target.ewma_at = now
        if failed:
            target.failures += 1
        if self.outlier_failures > 0:
            if failed:
                target.consecutive_failures += 1
                if (target.consecutive_failures >= self.outlier_failures
                        and target.ejected_until == 0.0):
                    self._eject(target, now)
            else:
                target.consecutive_failures = 0
        if self.failure_ratio > 0.0:
            if target.breaker == BREAKER_HALF_OPEN:
                if not is_probe:
                    return 0  # picked before this half-open period: says nothing now
                if breaker_failed:
                    self._trip(target, now, "a half-open probe failed")
                else:
                    target.probe_successes += 1
                    if target.probe_successes >= self.half_open_requests:
                        target.breaker = BREAKER_CLOSED
                        target.window_clear()
                        log.warning("upstream %s target %s: circuit breaker closed (%d probes "
                                    "succeeded)", self.name, target.address,
                                    target.probe_successes)
                    self.changed(target)
            elif target.breaker == BREAKER_CLOSED:
                target.window_add(now, self.window / WINDOW_BUCKETS, breaker_failed)
                if breaker_failed:
                    target.window_sums(now, self.window / WINDOW_BUCKETS, &requests, &failures)
                    if (requests >= self.min_requests
                            and failures >= self.failure_ratio * requests):
                        self._trip(target, now, "failure ratio %.2f over %gs (%d requests)" % (
                            <double>failures / requests, self.window, requests))
            # (open: a late answer to a request picked before the breaker opened)
        return 0

    cdef int _eject(self, Target target, double now) except -1:
        cdef Target other
        cdef int ejected = 0
        cdef int allowed = <int>floor(self.max_ejection_share * len(self.targets))
        for other in self.targets:
            ejected += other.ejected_until != 0.0
        if ejected >= (allowed if allowed > 1 else 1):
            return 0
        target.ejections += 1
        duration = min(self.base_ejection * target.ejections, self.max_ejection)
        target.ejected_until = now + duration
        target.ejections_total += 1
        target.consecutive_failures = 0
        log.warning("upstream %s target %s: ejected for %gs after %d consecutive failures",
                    self.name, target.address, duration, self.outlier_failures)
        self.changed(target)
        return 0

    cdef int _trip(self, Target target, double now, str why) except -1:
        target.breaker = BREAKER_OPEN
        target.opened_at = now
        target.probe_at = now + self.open_for
        target.opened_total += 1
        target.probes_in_flight = 0
        target.probe_successes = 0
        target.window_clear()
        log.warning("upstream %s target %s: circuit breaker open for %gs: %s",
                    self.name, target.address, self.open_for, why)
        self.changed(target)
        return 0

    cdef int tick(self, double now) except -1:
        cdef Target target
        cdef bint changed = False
        for target in self.targets:
            if target.ejected_until != 0.0:
                if now >= target.ejected_until:
                    target.ejected_until = 0.0
                    target.quiet_since = now
                    changed = True
                    log.warning("upstream %s target %s: ejection over", self.name,
                                target.address)
            elif target.ejections > 0 and now - target.quiet_since >= self.base_ejection:
                target.ejections -= 1
                target.quiet_since = now
            if target.breaker == BREAKER_OPEN and now >= target.probe_at:
                target.breaker = BREAKER_HALF_OPEN
                target.epoch += 1
                target.probes_in_flight = 0
                target.probe_successes = 0
                changed = True
                log.warning("upstream %s target %s: circuit breaker half-open (%d probes)",
                            self.name, target.address, self.half_open_requests)
        if changed:
            self.refresh()
        return 0

    cdef int changed(self, Target target) except -1:
        """`target`'s state changed: recompute what is selectable in the cluster that owns it
        now (an older cluster still finishing requests of an older snapshot shares the
        `Target` with the newest one, whose settings decide)."""
        if target.owner is None or target.owner is self:
            return self.refresh()
        target.owner.recompute()
        return 0

    cdef int refresh(self) except -1:
        cdef Target target
        cdef int usable = 0
        cdef bint panic, breaker_ok
        for target in self.targets:
            usable += target.healthy and target.ejected_until == 0.0
        panic = (self.panic_threshold > 0.0
                 and usable < self.panic_threshold * len(self.targets))
        if panic != self.panic:
            self.panic = panic
            log.warning("upstream %s: %s panic mode (%d of %d targets healthy)", self.name,
                        "in" if panic else "out of", usable, len(self.targets))
        for target in self.targets:
            if target.breaker == BREAKER_CLOSED:
                breaker_ok = True
            elif target.breaker == BREAKER_HALF_OPEN:
                breaker_ok = (target.probes_in_flight + target.probe_successes
                              < self.half_open_requests)
            else:
                breaker_ok = False
            target.selectable = breaker_ok and (
                panic or (target.healthy and target.ejected_until == 0.0))
        return 0

    # -- retries ---------------------------------------------------------------------------------

    cdef bint retry_wanted(self, int outcome, int status) noexcept:
        if outcome == OUTCOME_OK:
            return 500 <= status <= 599 and self.retry_status[status - 500]
        if outcome == OUTCOME_CONNECT:
            return self.retry_connect
        if outcome == OUTCOME_RESET or outcome == OUTCOME_PROTOCOL:
            return self.retry_reset
        if outcome == OUTCOME_TIMEOUT:
            return self.retry_timeout
        return False

    cdef bint retry_allowed(self) noexcept:
        cdef double cap = self.budget * self.in_flight
        if cap < self.min_concurrency:
            cap = self.min_concurrency
        if (self.retries_active >= cap
                or (self.max_retries > 0 and self.retries_active >= self.max_retries)):
            self.retries_refused += 1
            return False
        return True

    cdef int retry_started(self) except -1:
        self.retries_active += 1
        return 0

    cdef int retry_ended(self) except -1:
        self.retries_active -= 1
        return 0

    cdef double retry_delay(self, int attempt) noexcept:
        """Before retry number `attempt` (1 for the first): up to backoff x 2^(attempt-1),
        at most max_backoff, fully jittered."""
        cdef double delay = self.backoff
        cdef int i
        for i in range(1, attempt):
            delay *= 2.0
            if delay >= self.max_backoff:
                break
        if delay > self.max_backoff:
            delay = self.max_backoff
        self.retries_total += 1
        return delay * next_uniform(&self.rng)

    # -- Python side: the registry, the checker, status, tests ----------------------------------

    def set_health(self, str address, bint healthy):
        """An active health verdict for target `address`; False if it is not a target here."""
        cdef Target target
        for target in self.targets:
            if target.address == address:
                if target.healthy != healthy:
                    target.healthy = healthy
                    log.warning("upstream %s target %s: health check says %s", self.name,
                                address, "healthy" if healthy else "unhealthy")
                    if healthy and target.ejected_until != 0.0:
                        # a passing active check outranks the passive verdict (as Envoy does)
                        target.ejected_until = 0.0
                        target.consecutive_failures = 0
                        target.quiet_since = monotonic()
                        log.warning("upstream %s target %s: ejection lifted by the health "
                                    "check", self.name, address)
                    self.refresh()
                return True
        return False

    def update(self, double now=-1.0):
        """Apply the passing of time (`tick`) at `now` (the `_core` clock by default)."""
        self.tick(monotonic() if now < 0 else now)

    def recompute(self):
        """Recompute which targets are selectable (after settings changed)."""
        self.refresh()

    def reset_breakers(self):
        """Close every target's breaker (the upstream no longer has one)."""
        cdef Target target
        for target in self.targets:
            if target.breaker != BREAKER_CLOSED:
                log.warning("upstream %s target %s: circuit breaker closed (breaker removed)",
                            self.name, target.address)
            target.breaker = BREAKER_CLOSED
            target.probes_in_flight = 0
            target.probe_successes = 0
            target.window_clear()
        self.refresh()

    def reset_ejections(self):
        """End every ejection (the upstream no longer has outlier detection)."""
        cdef Target target
        for target in self.targets:
            target.ejected_until = 0.0
            target.ejections = 0
            target.consecutive_failures = 0
        self.refresh()

    def pick_target(self, Exchange exchange=None, Target avoid=None):
        """`pick` from Python (tests, benchmarks): a Target or None (see `refusal_name`)."""
        return self.pick(exchange, avoid)

    def report_outcome(self, Target target, str outcome, int status=0, double elapsed=0.0,
                       double now=-1.0, long long probe=-1):
        """`report` from Python (tests): ``outcome`` is one of `OUTCOMES`; ``probe`` the
        epoch `pick_target` gave (`picked_epoch`; -1: a probe of the current half-open period
        if the breaker is half-open)."""
        if probe < 0:
            probe = target.epoch if target.breaker == BREAKER_HALF_OPEN else 0
        self.report(target, OUTCOMES.index(outcome), status, elapsed,
                    monotonic() if now < 0 else now, probe)

    def release_target(self, Target target):
        self.release(target)

    def start_retry(self):
        """Ask the retry budget for a slot, as a request does (tests); True when granted."""
        if not self.retry_allowed():
            return False
        self.retry_started()
        return True

    def end_retry(self):
        self.retry_ended()

    def retry_backoff(self, int attempt):
        """A delay before retry number `attempt` (tests)."""
        return self.retry_delay(attempt)

    def wants_retry(self, str outcome, int status=0):
        """Whether `retry.on` covers this outcome (tests)."""
        return self.retry_wanted(OUTCOMES.index(outcome), status)

    @property
    def refusal_name(self):
        return REFUSALS[self.refusal]

    def refusals(self):
        """Picks answered None since the cluster was made, by reason."""
        cdef int i
        return {REFUSALS[i]: self.refused[i] for i in range(<int>N_REFUSALS)}

    def target_stats(self, double now=-1.0):
        """One JSON-compatible dict per target (status endpoints and metrics)."""
        cdef Target target
        cdef long long requests, failures
        if now < 0:
            now = monotonic()
        rows = []
        for target in self.targets:
            target.window_sums(now, self.window / WINDOW_BUCKETS, &requests, &failures)
            rows.append({
                "upstream": self.name,
                "target": target.address,
                "weight": target.weight,
                "healthy": bool(target.healthy),
                "selectable": bool(target.selectable),
                "in_flight": target.in_flight,
                "ewma_ms": round(target.ewma * 1000.0, 3),
                "ejected": target.ejected_until != 0.0,
                "ejected_for": max(0.0, round(target.ejected_until - now, 3))
                               if target.ejected_until != 0.0 else 0.0,
                "ejections": target.ejections_total,
                "consecutive_failures": target.consecutive_failures,
                "breaker": BREAKER_STATES[target.breaker],
                "next_probe_in": max(0.0, round(target.probe_at - now, 3))
                                 if target.breaker == BREAKER_OPEN else 0.0,
                "breaker_opened": target.opened_total,
                "window_requests": requests,
                "window_failures": failures,
                "requests": target.requests,
                "failures": target.failures,
            })
        return rows

    def stats(self):
        """This cluster's JSON-compatible numbers (status endpoints and metrics)."""
        return {
            "upstream": self.name,
            "balancer": self.balancer_name,
            "in_flight": self.in_flight,
            "panic": bool(self.panic),
            "retries": self.retries_total,
            "retries_active": self.retries_active,
            "retries_refused": self.retries_refused,
            "refused": self.refusals(),
        }


cdef int _fill(bint* table, statuses) except -1:
    cdef int i
    for i in range(100):
        table[i] = False
    for status in statuses:
        if not 500 <= status <= 599:
            raise ValueError(f"{status} is not a 5xx status")
        table[status - 500] = True
    return 0
