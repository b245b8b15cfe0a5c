# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The local rate-limit table: one fixed block of memory that every worker of a host shares.

Strategy
--------
The master makes one anonymous ``MAP_SHARED`` mmap of ``LimitTable.bytes_for(slots)`` bytes
before it forks the workers; each worker wraps it in a ``LimitTable``, so a key's state is the
same for every process of the host (and a restarted worker inherits it). Without a buffer the
table is private memory of its own (single-process mode, tests). Nothing in it is a Python
object, nothing grows: memory is ``bytes_for(slots)`` from the first request to the last.

Layout: a 128-byte header (magic, version, slots, buckets, the SipHash key, eviction and
lock-steal counters), then ``slots / 8`` buckets of 576 bytes: a lock word on its own cache
line, then 8 slots of one cache line each (``Slot`` in the .pxd). A key is hashed with keyed
SipHash-2-4 with its 128-bit output; the bucket is picked from the high half of the first word
(multiply-shift, no modulo), and a slot belongs to the key iff both 64-bit words match. The key
of the hash is random per table (``os.urandom``) and lives in the shared header so that every
process agrees; nothing a client sends (a header value that becomes the key bytes) can aim at a
bucket or make two keys share a slot without knowing it, as SipHash is a PRF. Two distinct keys
share a slot only if all 128 bits collide: with n live keys the chance that any pair does is
below n^2 / 2^129 (about 1e-29 for a million keys). Keys of any length, no copy kept.

The first ``LimitTable`` over a zeroed buffer wins a compare-and-swap of the magic from 0 to
MAGIC_INIT, zeroes the buckets, writes the header and publishes MAGIC_READY with a release
store; any other waits for MAGIC_READY. A buffer of the wrong size, an unknown magic, version
or geometry is a ValueError.

Atomicity across processes: each bucket has a spinlock word in the shared memory (GCC
``__atomic`` builtins, acquire on lock, release on unlock) holding the owner's pid. A waiter
spins, then yields (``sched_yield``); once the same owner has held the lock for more than
STEAL_AFTER (20 ms) it asks ``kill(owner, 0)``: ESRCH means the owner died inside the
critical section (SIGKILL, OOM), and the lock is taken over with a second compare-and-swap and
counted in ``lock_steals`` (a dead child that is not yet reaped still answers ``kill``: the
master reaps its workers as they die, so a zombie holds a lock only until then). The critical section is a bucket scan and the arithmetic of one
decision -- a few dozen instructions, no Python call, no allocation, nothing that can raise --
so a live owner never holds it long (nginx's limit_req shares its zones across workers the same
way, with a mutex in shared memory). The GIL is held throughout, so two threads of one process
never meet in it either; a lock that carries our own pid is therefore stale as well.

Slot state is three doubles whose meaning depends on the algorithm (tokens and refill stamp;
the GCRA theoretical arrival time; window index and counts) plus ``idle_at``, the time from
which the key's state is exactly a fresh key's (bucket full again, TAT in the past, windows
over): such a slot can be given to another key with no information lost. A key that finds no
slot of its own takes, in order: an idle slot of its bucket, a never-used one, else the least
recently used one -- that last one is an eviction (counted): the evicted key starts afresh.
A slot whose stored algorithm differs from the caller's is reset (one Limit per key is the
caller's contract -- the policy namespace is in the key bytes -- but breaking it must not
corrupt anything).

The algorithms and their numbers are exactly those of tests/support/rate_reference.py (its
docstring is the specification; the same expressions in the same order, so the doubles agree
bit for bit). The clock is passed in, in seconds: ``monotonic_now()`` (CLOCK_MONOTONIC, the
clock of ``time.monotonic()``, shared by every process of the host) in production, anything in
tests.
"""

import os

from cpython.buffer cimport PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport ESRCH, errno
from libc.math cimport floor, isfinite
from libc.stdint cimport uint64_t, uintptr_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset
from posix.signal cimport kill
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.types cimport pid_t
from posix.unistd cimport getpid

cdef extern from "<sched.h>" nogil:
    int sched_yield()

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from *:
    int ATOMIC_RELAXED "__ATOMIC_RELAXED"
    int ATOMIC_ACQUIRE "__ATOMIC_ACQUIRE"
    int ATOMIC_RELEASE "__ATOMIC_RELEASE"
    int ATOMIC_ACQ_REL "__ATOMIC_ACQ_REL"
    bint atomic_cas "__atomic_compare_exchange_n" (
        uint64_t* ptr, uint64_t* expected, uint64_t desired, bint weak, int success,
        int failure) nogil
    uint64_t atomic_load "__atomic_load_n" (uint64_t* ptr, int order) nogil
    void atomic_store "__atomic_store_n" (uint64_t* ptr, uint64_t value, int order) nogil
    uint64_t atomic_add "__atomic_fetch_add" (uint64_t* ptr, uint64_t value, int order) nogil

ALGORITHMS = ("token_bucket", "gcra", "sliding_window", "fixed_window")

cdef uint64_t MAGIC_INIT = 0x54494e494c544b49ULL    # "IKTLINIT" little-endian
cdef uint64_t MAGIC_READY = 0x5944414552544b49ULL   # "IKTREADY"
cdef uint64_t VERSION = 1
cdef double EPS = 1e-6              # slack of admissions and floors: see rate_reference.py
cdef double STEAL_AFTER = 0.020     # seconds one owner may hold a lock before we ask if it lives
cdef int SPINS = 100                # failed compare-and-swaps before each sched_yield
cdef Py_ssize_t MAX_SLOTS = <Py_ssize_t>1 << 34   # keeps the bucket count below 2^32

cdef uint64_t _PID = <uint64_t>getpid()


def _refresh_pid():
    global _PID
    _PID = <uint64_t>getpid()


os.register_at_fork(after_in_child=_refresh_pid)


cdef double monotonic_now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


def now():
    """CLOCK_MONOTONIC seconds (as ``time.monotonic()``): the clock of every process of the host."""
    return monotonic_now()


# -- SipHash-2-4, 128-bit output (Aumasson & Bernstein; little-endian words) ---------------------

cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void _sipround(uint64_t* v) noexcept nogil:
    v[0] += v[1]
    v[1] = _rotl(v[1], 13)
    v[1] ^= v[0]
    v[0] = _rotl(v[0], 32)
    v[2] += v[3]
    v[3] = _rotl(v[3], 16)
    v[3] ^= v[2]
    v[0] += v[3]
    v[3] = _rotl(v[3], 21)
    v[3] ^= v[0]
    v[2] += v[1]
    v[1] = _rotl(v[1], 17)
    v[1] ^= v[2]
    v[2] = _rotl(v[2], 32)


cdef void _siphash128(uint64_t k0, uint64_t k1, const unsigned char* m, Py_ssize_t n,
                      uint64_t* out1, uint64_t* out2) noexcept nogil:
    cdef uint64_t v[4]
    cdef uint64_t word
    cdef Py_ssize_t i, end = n - (n & 7)
    v[0] = 0x736f6d6570736575ULL ^ k0
    v[1] = 0x646f72616e646f6dULL ^ k1 ^ 0xee
    v[2] = 0x6c7967656e657261ULL ^ k0
    v[3] = 0x7465646279746573ULL ^ k1
    for i in range(0, end, 8):
        memcpy(&word, m + i, 8)          # little-endian hosts (x86-64, aarch64)
        v[3] ^= word
        _sipround(v)
        _sipround(v)
        v[0] ^= word
    word = (<uint64_t>n) << 56
    for i in range(n & 7):
        word |= (<uint64_t>m[end + i]) << (8 * i)
    v[3] ^= word
    _sipround(v)
    _sipround(v)
    v[0] ^= word
    v[2] ^= 0xee
    for i in range(4):
        _sipround(v)
    out1[0] = v[0] ^ v[1] ^ v[2] ^ v[3]
    v[1] ^= 0xdd
    for i in range(4):
        _sipround(v)
    out2[0] = v[0] ^ v[1] ^ v[2] ^ v[3]


def _siphash128_for_test(bytes key, bytes data):
    """SipHash-2-4-128 of ``data`` under the 16-byte ``key``, as the reference's 16 bytes."""
    cdef uint64_t k[2]
    cdef uint64_t out[2]
    if len(key) != 16:
        raise ValueError("a SipHash key is 16 bytes")
    memcpy(k, PyBytes_AS_STRING(key), 16)
    _siphash128(k[0], k[1], <const unsigned char*>PyBytes_AS_STRING(data),
                PyBytes_GET_SIZE(data), &out[0], &out[1])
    return PyBytes_FromStringAndSize(<char*>out, 16)


# -- the bucket lock ------------------------------------------------------------------------------

cdef void _lock(Bucket* b, TableHeader* h) noexcept nogil:
    cdef uint64_t expected
    cdef uint64_t me = _PID
    cdef uint64_t seen = 0
    cdef double since = 0.0
    cdef int spins = 0
    while True:
        expected = 0
        if atomic_cas(&b.lock, &expected, me, False, ATOMIC_ACQUIRE, ATOMIC_RELAXED):
            return
        spins += 1
        if spins < SPINS:
            continue
        spins = 0
        sched_yield()
        if expected != seen:            # a new owner: start its clock
            seen = expected
            since = monotonic_now()
            continue
        if monotonic_now() - since < STEAL_AFTER:
            continue
        if expected == me or (kill(<pid_t>expected, 0) == -1 and errno == ESRCH):
            if atomic_cas(&b.lock, &expected, me, False, ATOMIC_ACQUIRE, ATOMIC_RELAXED):
                atomic_add(&h.lock_steals, 1, ATOMIC_RELAXED)
                return
        seen = 0                        # alive (or changed hands): ask again in STEAL_AFTER


cdef inline void _unlock(Bucket* b) noexcept nogil:
    atomic_store(&b.lock, 0, ATOMIC_RELEASE)


# -- the algorithms (rate_reference.py, expression for expression) --------------------------------

cdef struct State:
    double a
    double b
    double c


cdef inline double _floor0(double x) noexcept nogil:
    x = floor(x + EPS)
    return x if x > 0 else 0.0


cdef inline double _max0(double x) noexcept nogil:
    return x if x > 0 else 0.0


cdef void _fresh(State* s, const Limit* limit, double now) noexcept nogil:
    s.b = 0.0
    s.c = 0.0
    if limit.algorithm == ALG_TOKEN_BUCKET:
        s.a = limit.burst
        s.b = now
    elif limit.algorithm == ALG_GCRA:
        s.a = now
    else:
        s.a = floor(now / limit.period)


cdef double _sliding_retry(double prev, double curr, double count, double period, double cost,
                           double elapsed, double reset) noexcept nogil:
    cdef double room, t
    if cost > count:
        return reset if reset > 0.001 else 0.001
    room = count - cost - curr
    if prev > 0 and room >= 0:
        t = period * (1.0 - room / prev) - elapsed
        if t <= reset:
            return t if t > 0.001 else 0.001
    room = count - cost
    if curr <= room:
        return reset if reset > 0.001 else 0.001
    t = reset + period * (1.0 - room / curr)
    return t if t > 0.001 else 0.001


cdef double _decide(State* s, const Limit* limit, double cost, double now,
                    Decision* out) noexcept nogil:
    """Decide, update ``s`` in place, fill ``out``; return the new idle_at."""
    cdef double count = limit.count, period = limit.period, burst = limit.burst
    cdef double rate, elapsed, tokens, stamp, t, tat, new, k, curr, prev, reset, estimate
    cdef bint allowed
    if limit.algorithm == ALG_TOKEN_BUCKET:
        rate = count / period
        elapsed = now - s.b
        if elapsed > 0:
            tokens = s.a + elapsed * rate
            if tokens > burst:
                tokens = burst
            stamp = now
        else:
            tokens = s.a
            stamp = s.b
        allowed = tokens + EPS >= cost
        if allowed:
            tokens -= cost
        out.allowed = allowed
        out.limit = burst
        out.remaining = _floor0(tokens)
        out.reset = _max0((burst - tokens) / rate)
        out.retry_after = 0.0 if allowed else _max0((cost - tokens) / rate)
        s.a = tokens
        s.b = stamp
        return stamp + (burst - tokens) / rate

    if limit.algorithm == ALG_GCRA:
        t = period / count
        tat = s.a if s.a >= now else now
        new = tat + cost * t
        allowed = new - now <= (burst + EPS) * t
        if allowed:
            tat = new
        out.allowed = allowed
        out.limit = burst
        out.remaining = _floor0((burst * t - (tat - now)) / t)
        out.reset = _max0(tat - now)
        out.retry_after = 0.0 if allowed else _max0(new - burst * t - now)
        s.a = tat
        return tat

    k = floor(now / period)
    if s.a > k + 1:                     # a window of another period (a reload changed the
        s.a = k                         # rate; the key stayed): start afresh
        s.b = 0.0
        s.c = 0.0
    elif s.a > k:
        k = s.a
    if k == s.a:
        curr = s.b
        prev = s.c
    elif k == s.a + 1:
        curr = 0.0
        prev = s.b
    else:
        curr = 0.0
        prev = 0.0
    reset = _max0((k + 1) * period - now)
    out.limit = count
    out.reset = reset
    s.a = k

    if limit.algorithm == ALG_FIXED_WINDOW:
        allowed = curr + cost <= count + EPS
        if allowed:
            curr += cost
        out.allowed = allowed
        out.remaining = _floor0(count - curr)
        out.retry_after = 0.0 if allowed else reset
        s.b = curr
        s.c = 0.0
        return (k + 1) * period

    elapsed = _max0(now - k * period)
    estimate = prev * (1.0 - elapsed / period) + curr
    allowed = estimate + cost <= count + EPS
    if allowed:
        curr += cost
        estimate += cost
    out.allowed = allowed
    out.remaining = _floor0(count - estimate)
    out.retry_after = 0.0 if allowed else _sliding_retry(prev, curr, count, period, cost,
                                                         elapsed, reset)
    s.b = curr
    s.c = prev
    return (k + 2) * period if curr > 0 else (k + 1) * period


cdef int _check(const Limit* limit, double cost, double now) except -1:
    if limit.algorithm < 0 or limit.algorithm > ALG_FIXED_WINDOW:
        raise ValueError(f"unknown rate-limit algorithm {limit.algorithm}")
    if not (limit.count > 0 and isfinite(limit.count)):
        raise ValueError(f"a rate limit's count must be > 0, not {limit.count}")
    if not (limit.period > 0 and isfinite(limit.period)):
        raise ValueError(f"a rate limit's period must be > 0 seconds, not {limit.period}")
    if limit.algorithm <= ALG_GCRA and not (limit.burst >= 1 and isfinite(limit.burst)):
        raise ValueError(f"a rate limit's burst must be >= 1, not {limit.burst}")
    if not (cost >= 0 and isfinite(cost)):
        raise ValueError(f"a request's cost must be >= 0, not {cost}")
    if not isfinite(now):
        raise ValueError(f"the clock must be finite, not {now}")
    return 0


cdef int _limit(Limit* limit, str algorithm, double count, double period,
                double burst) except -1:
    if algorithm == "token_bucket":
        limit.algorithm = ALG_TOKEN_BUCKET
    elif algorithm == "gcra":
        limit.algorithm = ALG_GCRA
    elif algorithm == "sliding_window":
        limit.algorithm = ALG_SLIDING_WINDOW
    elif algorithm == "fixed_window":
        limit.algorithm = ALG_FIXED_WINDOW
    else:
        raise ValueError(f"unknown rate-limit algorithm {algorithm!r} "
                         f"(one of {', '.join(ALGORITHMS)})")
    limit.count = count
    limit.period = period
    limit.burst = burst
    return 0


cdef Py_ssize_t _buckets_for(Py_ssize_t slots) noexcept:
    return (slots + BUCKET_SLOTS - 1) // BUCKET_SLOTS if slots > BUCKET_SLOTS else 1


cdef class LimitTable:
    """A fixed-size table of rate-limit states keyed by bytes; see the module docstring."""

    def __cinit__(self, buffer=None, Py_ssize_t slots=65536):
        cdef Py_ssize_t nbuckets, size
        cdef void* base
        if slots < 1 or slots > MAX_SLOTS:
            raise ValueError(f"a rate-limit table has 1 to {MAX_SLOTS} slots, not {slots}")
        nbuckets = _buckets_for(slots)
        size = LimitTable.bytes_for(slots)
        if buffer is None:
            if posix_memalign(&self._own, 64, size) != 0:
                self._own = NULL
                raise MemoryError()
            memset(self._own, 0, size)
            base = self._own
        else:
            try:
                PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
            except BufferError as e:
                raise ValueError(f"a rate-limit table needs a writable buffer: {e}") from None
            self._has_view = True
            if self._view.len != size:
                raise ValueError(f"the rate-limit buffer has {self._view.len} bytes, "
                                 f"bytes_for({slots}) is {size}")
            if (<uintptr_t>self._view.buf) % 8 != 0:
                raise ValueError("the rate-limit buffer is not 8-byte aligned")
            base = self._view.buf
        self._header = <TableHeader*>base
        self._buckets = <Bucket*>(<char*>base + sizeof(TableHeader))
        self._nbuckets = nbuckets
        self.slots = nbuckets * BUCKET_SLOTS
        self._attach()

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False
        if self._own != NULL:
            free(self._own)
            self._own = NULL

    cdef int _attach(self) except -1:
        cdef TableHeader* h = self._header
        cdef uint64_t expected = 0
        cdef uint64_t key[2]
        cdef double deadline
        cdef bytes secret = os.urandom(16)     # before the CAS: nothing may fail after it
        memcpy(key, PyBytes_AS_STRING(secret), 16)
        if atomic_cas(&h.magic, &expected, MAGIC_INIT, False, ATOMIC_ACQ_REL, ATOMIC_ACQUIRE):
            memset(self._buckets, 0, self._nbuckets * sizeof(Bucket))
            h.version = VERSION
            h.slots = self.slots
            h.buckets = self._nbuckets
            h.k0 = key[0]
            h.k1 = key[1]
            h.evictions = 0
            h.lock_steals = 0
            atomic_store(&h.magic, MAGIC_READY, ATOMIC_RELEASE)
            expected = MAGIC_READY
        deadline = monotonic_now() + 5.0
        while expected == MAGIC_INIT:
            if monotonic_now() > deadline:
                raise ValueError("the rate-limit buffer stayed in initialisation for 5 s")
            sched_yield()
            expected = atomic_load(&h.magic, ATOMIC_ACQUIRE)
        if expected != MAGIC_READY:
            raise ValueError(f"not a rate-limit table (magic {expected:#x})")
        if h.version != VERSION:
            raise ValueError(f"rate-limit table version {h.version}, this build reads {VERSION}")
        if h.buckets != self._nbuckets or h.slots != <uint64_t>self.slots:
            raise ValueError(f"the rate-limit table holds {h.slots} slots, not {self.slots}")
        self._k0 = h.k0
        self._k1 = h.k1
        return 0

    @staticmethod
    def bytes_for(Py_ssize_t slots):
        """The buffer size of a table of ``slots`` slots (rounded up to whole buckets of 8)."""
        if slots < 1 or slots > MAX_SLOTS:
            raise ValueError(f"a rate-limit table has 1 to {MAX_SLOTS} slots, not {slots}")
        return sizeof(TableHeader) + _buckets_for(slots) * sizeof(Bucket)

    cdef Bucket* _bucket(self, const char* key, Py_ssize_t n, uint64_t* h1,
                         uint64_t* h2) noexcept nogil:
        _siphash128(self._k0, self._k1, <const unsigned char*>key, n, h1, h2)
        return &self._buckets[((h1[0] >> 32) * self._nbuckets) >> 32]

    cdef int take(self, const char* key, Py_ssize_t n, const Limit* limit, double cost,
                  double now, Decision* out) except -1:
        cdef uint64_t h1, h2
        cdef uint64_t tag = <uint64_t>limit.algorithm + 1
        cdef Bucket* b
        cdef Slot* s
        cdef Slot* found = NULL
        cdef Slot* victim = NULL
        cdef Slot* lru = NULL
        cdef State state
        cdef double idle_at
        cdef int i
        _check(limit, cost, now)
        b = self._bucket(key, n, &h1, &h2)
        _lock(b, self._header)
        for i in range(BUCKET_SLOTS):
            s = &b.slots[i]
            if s.tag == 0:                  # never used: so are all after it
                if victim == NULL:
                    victim = s
                break
            if s.h1 == h1 and s.h2 == h2:
                found = s
                break
            if victim == NULL and s.idle_at <= now:
                victim = s
            if lru == NULL or s.last_used < lru.last_used:
                lru = s
        if found != NULL and found.tag == tag:
            state.a = found.a
            state.b = found.b
            state.c = found.c
        else:
            _fresh(&state, limit, now)
            if found == NULL:
                if victim == NULL:
                    victim = lru
                    atomic_add(&self._header.evictions, 1, ATOMIC_RELAXED)
                found = victim
                found.h1 = h1
                found.h2 = h2
        idle_at = _decide(&state, limit, cost, now, out)
        found.tag = tag
        found.a = state.a
        found.b = state.b
        found.c = state.c
        found.idle_at = idle_at
        found.last_used = now
        _unlock(b)
        return 0

    cdef int peek(self, const char* key, Py_ssize_t n, const Limit* limit, double now,
                  Decision* out) except -1:
        cdef uint64_t h1, h2
        cdef uint64_t tag = <uint64_t>limit.algorithm + 1
        cdef Bucket* b
        cdef Slot* s
        cdef State state
        cdef bint known = False
        cdef int i
        _check(limit, 0.0, now)
        b = self._bucket(key, n, &h1, &h2)
        _lock(b, self._header)
        for i in range(BUCKET_SLOTS):
            s = &b.slots[i]
            if s.tag == 0:
                break
            if s.h1 == h1 and s.h2 == h2:
                if s.tag == tag:
                    known = True
                    state.a = s.a
                    state.b = s.b
                    state.c = s.c
                break
        _unlock(b)
        if not known:
            _fresh(&state, limit, now)
        _decide(&state, limit, 0.0, now, out)
        return 0

    def take_py(self, bytes key not None, str algorithm, double count, double period,
                double burst, double cost=1, now=None):
        """Take ``cost`` for ``key`` now: (allowed, limit, remaining, reset, retry_after)."""
        cdef Limit limit
        cdef Decision d
        _limit(&limit, algorithm, count, period, burst)
        self.take(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &limit, cost,
                  monotonic_now() if now is None else <double>now, &d)
        return (d.allowed, d.limit, d.remaining, d.reset, d.retry_after)

    def peek_py(self, bytes key not None, str algorithm, double count, double period,
                double burst, now=None):
        """The decision a request of cost 0 would get now; changes nothing."""
        cdef Limit limit
        cdef Decision d
        _limit(&limit, algorithm, count, period, burst)
        self.peek(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &limit,
                  monotonic_now() if now is None else <double>now, &d)
        return (d.allowed, d.limit, d.remaining, d.reset, d.retry_after)

    def count_allowed(self, list keys not None, Py_ssize_t rounds, str algorithm, double count,
                      double period, double burst, double cost=1, now=None):
        """Take ``cost`` for each key of ``keys`` in turn, ``rounds`` times, in one C loop (the
        clock read once per take unless ``now`` is given); return how many were allowed.
        Benchmarks and multi-process tests: what a policy pays per request, without the
        Python call."""
        cdef Limit limit
        cdef Decision d
        cdef Py_ssize_t r, i, n = len(keys), allowed = 0
        cdef bint fixed = now is not None
        cdef double t = <double>now if fixed else 0.0
        cdef bytes key
        _limit(&limit, algorithm, count, period, burst)
        for key in keys:
            if key is None:
                raise TypeError("keys are bytes")
        for r in range(rounds):
            for i in range(n):
                key = <bytes>keys[i]
                self.take(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &limit, cost,
                          t if fixed else monotonic_now(), &d)
                allowed += d.allowed
        return allowed

    def stats(self, now=None):
        """{"slots", "used", "evictions", "lock_steals"}: ``used`` = slots holding a key whose
        state is not idle at ``now`` (default: the monotonic clock), read without locks."""
        cdef double t = monotonic_now() if now is None else <double>now
        cdef Py_ssize_t used = 0
        cdef uint64_t bi
        cdef int i
        cdef Slot* s
        for bi in range(self._nbuckets):
            for i in range(BUCKET_SLOTS):
                s = &self._buckets[bi].slots[i]
                if s.tag == 0:
                    break
                if s.idle_at > t:
                    used += 1
        return {
            "slots": self.slots,
            "used": used,
            "evictions": atomic_load(&self._header.evictions, ATOMIC_RELAXED),
            "lock_steals": atomic_load(&self._header.lock_steals, ATOMIC_RELAXED),
        }

    def _hold_lock_for_test(self, bytes key not None):
        """Tests only: take ``key``'s bucket lock and never release it (then die)."""
        cdef uint64_t h1, h2
        _lock(self._bucket(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), &h1, &h2),
              self._header)
