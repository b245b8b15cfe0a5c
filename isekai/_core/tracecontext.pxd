from libc.stdint cimport uint64_t

cdef int parse_traceparent(bytes value) noexcept
cdef bint ratio_sampled(uint64_t low, uint64_t bound) noexcept
cdef uint64_t ratio_bound(double ratio) noexcept
cdef bytes new_trace_id(uint64_t* low)
cdef bytes new_span_id()
cdef bytes traceparent_line(bytes trace_id, bytes span_id, bint sampled)
