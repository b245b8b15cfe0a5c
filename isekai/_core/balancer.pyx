# cython: language_level=3, boundscheck=False, wraparound=False
"""Balancers: which target of a cluster an exchange goes to.

Strategy. A balancer sees its cluster's `Target`s and reads only C fields on a pick:
`selectable` (kept by the cluster from health, ejection and the breaker), `weight`,
`in_flight`, `ewma`. `choose(exchange, avoid)` returns a selectable target — preferring one other
than `avoid` (the target a retried exchange just failed on) — or None when none is selectable
(the cluster answers 503). Nothing here allocates per pick; draws use `fastrand`.

Derived tables (prefix sums of the weights, the hash ring, the Maglev table) are built once in
`rebuild`, from the weights and addresses; `selectable` changes never rebuild anything — a pick
steps over unselectable targets instead. Balancers keep target *positions* in their own list
(never `Target.index`, which the newest balancer built over a target owns).

- `RoundRobin`: smooth weighted round robin (3:1 gives a a b a); equal weights rotate.
- `LeastConn`: lowest in_flight/weight (compared by cross-multiplication); ties — all of them
  when idle — are shared by smooth weighted round robin among the tied targets.
- `Random`: a draw in proportion to weight (prefix sums + binary search; uniform index when the
  weights are equal). A draw that lands on an unselectable target or `avoid` is redrawn a few
  times, then an exact linear draw over the eligible targets takes over.
- `PowerOfTwo`: two distinct targets drawn as `Random` does (the second from the weights without
  the first), the lower in_flight/weight wins, ties to the first draw — so idle traffic splits
  exactly in proportion to weight and load evens out in proportion to weight.
- `Ewma`: as `PowerOfTwo` on cost = ewma * (in_flight + 1) / weight; a target without a sample
  is costed at the mean EWMA of those with one (refreshed every MEAN_EVERY picks), so it gets
  tried as an average target would be.
- `ConsistentHash`: the exchange's key (`Exchange.hash_key`) hashed with `hash64` (FNV-1a with a
  murmur-style finaliser: stable across processes, unlike Python's salted `hash()`). "ring": a
  ketama-like ring of RING_POINTS_PER_WEIGHT points per unit of weight per target, placed by
  hashing the target's address (so positions do not depend on list order), sorted, searched by
  bisection; a key whose target is unselectable walks on to the next selectable point. "maglev":
  a MAGLEV_SIZE (prime) lookup table filled by per-target permutations of the table, a target
  claiming slots in proportion to its weight; an unselectable target's key is re-hashed
  MAGLEV_RETRIES times, then goes to the next selectable target in list order. No key (or no
  exchange): a weighted random draw.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, uint64_t

from isekai._core.fastrand cimport next_below, next_random
from isekai._core.target cimport Target
from isekai._core.upstream cimport HASH_CLIENT_IP, HASH_COOKIE, HASH_HEADER, HASH_PATH, Exchange

from posix.unistd cimport getpid


cdef extern from "Python.h":
    ctypedef struct PyListObject:
        PyObject** ob_item

cdef uint64_t GOLDEN = <uint64_t>0x9E3779B97F4A7C15ULL
cdef uint64_t _seed_counter = GOLDEN

cdef uint64_t FNV_OFFSET = <uint64_t>0xCBF29CE484222325ULL
cdef uint64_t FNV_PRIME = <uint64_t>0x100000001B3ULL

# A draw that lands on an unselectable target (or `avoid`) is redrawn this many times before an
# exact linear draw over the eligible targets.
cdef int DRAW_TRIES = 4
# Ewma: picks between two computations of the mean EWMA that an untried target is costed at.
cdef unsigned int MEAN_EVERY = 64
# Ewma: the EWMA assumed (seconds) when no target has a sample yet (costs are only compared).
cdef double DEFAULT_EWMA = 0.001

RING_POINTS_PER_WEIGHT = 160
MAX_RING_POINTS = 131072               # the ring's size is capped: weights scale down beyond it
MAGLEV_SIZE = 65537                    # prime; more entries per target = a finer weight split
MAGLEV_RETRIES = 4
cdef Py_ssize_t _RING_PER_WEIGHT = RING_POINTS_PER_WEIGHT
cdef Py_ssize_t _RING_MAX = MAX_RING_POINTS
cdef uint64_t _MAGLEV_SIZE = MAGLEV_SIZE
cdef int _MAGLEV_RETRIES = MAGLEV_RETRIES

ALGORITHMS = ("ring", "maglev")
# `hash_on` kinds -> `Exchange.hash_key` sources (HashSource of upstream.pxd)
HASH_SOURCES = {
    "client_ip": HASH_CLIENT_IP,
    "header": HASH_HEADER,
    "cookie": HASH_COOKIE,
    "path": HASH_PATH,
}


cdef uint64_t _seed() noexcept:
    global _seed_counter
    _seed_counter += GOLDEN
    cdef uint64_t x = _seed_counter ^ (<uint64_t>getpid() << 32)
    return x if x != 0 else 1


# -- hashing ------------------------------------------------------------------------------------

cdef inline uint64_t mix64(uint64_t h) noexcept nogil:
    """A 64-bit avalanche finaliser (xor-shift-multiply)."""
    h ^= h >> 33
    h *= <uint64_t>0xFF51AFD7ED558CCDULL
    h ^= h >> 33
    h *= <uint64_t>0xC4CEB9FE1A85EC53ULL
    h ^= h >> 33
    return h


cdef inline uint64_t hash64(const unsigned char* data, Py_ssize_t size, uint64_t seed) noexcept nogil:
    """FNV-1a over `data`, started from a seed-dependent basis, then `mix64`: the same value in
    every process and on every run."""
    cdef uint64_t h = FNV_OFFSET ^ mix64(seed)
    cdef Py_ssize_t i
    for i in range(size):
        h ^= data[i]
        h *= FNV_PRIME
    return mix64(h ^ <uint64_t>size)


cdef inline uint64_t hash_of(bytes data, uint64_t seed) noexcept:
    return hash64(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), seed)


def hash_bytes(bytes data not None, uint64_t seed=0):
    """The 64-bit hash consistent hashing uses (stable across processes)."""
    return hash_of(data, seed)


# The loops over targets read them as borrowed pointers (`_items`): `(<Target>p).field` costs no
# reference counting; only the target returned is a new reference.
cdef inline PyObject** _items(list targets) noexcept:
    return (<PyListObject*>targets).ob_item


cdef inline bint _eligible(PyObject* p, PyObject* avoid) noexcept:
    return (<Target>p).selectable and p != avoid


cdef inline Target _fallback(Target avoid):
    """What a pick returns when no target other than `avoid` is selectable."""
    if avoid is not None and avoid.selectable:
        return avoid
    return None


# -- base ---------------------------------------------------------------------------------------

cdef class Balancer:
    """Picks the target an exchange goes to. Subclasses implement `choose`."""

    def __init__(self, list targets, **options):
        cdef Target target
        cdef Py_ssize_t i
        if not targets:
            raise ValueError("a balancer needs at least one target")
        self.targets = list(targets)  # its own list: `n` and the C tables follow this one
        self.n = len(self.targets)
        for i in range(self.n):
            target = self.targets[i]
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

    def pick_loop(self, list exchanges, Py_ssize_t count, Py_ssize_t hold=0):
        """`count` picks in one C loop, cycling through `exchanges` (None items allowed), for
        benchmarks. With `hold` > 0 each picked target's in_flight is raised until `hold` later
        picks have been made (load for least_conn / p2c / ewma), then lowered again. Returns the
        number of picks that found no target."""
        cdef Py_ssize_t i, slot = 0, e = 0, ne = len(exchanges), misses = 0
        cdef Target target, old
        cdef object item
        cdef list held = [None] * hold if hold > 0 else None
        if ne == 0:
            raise ValueError("pick_loop needs at least one exchange (or None)")
        for item in exchanges:
            if item is not None and not isinstance(item, Exchange):
                raise TypeError(f"not an exchange: {item!r}")
        for i in range(count):
            item = exchanges[e]
            e += 1
            if e == ne:
                e = 0
            target = self.choose(<Exchange>item, None)
            if target is None:
                misses += 1
            elif hold > 0:
                target.in_flight += 1
                item = held[slot]
                if item is not None:
                    old = <Target>item
                    old.in_flight -= 1
                held[slot] = target
                slot += 1
                if slot == hold:
                    slot = 0
        if held is not None:
            for item in held:
                if item is not None:
                    (<Target>item).in_flight -= 1
        return misses


# -- round robin --------------------------------------------------------------------------------

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
            self.current = NULL
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
        cdef PyObject** items = _items(self.targets)
        cdef PyObject* p
        cdef PyObject* skip = <PyObject*>avoid
        cdef Py_ssize_t i, at, best = -1
        cdef long long total = 0
        cdef long long* current = self.current
        if self.equal:
            for i in range(self.n):
                at = self.next_index + i
                if at >= self.n:
                    at -= self.n
                p = items[at]
                if _eligible(p, skip):
                    self.next_index = at + 1 if at + 1 < self.n else 0
                    return <Target>p
            return _fallback(avoid)
        for i in range(self.n):
            p = items[i]
            if not _eligible(p, skip):
                continue
            current[i] += (<Target>p).weight
            total += (<Target>p).weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return _fallback(avoid)
        current[best] -= total
        return <Target>items[best]


# -- least connections --------------------------------------------------------------------------

cdef class LeastConn(Balancer):
    """The selectable target with the fewest exchanges in flight per unit of weight; ties (all
    targets, when idle) are shared by smooth weighted round robin among the tied targets."""

    def __dealloc__(self):
        if self.current != NULL:
            PyMem_Free(self.current)

    cdef int rebuild(self) except -1:
        cdef Py_ssize_t i
        if self.current != NULL:
            PyMem_Free(self.current)
            self.current = NULL
        self.current = <long long*>PyMem_Malloc(max(self.n, 1) * sizeof(long long))
        if self.current == NULL:
            raise MemoryError()
        for i in range(self.n):
            self.current[i] = 0
        return 0

    cpdef Target choose(self, Exchange exchange, Target avoid):
        cdef PyObject** items = _items(self.targets)
        cdef PyObject* p
        cdef PyObject* skip = <PyObject*>avoid
        cdef Py_ssize_t i, ties = 0, chosen = -1, best = -1
        cdef long long lhs, rhs, total = 0, best_load = 0, best_weight = 1
        cdef long long* current = self.current
        for i in range(self.n):
            p = items[i]
            if not _eligible(p, skip):
                continue
            lhs = <long long>(<Target>p).in_flight * best_weight
            rhs = best_load * (<Target>p).weight
            if best < 0 or lhs < rhs:
                best = i
                best_load = (<Target>p).in_flight
                best_weight = (<Target>p).weight
                ties = 1
            elif lhs == rhs:
                ties += 1
        if best < 0:
            return _fallback(avoid)
        if ties == 1:
            return <Target>items[best]
        for i in range(best, self.n):
            p = items[i]
            if not _eligible(p, skip):
                continue
            if <long long>(<Target>p).in_flight * best_weight != best_load * (<Target>p).weight:
                continue
            current[i] += (<Target>p).weight
            total += (<Target>p).weight
            if chosen < 0 or current[i] > current[chosen]:
                chosen = i
        current[chosen] -= total
        return <Target>items[chosen]


# -- weighted draws: random, power of two choices, ewma -----------------------------------------

cdef class WeightedDraw(Balancer):

    def __dealloc__(self):
        if self.cumulative != NULL:
            PyMem_Free(self.cumulative)

    cdef int rebuild(self) except -1:
        cdef Py_ssize_t i
        cdef Target target
        if self.cumulative != NULL:
            PyMem_Free(self.cumulative)
            self.cumulative = NULL
        self.cumulative = <long long*>PyMem_Malloc(max(self.n, 1) * sizeof(long long))
        if self.cumulative == NULL:
            raise MemoryError()
        self.total = 0
        self.equal = True
        for i in range(self.n):
            target = <Target>self.targets[i]
            self.total += target.weight
            self.cumulative[i] = self.total
            if target.weight != (<Target>self.targets[0]).weight:
                self.equal = False
        if self.total >= (<long long>1 << 31):
            raise ValueError("the targets' weights add up to too much")
        return 0

    cdef Py_ssize_t draw_index(self, Py_ssize_t exclude) noexcept:
        """A position drawn in proportion to the weights, never `exclude` (-1: none); n > 1
        when `exclude` is given."""
        cdef long long r, w
        cdef Py_ssize_t i, lo, hi, mid
        cdef long long* cumulative = self.cumulative
        if self.equal:
            if exclude < 0:
                return next_below(&self.rng, self.n)
            i = next_below(&self.rng, self.n - 1)
            return i + 1 if i >= exclude else i
        if exclude < 0:
            r = next_below(&self.rng, <Py_ssize_t>self.total)
        else:
            w = cumulative[exclude] - (cumulative[exclude - 1] if exclude > 0 else 0)
            r = next_below(&self.rng, <Py_ssize_t>(self.total - w))
            if r >= cumulative[exclude] - w:
                r += w
        # the first position whose cumulative weight exceeds r
        lo = 0
        hi = self.n - 1
        while lo < hi:
            mid = (lo + hi) >> 1
            if cumulative[mid] > r:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef Py_ssize_t draw(self, Target avoid, Py_ssize_t exclude) noexcept:
        cdef PyObject** items = _items(self.targets)
        cdef PyObject* skip = <PyObject*>avoid
        cdef Py_ssize_t i
        cdef int tries
        if exclude >= 0 and self.n == 1:
            return -1
        for tries in range(DRAW_TRIES):
            i = self.draw_index(exclude)
            if _eligible(items[i], skip):
                return i
        return self.draw_scan(avoid, exclude)

    cdef Py_ssize_t draw_scan(self, Target avoid, Py_ssize_t exclude) noexcept:
        """An exact weighted draw over the eligible targets, in two linear passes."""
        cdef PyObject** items = _items(self.targets)
        cdef PyObject* skip = <PyObject*>avoid
        cdef Py_ssize_t i
        cdef long long total = 0, r
        for i in range(self.n):
            if i != exclude and _eligible(items[i], skip):
                total += (<Target>items[i]).weight
        if total == 0:
            return -1
        r = next_below(&self.rng, <Py_ssize_t>total)
        for i in range(self.n):
            if i != exclude and _eligible(items[i], skip):
                if r < (<Target>items[i]).weight:
                    return i
                r -= (<Target>items[i]).weight
        return -1


cdef class Random(WeightedDraw):
    """A selectable target drawn in proportion to its weight."""

    cpdef Target choose(self, Exchange exchange, Target avoid):
        cdef Py_ssize_t i = self.draw(avoid, -1)
        if i < 0:
            return _fallback(avoid)
        return <Target>_items(self.targets)[i]


cdef class PowerOfTwo(WeightedDraw):
    """Power of two choices: of two distinct targets drawn in proportion to weight, the one
    with fewer exchanges in flight per unit of weight (ties: the first drawn)."""

    cpdef Target choose(self, Exchange exchange, Target avoid):
        cdef PyObject** items
        cdef PyObject* a
        cdef PyObject* b
        cdef Py_ssize_t i = self.draw(avoid, -1), j
        if i < 0:
            return _fallback(avoid)
        j = self.draw(avoid, i)
        items = _items(self.targets)
        a = items[i]
        if j < 0:
            return <Target>a
        b = items[j]
        if (<long long>(<Target>b).in_flight * (<Target>a).weight
                < <long long>(<Target>a).in_flight * (<Target>b).weight):
            return <Target>b
        return <Target>a


cdef class Ewma(WeightedDraw):
    """Power of two choices on latency: cost = EWMA of the time to the response head, times
    (in_flight + 1), divided by weight. A target with no sample yet costs the mean EWMA of the
    targets that have one."""

    def __init__(self, list targets, **options):
        self.since_mean = MEAN_EVERY
        Balancer.__init__(self, targets, **options)

    cdef double cost(self, PyObject* target) noexcept:
        cdef double e = (<Target>target).ewma
        cdef double total = 0
        cdef Py_ssize_t i, known = 0
        cdef PyObject** items
        if e <= 0:
            if self.since_mean >= MEAN_EVERY:
                items = _items(self.targets)
                for i in range(self.n):
                    if (<Target>items[i]).ewma > 0:
                        total += (<Target>items[i]).ewma
                        known += 1
                self.known_mean = total / known if known else DEFAULT_EWMA
                self.since_mean = 0
            e = self.known_mean
        return e * ((<Target>target).in_flight + 1) / (<Target>target).weight

    cpdef Target choose(self, Exchange exchange, Target avoid):
        cdef PyObject** items
        cdef PyObject* a
        cdef PyObject* b
        cdef Py_ssize_t i = self.draw(avoid, -1), j
        self.since_mean += 1
        if i < 0:
            return _fallback(avoid)
        j = self.draw(avoid, i)
        items = _items(self.targets)
        a = items[i]
        if j < 0:
            return <Target>a
        b = items[j]
        if self.cost(b) < self.cost(a):
            return <Target>b
        return <Target>a


# -- consistent hashing -------------------------------------------------------------------------

cdef int _sort_ring(RingPoint* ring, Py_ssize_t count) except -1:
    """Sort by hash: an LSD radix sort, 8 passes of 8 bits. Stable, so points of equal hash
    stay in position order (they were made in that order)."""
    cdef RingPoint* tmp = <RingPoint*>PyMem_Malloc(max(count, 1) * sizeof(RingPoint))
    cdef RingPoint* src = ring
    cdef RingPoint* dst = tmp
    cdef RingPoint* swap
    cdef Py_ssize_t[256] starts
    cdef Py_ssize_t i, at, c
    cdef int shift, b
    if tmp == NULL:
        raise MemoryError()
    for shift in range(0, 64, 8):
        for b in range(256):
            starts[b] = 0
        for i in range(count):
            starts[(src[i].hash >> shift) & 0xFF] += 1
        at = 0
        for b in range(256):
            c = starts[b]
            starts[b] = at
            at += c
        for i in range(count):
            b = (src[i].hash >> shift) & 0xFF
            dst[starts[b]] = src[i]
            starts[b] += 1
        swap = src
        src = dst
        dst = swap
    PyMem_Free(tmp)  # an even number of passes: the sorted points are back in `ring`
    return 0


cdef inline Py_ssize_t _reduce(uint64_t h, uint64_t size) noexcept nogil:
    """h mapped onto [0, size) by multiply-shift (size < 2**32)."""
    return <Py_ssize_t>(((h >> 32) * size) >> 32)


cdef class ConsistentHash(WeightedDraw):
    """The same key goes to the same target; when a target leaves, only its keys move."""

    def __init__(self, list targets, int hash_source=HASH_CLIENT_IP, hash_name=b"",
                 str algorithm="ring", **options):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {algorithm!r} (ring or maglev)")
        if hash_source < HASH_CLIENT_IP or hash_source > HASH_PATH:
            raise ValueError(f"unknown hash source {hash_source}")
        if isinstance(hash_name, str):
            hash_name = hash_name.encode("ascii")
        if not isinstance(hash_name, bytes):
            raise TypeError("hash_name is bytes")
        self.hash_source = hash_source
        self.hash_name = hash_name.lower() if hash_source == HASH_HEADER else hash_name
        self.algorithm = algorithm
        self.maglev = algorithm == "maglev"
        Balancer.__init__(self, targets, **options)

    def __dealloc__(self):
        if self.ring != NULL:
            PyMem_Free(self.ring)
        if self.table != NULL:
            PyMem_Free(self.table)

    @property
    def size(self):
        """Points on the ring ("ring"), entries in the table ("maglev")."""
        return _MAGLEV_SIZE if self.maglev else self.points

    cdef int rebuild(self) except -1:
        WeightedDraw.rebuild(self)
        if self.maglev:
            return self.build_table()
        return self.build_ring()

    cdef int build_ring(self) except -1:
        cdef Py_ssize_t i, j, count, total = 0, at = 0
        cdef double scale = 1.0
        cdef Target target
        cdef bytes address
        cdef RingPoint* ring
        if self.total * _RING_PER_WEIGHT > _RING_MAX:
            scale = <double>_RING_MAX / (self.total * _RING_PER_WEIGHT)
        counts = []
        for i in range(self.n):
            target = <Target>self.targets[i]
            count = max(1, <Py_ssize_t>(target.weight * _RING_PER_WEIGHT * scale))
            counts.append(count)
            total += count
        ring = <RingPoint*>PyMem_Malloc(total * sizeof(RingPoint))
        if ring == NULL:
            raise MemoryError()
        for i in range(self.n):
            target = <Target>self.targets[i]
            address = target.address.encode("utf-8")
            count = counts[i]
            for j in range(count):
                ring[at].hash = hash_of(address, <uint64_t>(j + 1))
                ring[at].position = i
                at += 1
        try:
            _sort_ring(ring, total)
        except BaseException:
            PyMem_Free(ring)
            raise
        if self.ring != NULL:
            PyMem_Free(self.ring)
        self.ring = ring
        self.points = total
        return 0

    cdef int build_table(self) except -1:
        """Maglev: each target walks its own permutation of the table (offset and skip from
        its address) and claims the next free entry when its turn comes; a target gets a turn
        in proportion to its weight (credit += weight per round, a claim costs the largest
        weight). Targets take turns in address order, so the table depends on the set of
        (address, weight), not on the list order."""
        cdef uint64_t size = _MAGLEV_SIZE
        cdef Py_ssize_t i, k, p, filled = 0, slot
        cdef long long max_weight = 0
        cdef Target target
        cdef bytes address
        cdef int32_t* table
        cdef uint64_t* offset
        cdef uint64_t* skip
        cdef uint64_t* step
        cdef long long* credit
        cdef Py_ssize_t* order
        if <uint64_t>self.n > size:
            raise ValueError(f"maglev takes at most {size} targets")
        table = <int32_t*>PyMem_Malloc(size * sizeof(int32_t))
        offset = <uint64_t*>PyMem_Malloc(self.n * sizeof(uint64_t))
        skip = <uint64_t*>PyMem_Malloc(self.n * sizeof(uint64_t))
        step = <uint64_t*>PyMem_Malloc(self.n * sizeof(uint64_t))
        credit = <long long*>PyMem_Malloc(self.n * sizeof(long long))
        order = <Py_ssize_t*>PyMem_Malloc(self.n * sizeof(Py_ssize_t))
        try:
            if (table == NULL or offset == NULL or skip == NULL or step == NULL
                    or credit == NULL or order == NULL):
                raise MemoryError()
            by_address = sorted([((<Target>self.targets[p]).address, p) for p in range(self.n)])
            for k in range(self.n):
                p = by_address[k][1]
                order[k] = p
                target = <Target>self.targets[p]
                address = target.address.encode("utf-8")
                # slot j of its permutation is (offset + j * skip) % size; `step` holds the
                # next one, advanced by adding skip (mod size)
                offset[k] = hash_of(address, <uint64_t>0x6D61676C) % size
                skip[k] = hash_of(address, <uint64_t>0x736B6970) % (size - 1) + 1
                step[k] = offset[k]
                credit[k] = 0
                if target.weight > max_weight:
                    max_weight = target.weight
            for i in range(<Py_ssize_t>size):
                table[i] = -1
            while filled < <Py_ssize_t>size:
                for k in range(self.n):
                    credit[k] += (<Target>self.targets[order[k]]).weight
                    if credit[k] < max_weight:
                        continue
                    credit[k] -= max_weight
                    while True:
                        slot = <Py_ssize_t>step[k]
                        step[k] += skip[k]
                        if step[k] >= size:
                            step[k] -= size
                        if table[slot] < 0:
                            break
                    table[slot] = <int32_t>order[k]
                    filled += 1
                    if filled == <Py_ssize_t>size:
                        break
        except BaseException:
            PyMem_Free(table)
            raise
        finally:
            PyMem_Free(offset)
            PyMem_Free(skip)
            PyMem_Free(step)
            PyMem_Free(credit)
            PyMem_Free(order)
        if self.table != NULL:
            PyMem_Free(self.table)
        self.table = table
        return 0

    cpdef Target choose(self, Exchange exchange, Target avoid):
        cdef bytes key
        cdef Py_ssize_t i
        cdef uint64_t h
        if exchange is None:
            key = None
        else:
            key = exchange.hash_key(self.hash_source, self.hash_name)
        if key is None:
            i = self.draw(avoid, -1)
            return _fallback(avoid) if i < 0 else <Target>_items(self.targets)[i]
        h = hash64(<const unsigned char*>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), 0)
        if self.maglev:
            return self.by_table(h, avoid)
        return self.by_ring(h, avoid)

    cdef Target by_ring(self, uint64_t h, Target avoid):
        cdef RingPoint* ring = self.ring
        cdef PyObject** items = _items(self.targets)
        cdef PyObject* skip = <PyObject*>avoid
        cdef PyObject* p
        cdef Py_ssize_t lo = 0, hi = self.points, mid, k, at
        while lo < hi:
            mid = (lo + hi) >> 1
            if ring[mid].hash < h:
                lo = mid + 1
            else:
                hi = mid
        at = lo if lo < self.points else 0
        for k in range(self.points):
            p = items[ring[at].position]
            if _eligible(p, skip):
                return <Target>p
            at += 1
            if at == self.points:
                at = 0
        return _fallback(avoid)

    cdef Target by_table(self, uint64_t h, Target avoid):
        cdef int32_t* table = self.table
        cdef PyObject** items = _items(self.targets)
        cdef PyObject* skip = <PyObject*>avoid
        cdef PyObject* p
        cdef Py_ssize_t first = table[_reduce(h, _MAGLEV_SIZE)], at
        cdef int i
        p = items[first]
        if _eligible(p, skip):
            return <Target>p
        for i in range(1, _MAGLEV_RETRIES + 1):
            p = items[table[_reduce(mix64(h + <uint64_t>i * GOLDEN), _MAGLEV_SIZE)]]
            if _eligible(p, skip):
                return <Target>p
        at = first
        for i in range(self.n):
            at += 1
            if at == self.n:
                at = 0
            if _eligible(items[at], skip):
                return <Target>items[at]
        return _fallback(avoid)

    def owner(self, bytes key not None):
        """The target `key` maps to when every target is selectable (tests, debugging)."""
        cdef uint64_t h = hash_of(key, 0)
        cdef Py_ssize_t lo = 0, hi = self.points, mid
        if self.maglev:
            return self.targets[self.table[_reduce(h, _MAGLEV_SIZE)]]
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.ring[mid].hash < h:
                lo = mid + 1
            else:
                hi = mid
        return self.targets[self.ring[lo if lo < self.points else 0].position]


cdef class KeyedExchange(Exchange):

    def __init__(self, key=None):
        self.key = key

    cdef bytes hash_key(self, int source, bytes name):
        return self.key
