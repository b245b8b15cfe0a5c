cdef double monotonic() noexcept nogil
cdef bytes reason_phrase(int status)
cdef bytes next_request_id()
cdef bint is_hop_by_hop(bytes lname)
cdef set connection_tokens(bytes value)
cdef bytes error_response(int status, str message, bytes request_id, bint close, bytes extra_headers=*)
cdef bytes chunk_frame(bytes data)
cdef bint valid_host(bytes host)
