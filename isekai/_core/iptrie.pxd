# Declarations for the IP prefix set; definitions and the strategy essay live in iptrie.pyx.

from libc.stdint cimport uint32_t


cdef struct TrieNode:
    # child[next 4 bits]: 0 = nothing below, TERM = every address below is in the set, else a
    # node index; 64 bytes, one cache line
    uint32_t child[16]


cdef class IpSet:
    """A set of IPv4 and IPv6 networks (CIDRs), matched against textual addresses."""
    cdef TrieNode* nodes
    cdef uint32_t used
    cdef uint32_t capacity
    cdef bint all4               # 0.0.0.0/0 was added
    cdef bint all6               # ::/0 was added
    cdef list networks           # the normalised CIDRs added, in order (for len / repr)

    cdef bint has(self, const char* text, Py_ssize_t n) noexcept nogil
    cdef bint has_bytes(self, bytes address) noexcept
    cpdef bint contains(self, object address)
    cdef bint has_packed(self, const unsigned char* addr, int size) noexcept nogil
    cdef uint32_t _node(self) except 0
    cdef int _insert(self, const unsigned char* addr, int size, int prefix) except -1
