from isekai._core.tunnel cimport Tunnel


cdef class Pool


# Why an exchange got no (complete) upstream response; FAILURE_STATUS maps each to its answer.
cdef enum UpstreamFailure:
    FAIL_CONNECT = 0       # refused, reset or closed before a response began
    FAIL_TIMEOUT = 1       # connect or read deadline passed
    FAIL_PROTOCOL = 2      # malformed response, or closed in the middle of one
    FAIL_UNAVAILABLE = 3   # no target to use: none healthy, breaker open, pool wait timed out
    N_FAILURES = 4

cdef int failure_status(int kind) noexcept

# What a consistent-hash balancer hashes (`Exchange.hash_key`).
cdef enum HashSource:
    HASH_CLIENT_IP = 0
    HASH_HEADER = 1
    HASH_COOKIE = 2
    HASH_PATH = 3


cdef class Exchange:
    """One request's side of an upstream exchange; the downstream protocol subclasses it."""
    cdef public bint cancelled
    cdef bint is_head
    cdef double read_timeout
    cdef Pool waiting          # the pool whose wait queue holds this exchange, if any
    cdef double wait_deadline  # when a wait for a pool slot ends in FAIL_UNAVAILABLE

    cdef int cancel(self) except -1
    cdef int upstream_ready(self, UpstreamProtocol conn) except -1
    cdef int upstream_failed(self, int kind, str reason) except -1
    cdef int internal_error(self, object exc) except -1
    cdef int response_head(self, UpstreamProtocol conn) except -1
    cdef int response_body(self, bytes data) except -1
    cdef int response_complete(self, UpstreamProtocol conn) except -1
    cdef int upstream_write_paused(self, bint paused) except -1
    cdef int flush(self) except -1
    cdef bytes hash_key(self, int source, bytes name)


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
    cdef bint head_done      # a HEAD response's head arrived: complete after this read
    cdef bint stray          # bytes followed it in the same read
    cdef bint head_received
    cdef bint interim
    cdef bint eof_body
    cdef bint reading_paused
    cdef double connect_started
    cdef double idle_since
    cdef double deadline
    cdef public double received_at   # when the latest bytes of a response arrived
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
    cdef int _crash(self, Exchange ex, object exc) except -1
    cdef int _write_paused(self, bint paused) except -1
    cdef int _complete(self) except -1
    cdef bint _head_then_garbage(self, Exchange ex) except -1


cdef class Pool:
    cdef readonly str host
    cdef readonly int port
    cdef readonly bytes authority
    cdef public int max_connections
    cdef public int max_keepalive_connections
    cdef public double keepalive_expiry
    cdef public double connect_timeout
    cdef public double read_timeout
    cdef public double pool_timeout
    cdef object loop
    cdef list idle
    cdef set open
    cdef set connecting
    cdef object waiters
    cdef readonly int total
    cdef readonly long long connections_opened
    cdef readonly long long connect_failures   # connects refused, reset or timed out
    cdef readonly long long pool_timeouts      # exchanges that waited past pool_timeout
    cdef readonly bint last_connect_failed     # the latest connect attempt failed
    cdef bint closed

    cdef int acquire(self, Exchange exchange) except -1
    cdef int _park(self, Exchange exchange, double now) except -1
    cdef Exchange _unpark(self)
    cdef int leave(self, Exchange exchange) except -1
    cdef int release(self, UpstreamProtocol conn, bint reusable) except -1
    cdef int _connect(self, Exchange exchange) except -1
    cdef int _forget(self, UpstreamProtocol conn) except -1
    cdef int sweep(self, double now) except -1
