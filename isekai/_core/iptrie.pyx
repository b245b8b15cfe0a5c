# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""IP address sets: is this client address in any of these networks?

Strategy. One prefix trie per address family that consumes 4 bits per level (16 children of
32 bits: a node is one 64-byte cache line), both in one aligned C array without Python objects:
node 0 is the IPv4 root, node 1 the IPv6 root. Adding a network walks its prefix 4 bits at a
time, creating nodes, and marks the child slots its last (partial) group of bits covers TERM:
"every address below is in the set" (a /22 marks 4 slots of its level). A lookup parses the
textual address with `inet_pton` into 4 or 16 bytes on the stack and walks at most 8 or 32
levels, stopping at the first TERM (a match) or empty slot (no match). So a lookup costs the
same for 10 networks and 10,000: it depends on prefix lengths, not on how many networks there
are, it touches at most one cache line per level, and it allocates nothing.

Semantics worth knowing:
- IPv4-mapped IPv6 addresses (``::ffff:10.1.2.3``) are IPv4 addresses: they are looked up, and
  networks within ``::ffff:0:0/96`` are added, in the IPv4 trie. IPv6 networks never match an
  IPv4 address (``::/0`` does not hold ``10.1.2.3``, as in Python's `ipaddress`).
- Networks are given as CIDR text (host bits are ignored: ``10.1.2.3/8`` is ``10.0.0.0/8``); a
  bare address is a /32 or /128. A network inside one already added changes nothing; a wider
  one replaces the narrower ones below it.
- Anything that is not an address (``b"unknown"``, ``b"[::1]"``, a zone id, empty) matches
  nothing; callers decide what an unparseable address means.
"""

import ipaddress

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint32_t
from libc.stdlib cimport free
from libc.string cimport memcpy, memset

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)

cdef extern from "<stdlib.h>" nogil:
    int posix_memalign(void** memptr, size_t alignment, size_t size)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

cdef uint32_t TERM = 0xFFFFFFFF
cdef uint32_t ROOT4 = 0
cdef uint32_t ROOT6 = 1
cdef Py_ssize_t MAX_TEXT = 63    # longer than any textual IPv6 address (45)


cdef TrieNode* _aligned(uint32_t count) except NULL:
    cdef void* memory = NULL
    if posix_memalign(&memory, 64, count * sizeof(TrieNode)) != 0:
        raise MemoryError()
    return <TrieNode*>memory


cdef inline int _nibble(const unsigned char* addr, int i) noexcept nogil:
    # the i-th group of 4 bits, most significant first
    return (addr[i >> 1] >> (4 - 4 * (i & 1))) & 15


cdef inline bint _mapped(const unsigned char* a) noexcept nogil:
    # ::ffff:0:0/96
    cdef int i
    for i in range(10):
        if a[i] != 0:
            return False
    return a[10] == 0xFF and a[11] == 0xFF


cdef class IpSet:
    """A set of IPv4 and IPv6 networks. ``IpSet(["10.0.0.0/8", "2001:db8::/32"])``;
    ``contains("10.1.2.3")`` (str or bytes, textual) is True when any network holds the address.
    Invalid networks raise ValueError when added; invalid addresses are simply not contained."""

    def __cinit__(self):
        self.capacity = 64
        self.nodes = _aligned(self.capacity)
        memset(self.nodes, 0, 2 * sizeof(TrieNode))
        self.used = 2
        self.networks = []

    def __init__(self, networks=()):
        for network in networks:
            self.add(network)

    def __dealloc__(self):
        free(self.nodes)

    def add(self, network):
        """Add one network: CIDR text (str or bytes) or an `ipaddress` network or address."""
        cdef unsigned char packed[16]
        cdef int prefix
        if isinstance(network, bytes):
            network = network.decode("ascii")
        if isinstance(network, str):
            try:
                net = ipaddress.ip_network(network.strip(), strict=False)
            except ValueError as error:
                raise ValueError(f"not an IP network: {network!r}") from error
        elif isinstance(network, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            net = ipaddress.ip_network(network)
        elif isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            net = network
        else:
            raise TypeError(f"not an IP network: {network!r}")
        prefix = net.prefixlen
        if net.version == 6 and prefix >= 96 and net.network_address.ipv4_mapped is not None:
            net = ipaddress.IPv4Network((net.network_address.ipv4_mapped, prefix - 96))
            prefix = net.prefixlen
        raw = net.network_address.packed
        memcpy(packed, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
        if net.version == 4:
            self._insert(packed, 4, prefix)
        else:
            self._insert(packed, 16, prefix)
        self.networks.append(str(net))

    cdef uint32_t _node(self) except 0:
        cdef TrieNode* grown
        cdef uint32_t capacity
        if self.used == self.capacity:
            if self.capacity >= 0x40000000:
                raise MemoryError("IpSet is full")
            capacity = self.capacity * 2
            grown = _aligned(capacity)
            memcpy(grown, self.nodes, self.used * sizeof(TrieNode))
            free(self.nodes)
            self.nodes = grown
            self.capacity = capacity
        memset(&self.nodes[self.used], 0, sizeof(TrieNode))
        self.used += 1
        return self.used - 1

    cdef int _insert(self, const unsigned char* addr, int size, int prefix) except -1:
        cdef uint32_t node = ROOT4 if size == 4 else ROOT6
        cdef uint32_t nxt
        cdef int i, last, rest, first, nib
        if prefix == 0:
            if size == 4:
                self.all4 = True
            else:
                self.all6 = True
            return 0
        last = (prefix - 1) >> 2           # the level holding the prefix's last bit
        for i in range(last):
            nib = _nibble(addr, i)
            nxt = self.nodes[node].child[nib]
            if nxt == TERM:
                return 0  # inside a network already in the set
            if nxt == 0:
                nxt = self._node()  # may move self.nodes: index again below
                self.nodes[node].child[nib] = nxt
            node = nxt
        # the prefix fixes the top `prefix - 4 * last` bits of this level: mark every slot
        # they cover (a subtree this replaces stays allocated but unreachable)
        rest = 4 - (prefix - 4 * last)
        first = (_nibble(addr, last) >> rest) << rest
        for i in range(first, first + (1 << rest)):
            self.nodes[node].child[i] = TERM
        return 0

    cdef bint has_packed(self, const unsigned char* addr, int size) noexcept nogil:
        """`addr` is 4 or 16 bytes in network order."""
        cdef const TrieNode* nodes = self.nodes
        cdef uint32_t node
        cdef int i, levels
        if size == 16 and _mapped(addr):
            addr += 12
            size = 4
        if size == 4:
            if self.all4:
                return True
            node = ROOT4
            levels = 8
        else:
            if self.all6:
                return True
            node = ROOT6
            levels = 32
        for i in range(levels):
            node = nodes[node].child[_nibble(addr, i)]
            if node == TERM:
                return True
            if node == 0:
                return False
        return False

    cdef bint has(self, const char* text, Py_ssize_t n) noexcept nogil:
        """Whether the textual address `text[:n]` is in the set; False for anything else."""
        cdef char buf[64]
        cdef unsigned char packed[16]
        cdef Py_ssize_t i
        cdef bint v6 = False
        if n <= 0 or n > MAX_TEXT:
            return False
        for i in range(n):
            if text[i] == b':':
                v6 = True
            elif text[i] == 0:
                return False
        memcpy(buf, text, n)
        buf[n] = 0
        if v6:
            if inet_pton(AF_INET6, buf, packed) != 1:
                return False
            return self.has_packed(packed, 16)
        if inet_pton(AF_INET, buf, packed) != 1:
            return False
        return self.has_packed(packed, 4)

    cdef bint has_bytes(self, bytes address) noexcept:
        if address is None:
            return False
        return self.has(PyBytes_AS_STRING(address), PyBytes_GET_SIZE(address))

    cpdef bint contains(self, object address):
        """Whether textual `address` (str or bytes) is in any network of the set."""
        if isinstance(address, bytes):
            return self.has_bytes(<bytes>address)
        if isinstance(address, str):
            try:
                encoded = (<str>address).encode("ascii")
            except UnicodeEncodeError:
                return False
            return self.has_bytes(encoded)
        return False

    def count(self, addresses, int rounds=1):
        """How many of `addresses` (a list of bytes) are in the set, `rounds` times over: the
        lookups run in one C loop (benchmarks measure a lookup without the Python call)."""
        cdef list items = list(addresses)
        cdef Py_ssize_t i, k = len(items)
        cdef long long hits = 0
        cdef int r
        for item in items:
            if not isinstance(item, bytes):
                raise TypeError("count() takes bytes addresses")
        for r in range(rounds):
            for i in range(k):
                hits += self.has_bytes(<bytes>items[i])
        return hits

    def __contains__(self, address):
        return self.contains(address)

    def __len__(self):
        return len(self.networks)

    def __bool__(self):
        return bool(self.networks)

    def __iter__(self):
        return iter(self.networks)

    @property
    def node_count(self):
        """Trie nodes in use (64 bytes each)."""
        return self.used

    def __repr__(self):
        shown = ", ".join(self.networks[:4]) + (", ..." if len(self.networks) > 4 else "")
        return f"IpSet([{shown}]) ({len(self.networks)} networks)"
