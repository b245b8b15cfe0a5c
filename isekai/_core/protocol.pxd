from libc.stdint cimport uint64_t

from isekai._core.counters cimport Counters
from isekai._core.iptrie cimport IpSet
from isekai._core.policy cimport CorePolicy, ResponseHead
from isekai._core.router cimport Router
from isekai._core.tunnel cimport Tunnel
from isekai._core.cluster cimport Cluster
from isekai._core.target cimport Target
from isekai._core.upstream cimport Exchange, Pool, UpstreamProtocol
from libc.stdint cimport uint64_t


cdef class CoreRoute:
    """What the router hands back: one route of one snapshot, compiled for the request path."""
    cdef public str name
    cdef public int slot
    cdef public Cluster cluster
    cdef public bint direct
    cdef public int respond_status
    cdef public bytes respond_head
    cdef public bytes respond_body
    cdef public tuple respond_headers   # (name, value) pairs of respond_head, for response policies
    cdef public bint preserve_host      # send the client's Host upstream
    cdef public bytes strip_prefix
    cdef public tuple rewrite
    cdef public double read_timeout
    cdef public long long max_body_size
    cdef public tuple chain
    cdef public bint websocket
    cdef public double body_idle_timeout
    cdef public double websocket_idle_timeout
    cdef public double access_sample    # share of this route's requests in the access log


cdef class CoreListener:
    """One listener of one snapshot: its policies run before every route's own."""
    cdef public str name
    cdef public tuple chain


cdef class ServerState:
    """Shared by every downstream connection of a worker; `router` is swapped on reload."""
    cdef public Router router
    cdef public Counters counters
    cdef public object loop
    cdef public long long max_request_line
    cdef public long long max_header_bytes
    cdef public int max_header_count
    cdef public double keepalive_timeout
    cdef public int max_requests_per_connection
    cdef public set connections
    cdef public bytes scheme
    cdef public double header_read_timeout
    cdef public double body_idle_timeout
    cdef public double websocket_idle_timeout
    cdef public int max_connections
    cdef public object on_capacity
    cdef public IpSet trusted_proxies    # peers whose X-Forwarded-For is believed
    cdef public set tunnels_open
    # one record per finished request (see `_log_record`) when either log is on, for both
    cdef public bint log_requests        # the request log (admin.request_logs) is on
    cdef public bint access_log          # the access log is on
    cdef public double access_sample     # access-log share of requests no route matched
    cdef public tuple log_headers        # lower-case names of the header values records carry
    cdef public list log_buffer
    cdef public int log_capacity
    cdef public long long log_dropped    # request-log records lost to a full buffer
    cdef public long long access_dropped # access-log records lost to a full buffer
    cdef public long long access_kept    # records buffered with `access` set, ever
    cdef uint64_t rng                    # xorshift64* state of the access-log sampling
    cdef public object run_async     # the slow path: run_async(req, policy, index, awaitable)
    cdef public tuple stripped       # lower-case request field names dropped from every request
    cdef ResponseHead head           # reused by every response phase (one at a time)
    # tracing (isekai/_core/tracecontext.pyx): on, the ratio's bound for new traces, and the
    # callable that makes the spans of a sampled request (isekai/observability/tracing.py)
    cdef readonly bint tracing
    cdef uint64_t trace_bound
    cdef public object on_span
    cdef bint full
    # load shedding (isekai/process/load_shedding.py): while on, every new request is answered
    # 503 + `shed_header` (a Retry-After field line) before routing; `shed` counts them
    cdef public bint shedding
    cdef public bytes shed_header
    cdef public long long shed


cdef class ProxyRequest(Exchange):
    cdef DownstreamProtocol proto
    cdef CoreRoute route
    cdef public bytes method
    cdef public bytes url
    cdef public bytes path
    cdef public bytes query
    cdef public list headers
    cdef public bytes host
    cdef public dict params
    cdef public bytes request_id
    cdef bytes xff
    cdef bytes user_agent
    cdef bytes upgrade
    cdef bint connection_upgrade
    cdef bint keepalive_token
    cdef bint wants_upgrade
    cdef bint tunneling
    cdef set conn_tokens
    cdef bint http11
    cdef bint keep_alive
    cdef bint chunked
    cdef bint has_length
    cdef bint expect_continue
    cdef bint head_complete
    cdef bint message_complete
    cdef bint started
    cdef bint response_started
    cdef bint head_sent
    cdef bint response_done
    cdef bint response_chunked
    cdef bint close_after
    cdef bint discarding
    cdef long long content_length
    cdef long long header_bytes
    cdef int header_count
    cdef list pending
    cdef long long pending_size
    cdef UpstreamProtocol conn
    cdef int status
    cdef long long bytes_in
    cdef long long bytes_out
    cdef double started_at
    cdef double upstream_at    # when the head went upstream (0: no upstream exchange yet)
    cdef list out
    # policies (isekai/_core/policy.pyx): the chain this request runs (listener's, then route's),
    # how far its request phase got, and whether policy `ran` answered it
    cdef tuple chain
    cdef Py_ssize_t ran
    cdef bint answered
    cdef bytes allow               # the path's methods, for a held 405
    cdef int no_route              # 404/405 held while policies run (a listener's, or a
                                   # preflight's routed by its requested method)
    cdef bint no_response_phase    # a response policy failed: the 500 goes out without them
    cdef object _ctx
    cdef public object task        # the slow-path Task while an async policy runs
    cdef bytes client_ip_cache
    # W3C trace context (observability): the trace this request belongs to (32 lower-case hex
    # digits) and this gateway's span in it (16 hex digits); None until known
    cdef public bytes trace_id
    cdef public bytes span_id
    # with tracing on: the incoming traceparent (b"" once seen twice: invalid) and tracestate;
    # whether spans are made; for the client span, its id (the parent-id sent upstream), when
    # the upstream exchange began, its pool, the upstream's status and failure (FAIL_* + 1)
    cdef bytes traceparent
    cdef bytes tracestate
    cdef bint sampled
    cdef bytes client_span_id
    cdef double client_at
    cdef Pool upstream_pool
    cdef int upstream_status
    cdef int upstream_failure
    # upstream resilience (isekai/_core/cluster.pyx): the cluster and target of the current
    # attempt (target None between attempts); whether that attempt was reported to the cluster
    # and its head sent; the attempt number; the target the last attempt failed on (a retry
    # avoids it); whether the request holds a slot of the retry budget; the body as sent so
    # far, kept for a replay while it fits `max_body` (replay_lost: it did not)
    cdef Cluster cluster
    cdef Target target
    cdef Target failed_target
    cdef bint reported
    cdef long long probe           # the half-open epoch when this attempt is a breaker probe
    cdef bint sent
    cdef int attempt
    cdef bint retrying
    cdef double first_try_at
    cdef object retry_timer
    cdef list replay
    cdef long long replay_size
    cdef bint replay_lost
    # a chain with a policy that reads the body (`CorePolicy.body_limit`): the most body bytes
    # it takes, whether the request phase waits for the rest of the body, and the body as
    # received (decoded from chunks), which `body` joins
    cdef long long body_wanted
    cdef bint waiting_body
    cdef list body_parts

    cdef bint can_answer(self)
    cdef int report_attempt(self, int outcome, int status) except -1
    cdef int release_target(self) except -1
    cdef bint retry(self, int outcome, int status) except -1
    cdef int finish_upstream(self) except -1
    # header access for policies: `lname` is a lower-case field name
    cdef bytes get_header(self, bytes lname)
    cdef bytes get_header_joined(self, bytes lname)
    cdef int put_header(self, bytes name, bytes value) except -1
    cdef int append_header(self, bytes name, bytes value) except -1
    cdef int drop_header(self, bytes lname) except -1
    cdef int move_header(self, bytes lname, bytes new_name) except -1
    # without the field check (the managed-field rule still holds): for names and values
    # validated when the policy was built
    cdef int put_valid_header(self, bytes name, bytes value) except -1
    cdef int append_valid_header(self, bytes name, bytes value) except -1
    cdef bytes client_address(self)


cdef class DownstreamProtocol:
    cdef ServerState state
    cdef CoreListener listener
    cdef object transport
    cdef object parser
    cdef ProxyRequest parsing
    cdef ProxyRequest active
    cdef ProxyRequest last
    cdef object queue
    cdef Tunnel tunnel
    cdef bint upgrade_pending
    cdef bint trusted
    cdef double last_read
    cdef int messages
    cdef public bytes peer_ip
    cdef bytes forwarded
    cdef int read_pause
    cdef bint write_paused
    cdef bint closing
    cdef bytes deferred_error
    cdef int reject_status
    cdef str reject_message
    cdef public double idle_since
    cdef public int served

    cdef int _lost(self) except -1
    cdef int _received(self, data) except -1
    cdef int _write_paused(self, bint paused) except -1
    cdef int start(self, ProxyRequest req) except -1
    cdef int _start(self, ProxyRequest req) except -1
    cdef int send_direct(self, ProxyRequest req) except -1
    cdef int _send_made(self, ProxyRequest req, int status, bytes head, bytes body) except -1
    cdef int send_error(self, ProxyRequest req, int status, str message, bytes extra=*) except -1
    cdef int proxy(self, ProxyRequest req) except -1
    cdef int write_upstream_head(self, ProxyRequest req) except -1
    cdef int finish_response(self, ProxyRequest req) except -1
    cdef int retire(self, ProxyRequest req) except -1
    cdef int reject(self, int status, str message) except -1
    cdef int pause(self, int reason) except -1
    cdef int resume(self, int reason) except -1
    cdef int close(self) except -1
    cdef int abort(self) except -1
    cdef int _log_internal(self, ProxyRequest req, object exc) except -1
    cdef int internal_error(self, ProxyRequest req, object exc, bint close) except -1
    cdef int _fail_parse(self, int status, str message) except -1
    cdef int _send_policy_response(self, ProxyRequest req, answer) except -1
    cdef void _count_request(self)
    cdef bint _closing_after(self, ProxyRequest req)
    cdef void _record(self, ProxyRequest req)
    cdef int _keep(self, ProxyRequest req, double latency) except -1
    cdef int start_tunnel(self, ProxyRequest req, UpstreamProtocol conn) except -1
    cdef int run_policies(self, ProxyRequest req, Py_ssize_t i) except -1
    cdef int _await_body(self, ProxyRequest req) except -1
    cdef int _body_complete(self, ProxyRequest req) except -1
    cdef int _proceed(self, ProxyRequest req) except -1
    cdef int _not_allowed(self, ProxyRequest req, bytes allow) except -1
    cdef int _policy_failed(self, ProxyRequest req, CorePolicy policy, object exc) except -1
    cdef bint _responds(self, ProxyRequest req)
    cdef int response_phase(self, ProxyRequest req, ResponseHead head) except -1
    cdef list edited(self, ProxyRequest req, int* status, list parts)
    cdef int _send_parts(self, ProxyRequest req, int status, list parts, bytes body) except -1
    cdef int complete_phase(self, ProxyRequest req) except -1
    cdef int check_timeouts(self, double now) except -1
    cdef int _after_upgrade_head(self, bytes rest) except -1
    cdef int _hold_for_tunnel(self, bytes data) except -1
