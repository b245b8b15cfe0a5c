# cython: language_level=3, boundscheck=False, wraparound=False
"""W3C trace context (https://www.w3.org/TR/trace-context/) for the request path.

Strategy. Everything a request pays for when tracing is on is C: checking a `traceparent`
against the grammar, the sampling decision for a new trace, new trace and span ids, and the
`traceparent` line sent upstream are here; `protocol` keeps the two fields aside and calls them. Python (isekai/observability/tracing.py) is called only for sampled requests.

Grammar (strict; anything else is treated as absent): `version "-" trace-id "-" parent-id "-"
flags`, every field lower-case hex: version 2 digits and not `ff`, trace-id 32 digits not all
zero, parent-id 16 digits not all zero, flags 2 digits. Version `00` is exactly 55 characters;
a later version may carry more after a `-` at position 55 (it is then re-sent as version 00).

Sampling of a trace that starts here follows OpenTelemetry's TraceIdRatioBased: the lower 64
bits of the trace id are below `ratio * 2**64`, so every process (and every hop using the same
rule) decides the same for the same trace id.

Ids come from xoshiro256** seeded with os.urandom; the state is reseeded in every child after
fork (`os.register_at_fork`), so two workers never draw the same sequence. They are random, not
secret: nothing here is used for security.
"""

import os

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

cdef const char* HEX = b"0123456789abcdef"
cdef char PAIRS[512]  # byte -> its two hex digits
cdef int _b
for _b in range(256):
    PAIRS[2 * _b] = HEX[_b >> 4]
    PAIRS[2 * _b + 1] = HEX[_b & 15]
cdef uint64_t _s0, _s1, _s2, _s3   # xoshiro256** state


cdef inline uint64_t _rotl(uint64_t x, int k) noexcept nogil:
    return (x << k) | (x >> (64 - k))


cdef inline uint64_t _next() noexcept nogil:
    global _s0, _s1, _s2, _s3
    cdef uint64_t result = _rotl(_s1 * 5, 7) * 9
    cdef uint64_t t = _s1 << 17
    _s2 ^= _s0
    _s3 ^= _s1
    _s1 ^= _s2
    _s0 ^= _s3
    _s2 ^= t
    _s3 = _rotl(_s3, 45)
    return result


cdef inline uint64_t _splitmix(uint64_t* x) noexcept:
    x[0] += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = x[0]
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return z ^ (z >> 31)


def seed(bytes data=None):
    """Reseed the id generator (32 bytes; os.urandom when None). Done at import and, through
    os.register_at_fork, in every forked child."""
    global _s0, _s1, _s2, _s3
    if data is None:
        data = os.urandom(32)
    if len(data) != 32:
        raise ValueError("the seed is 32 bytes")
    cdef uint64_t words[4]
    cdef uint64_t x = 0
    memcpy(words, PyBytes_AS_STRING(data), 32)
    # spread through splitmix64 (xoshiro's authors' advice): any seed, zeros too, gives a
    # well-mixed state
    x ^= words[0]
    _s0 = _splitmix(&x)
    x ^= words[1]
    _s1 = _splitmix(&x)
    x ^= words[2]
    _s2 = _splitmix(&x)
    x ^= words[3]
    _s3 = _splitmix(&x)


seed()
os.register_at_fork(after_in_child=seed)


cdef inline void _hex16(char* out, uint64_t value) noexcept:
    """`value` as 16 hex digits, two at a time."""
    cdef int i
    for i in range(14, -2, -2):
        memcpy(out + i, PAIRS + 2 * (value & 255), 2)
        value >>= 8


cdef bytes new_trace_id(uint64_t* low):
    """32 lower-case hex digits, never all zero; `low` gets the lower 64 bits (for sampling)."""
    cdef uint64_t hi = _next(), lo = _next()
    if hi == 0 and lo == 0:
        lo = 1
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 32)
    cdef char* p = PyBytes_AS_STRING(out)
    _hex16(p, hi)
    _hex16(p + 16, lo)
    low[0] = lo
    return out


cdef inline uint64_t _span() noexcept:
    cdef uint64_t value = _next()
    return value if value != 0 else 1


cdef bytes new_span_id():
    """16 lower-case hex digits, never all zero."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 16)
    _hex16(PyBytes_AS_STRING(out), _span())
    return out


cdef bytes traceparent_line(bytes trace_id, bytes span_id, bint sampled):
    """b"traceparent: 00-<trace_id>-<span_id>-0x\\r\\n" in one allocation; a new span id when
    `span_id` is None."""
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 70)
    cdef char* p = PyBytes_AS_STRING(out)
    memcpy(p, b"traceparent: 00-", 16)
    memcpy(p + 16, PyBytes_AS_STRING(trace_id), 32)
    p[48] = 45  # "-"
    if span_id is None:
        _hex16(p + 49, _span())
    else:
        memcpy(p + 49, PyBytes_AS_STRING(span_id), 16)
    memcpy(p + 65, b"-0", 2)
    p[67] = 49 if sampled else 48  # "1" / "0"
    p[68] = 13
    p[69] = 10
    return out


cdef inline int _digit(char c) noexcept:
    """The value of a lower-case hex digit, or -1."""
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    return -1


cdef inline bint _hex_run(const char* p, int n) noexcept:
    """n lower-case hex digits, not all zero."""
    cdef int i
    cdef bint nonzero = False
    for i in range(n):
        if _digit(p[i]) < 0:
            return False
        if p[i] != 48:
            nonzero = True
    return nonzero


cdef int parse_traceparent(bytes value) noexcept:
    """The flags (0-255) of a valid `traceparent`, or -1 (see the grammar above)."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(value)
    cdef const char* p = PyBytes_AS_STRING(value)
    cdef int v1, v2, f1, f2
    if n < 55:
        return -1
    v1 = _digit(p[0])
    v2 = _digit(p[1])
    if v1 < 0 or v2 < 0 or (v1 == 15 and v2 == 15):
        return -1
    if v1 == 0 and v2 == 0:
        if n != 55:
            return -1
    elif n > 55 and p[55] != 45:
        return -1
    if p[2] != 45 or p[35] != 45 or p[52] != 45:
        return -1
    if not _hex_run(p + 3, 32) or not _hex_run(p + 36, 16):
        return -1
    f1 = _digit(p[53])
    f2 = _digit(p[54])
    if f1 < 0 or f2 < 0:
        return -1
    return f1 * 16 + f2


cdef uint64_t ratio_bound(double ratio) noexcept:
    """The bound of `ratio_sampled`: round(ratio * 2**64), with 1 (and above) as 2**64 - 1."""
    if ratio <= 0.0:
        return 0
    if ratio >= 1.0:
        return 0xFFFFFFFFFFFFFFFFULL
    cdef double scaled = ratio * 18446744073709551616.0 + 0.5
    if scaled >= 18446744073709551615.0:
        return 0xFFFFFFFFFFFFFFFFULL
    return <uint64_t>scaled


cdef bint ratio_sampled(uint64_t low, uint64_t bound) noexcept:
    """Whether a new trace is sampled: its id's lower 64 bits (`low`) are below `bound`
    (every id when the bound is 2**64 - 1, the bound of ratio 1)."""
    return low < bound or bound == 0xFFFFFFFFFFFFFFFFULL


# -- for tests and tools ------------------------------------------------------------------------

def parse(bytes value):
    """(version, trace_id, parent_id, flags) of a valid `traceparent`, or None."""
    cdef int flags = parse_traceparent(value)
    if flags < 0:
        return None
    return int(value[:2], 16), value[3:35], value[36:52], flags


def sampled(bytes trace_id, double ratio):
    """The sampling decision for a new trace with this id (32 lower-case hex digits)."""
    if parse_traceparent(b"00-" + trace_id + b"-0000000000000001-00") < 0:
        raise ValueError("not a trace id")
    return ratio_sampled(int(trace_id[16:], 16), ratio_bound(ratio))


def trace_id():
    """A new trace id (bytes, 32 hex digits)."""
    cdef uint64_t low
    return new_trace_id(&low)


def span_id():
    """A new span id (bytes, 16 hex digits)."""
    return new_span_id()


def header_line(bytes trace_id, bytes span_id, bint sampled):
    """The `traceparent` line (with CRLF) the gateway sends upstream (a new span id when
    `span_id` is None)."""
    if len(trace_id) != 32 or (span_id is not None and len(span_id) != 16):
        raise ValueError("a trace id is 32 hex digits, a span id 16")
    return traceparent_line(trace_id, span_id, sampled)
