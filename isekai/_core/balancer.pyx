# cython: language_level=3, boundscheck=False, wraparound=False
"""Balancers: which target of a cluster an exchange goes to.

Strategy. A balancer sees its cluster's `Target`s and reads only C fields on a pick:
`selectable` (kept by the cluster from health, ejection and the breaker), `weight`,
`in_flight`, `ewma`. `choose(exchange, avoid)` returns a selectable target — preferring one other
than `avoid` (the target a retried exchange just failed on) — or None when none is selectable
(the cluster answers 503). Nothing here allocates per pick; draws use `fastrand`.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint64_t

from isekai._core.fastrand cimport next_below, next_random
from isekai._core.target cimport Target
from isekai._core.upstream cimport Exchange

from posix.unistd cimport getpid

cdef uint64_t GOLDEN = <uint64_t>0x9E3779B97F4A7C15ULL
cdef uint64_t _seed_counter = GOLDEN


cdef uint64_t _seed() noexcept:
    global _seed_counter
    _seed_counter += GOLDEN
    cdef uint64_t x = _seed_counter ^ (<uint64_t>getpid() << 32)
    return x if x != 0 else 1


cdef class Balancer:
    """Picks the target an exchange goes to. Subclasses implement `choose`."""

    def __init__(self, list targets, **options):
        cdef Target target
        cdef Py_ssize_t i
        if not targets:
            raise ValueError("a balancer needs at least one target")
        self.targets = targets
        self.n = len(targets)
        for i in range(self.n):
            target = targets[i]
            target.index = i
        self.rng = _seed()
        self.rebuild()

    cpdef Target choose(self, Exchange exchange, Target avoid):
        raise NotImplementedError

    cdef int rebuild(self) except -1:
        return 0

    def pick(self, Exchange exchange=None, Target avoid=None):
        """`choose` from Python (tests, benchmarks)."""
        return self.choose(exchange, avoid)

    def seed(self, uint64_t value):
        """Fix the random draws (tests)."""
        self.rng = value if value != 0 else 1


cdef class RoundRobin(Balancer):
    """Smooth weighted round robin: each pick adds every selectable target's weight to its
    counter, takes the highest and subtracts the total from it — weight 3 vs 1 gives a a b a,
    never a a a b. Equal weights are a plain rotation."""

    def __dealloc__(self):
        if self.current != NULL:
            PyMem_Free(self.current)

    cdef int rebuild(self) except -1:
        cdef Target target
        cdef Py_ssize_t i
        if self.current != NULL:
            PyMem_Free(self.current)
        self.current = <long long*>PyMem_Malloc(max(self.n, 1) * sizeof(long long))
        if self.current == NULL:
            raise MemoryError()
        self.equal = True
        for i in range(self.n):
            self.current[i] = 0
            target = self.targets[i]
            if target.weight != (<Target>self.targets[0]).weight:
                self.equal = False
        self.next_index = 0
        return 0

    cpdef Target choose(self, Exchange exchange, Target avoid):
        cdef Target target, best = None, fallback = None
        cdef Py_ssize_t i, at
        cdef long long total = 0
        cdef long long* current = self.current
        if self.equal:
            for i in range(self.n):
                at = self.next_index + i
                if at >= self.n:
                    at -= self.n
                target = <Target>self.targets[at]
                if not target.selectable:
                    continue
                if target is avoid and self.n > 1:
                    fallback = target
                    continue
                self.next_index = at + 1 if at + 1 < self.n else 0
                return target
            return fallback
        for i in range(self.n):
            target = <Target>self.targets[i]
            if not target.selectable:
                continue
            if target is avoid:
                fallback = target
                continue
            current[i] += target.weight
            total += target.weight
            if best is None or current[i] > current[best.index]:
                best = target
        if best is None:
            return fallback
        current[best.index] -= total
        return best


cdef class KeyedExchange(Exchange):

    def __init__(self, key=None):
        self.key = key

    cdef bytes hash_key(self, int source, bytes name):
        return self.key
