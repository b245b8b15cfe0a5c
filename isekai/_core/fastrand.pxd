# The one fast PRNG of `_core` (xorshift64*): sampling, balancer choices, retry jitter. Not for
# anything secret. Each user keeps its own 64-bit state (never 0).
from libc.stdint cimport uint64_t


cdef inline uint64_t next_random(uint64_t* state) noexcept nogil:
    cdef uint64_t x = state[0]
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    state[0] = x
    return x * <uint64_t>2685821657736338717


cdef inline double next_uniform(uint64_t* state) noexcept nogil:
    """A uniform double in [0, 1)."""
    return <double>(next_random(state) >> 11) * (1.0 / 9007199254740992.0)


cdef inline Py_ssize_t next_below(uint64_t* state, Py_ssize_t n) noexcept nogil:
    """A uniform integer in [0, n) (n > 0), by multiply-shift (no modulo bias worth noting)."""
    return <Py_ssize_t>(((next_random(state) >> 32) * <uint64_t>n) >> 32)
