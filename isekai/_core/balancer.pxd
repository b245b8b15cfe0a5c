from libc.stdint cimport uint64_t

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


cdef class KeyedExchange(Exchange):
    """An exchange with a fixed hash key: for balancer tests and benchmarks."""
    cdef public bytes key
