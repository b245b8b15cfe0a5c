from isekai._core.tunnel cimport Tunnel


cdef enum UpstreamFailure:
    FAIL_CONNECT = 0
    FAIL_TIMEOUT = 1
    FAIL_PROTOCOL = 2


cdef class Exchange:
    """One request's side of an upstream exchange; the downstream protocol subclasses it."""
    cdef public bint cancelled
    cdef bint is_head
    cdef double read_timeout

    cdef int upstream_ready(self, UpstreamProtocol conn) except -1
    cdef int upstream_failed(self, int kind, str reason) except -1
    cdef int response_head(self, UpstreamProtocol conn) except -1
    cdef int response_body(self, bytes data) except -1
    cdef int response_complete(self, UpstreamProtocol conn) except -1
    cdef int upstream_write_paused(self, bint paused) except -1
    cdef int flush(self) except -1


cdef class UpstreamProtocol:
    cdef Pool pool
    cdef object transport
    cdef object parser
    cdef object connect_future
    cdef Exchange exchange
    cdef public Tunnel tunnel
    cdef bint connected
    cdef bint closed
    cdef bint parser_dirty
    cdef bint head_received
    cdef bint interim
    cdef bint eof_body
    cdef bint reading_paused
    cdef double connect_started
    cdef double idle_since
    cdef double deadline
    cdef public int status
    cdef public list headers
    cdef public bint chunked
    cdef public bint has_length
    cdef public bint keep_alive
    cdef public long long bytes_received
    cdef public bytes upgrade
    cdef public bint has_request_id
    cdef public set conn_tokens
    cdef int lengths
    cdef bytes encoding

    cdef int attach(self, Exchange exchange) except -1
    cdef int write(self, bytes data) except -1
    cdef int pause_reading(self) except -1
    cdef int resume_reading(self) except -1
    cdef int close(self) except -1
    cdef int _fail(self, int kind, str reason) except -1
    cdef int _complete(self) except -1


cdef class Pool:
    cdef readonly str host
    cdef readonly int port
    cdef readonly bytes authority
    cdef public int max_connections
    cdef public int max_keepalive_connections
    cdef public double keepalive_expiry
    cdef public double connect_timeout
    cdef public double read_timeout
    cdef object loop
    cdef list idle
    cdef set open
    cdef set connecting
    cdef object waiters
    cdef readonly int total
    cdef readonly long long connections_opened
    cdef bint closed

    cdef int acquire(self, Exchange exchange) except -1
    cdef int release(self, UpstreamProtocol conn, bint reusable) except -1
    cdef int _connect(self, Exchange exchange) except -1
    cdef int _forget(self, UpstreamProtocol conn) except -1
    cdef int sweep(self, double now) except -1


cdef class Cluster:
    cdef readonly str name
    cdef readonly list pools
    cdef Py_ssize_t next_index
    cdef Pool pick(self)
