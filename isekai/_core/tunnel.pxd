cdef class Tunnel:
    """Two transports joined after a 101: bytes flow both ways untouched."""
    cdef object client
    cdef object upstream
    cdef set registry
    cdef public double last_activity
    cdef public double idle_timeout
    cdef public long long bytes_up
    cdef public long long bytes_down
    cdef bint client_paused
    cdef bint upstream_paused
    cdef public bint closed

    cdef int from_client(self, data) except -1
    cdef int from_upstream(self, data) except -1
    cdef int client_write_paused(self, bint paused) except -1
    cdef int upstream_write_paused(self, bint paused) except -1
    cdef int close(self) except -1
