from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint64_t

from isekai._core.target cimport Target
from isekai._core.upstream cimport Exchange


cdef class Balancer:
    """Chooses the target of each exchange among its cluster's targets."""
    cdef readonly list targets           # list[Target], in config order (Target.index = position)
    cdef Py_ssize_t n
    cdef uint64_t rng                    # for the balancers that draw (fastrand)

    # Among targets with `selectable` set, not `avoid` unless it is the only one; None if no
    # target is selectable. Allocation-free, O(1) or O(targets).
    cpdef Target choose(self, Exchange exchange, Target avoid)
    # The weights or the target list changed (not selectable flags): rebuild derived tables.
    cdef int rebuild(self) except -1


cdef class RoundRobin(Balancer):
    cdef long long* current              # smooth weighted round robin: one counter per target
    cdef bint equal                      # all weights equal: plain rotation
    cdef Py_ssize_t next_index


cdef class LeastConn(Balancer):
    cdef long long* current              # smooth weighted round robin among the tied targets


cdef class WeightedDraw(Balancer):
    """Base of the balancers that draw targets in proportion to their weight."""
    cdef long long* cumulative           # cumulative[i] = weight of targets 0..i
    cdef long long total                 # sum of the weights
    cdef bint equal                      # all weights equal: a uniform index, no search

    # The position of a selectable target other than `avoid` and the one at position `exclude`
    # (-1: none), drawn in proportion to weight; -1 when there is none.
    cdef Py_ssize_t draw(self, Target avoid, Py_ssize_t exclude) noexcept
    cdef Py_ssize_t draw_index(self, Py_ssize_t exclude) noexcept
    cdef Py_ssize_t draw_scan(self, Target avoid, Py_ssize_t exclude) noexcept


cdef class Random(WeightedDraw):
    pass


cdef class PowerOfTwo(WeightedDraw):
    pass


cdef class Ewma(WeightedDraw):
    cdef double known_mean               # mean EWMA of the targets that have one (cached)
    cdef unsigned int since_mean         # picks since known_mean was computed

    cdef double cost(self, PyObject* target) noexcept


ctypedef struct RingPoint:
    uint64_t hash
    Py_ssize_t position                  # index into Balancer.targets


cdef class ConsistentHash(WeightedDraw):
    cdef readonly int hash_source        # HashSource
    cdef readonly bytes hash_name
    cdef readonly str algorithm          # "ring" | "maglev"
    cdef bint maglev
    cdef RingPoint* ring                 # sorted by hash
    cdef Py_ssize_t points
    cdef int32_t* table                  # Maglev lookup table: MAGLEV_SIZE target positions

    cdef Target by_ring(self, uint64_t h, Target avoid)
    cdef Target by_table(self, uint64_t h, Target avoid)
    cdef int build_ring(self) except -1
    cdef int build_table(self) except -1


cdef class KeyedExchange(Exchange):
    """An exchange with a fixed hash key: for balancer tests and benchmarks."""
    cdef public bytes key
