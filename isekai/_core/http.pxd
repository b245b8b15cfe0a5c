cdef double monotonic() noexcept nogil
cdef double wall_clock() noexcept nogil
cdef enum HeaderKind:
    H_OTHER = 0
    H_HOST
    H_CONTENT_LENGTH
    H_TRANSFER_ENCODING
    H_CONNECTION
    H_KEEP_ALIVE
    H_PROXY_CONNECTION
    H_TE
    H_TRAILER
    H_UPGRADE
    H_X_FORWARDED_FOR
    H_X_FORWARDED_PROTO
    H_X_FORWARDED_HOST
    H_X_REQUEST_ID
    H_EXPECT
    H_USER_AGENT

cdef enum ConnectionOption:
    CONNECTION_OTHER = 0
    CONNECTION_KEEP_ALIVE
    CONNECTION_CLOSE
    CONNECTION_UPGRADE

cdef int header_kind(bytes name) noexcept
cdef int connection_option(bytes value) noexcept
cdef bint kind_is_hop_by_hop(int kind) noexcept
cdef bytes status_line(int status)
cdef bytes join_bytes(list parts)
cdef bytes int_bytes(long long value)
cdef bytes next_request_id()
cdef set connection_tokens(bytes value)
cpdef bytes response_head(int status, object headers=*)
cdef bytes gateway_response(bytes head, bytes body, bytes request_id, bint close, bint head_only,
                            bint bodyless=*)
cdef bint status_has_no_body(int status) noexcept
cdef bytes error_body(str message, bytes request_id)
cdef bytes error_response(int status, str message, bytes request_id, bint close, bytes extra_headers=*, bint head=*)
cdef bytes chunk_frame(bytes data)
cdef bint valid_host(bytes host)
