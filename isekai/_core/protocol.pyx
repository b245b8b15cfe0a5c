# cython: language_level=3, boundscheck=False, wraparound=False
"""Downstream side of the request path: one `DownstreamProtocol` per client connection.

Strategy. httptools parses the client's bytes and calls back into this protocol; each request
becomes a `ProxyRequest` (a freelisted cdef object that is also the upstream `Exchange`). Requests
are answered strictly in arrival order: the first is `active`, pipelined ones wait in `queue`
with their body bytes buffered (bounded: reading pauses past a threshold). When a request's head
is complete the router picks a `CoreRoute`; a direct route answers from prebuilt bytes, a proxied
one takes a connection from its cluster's pool, writes a head re-serialised from the parsed
fields (never the client's raw bytes), then streams the body as it arrives. The response comes
back through the `Exchange` callbacks: the head is rewritten (hop-by-hop fields dropped,
X-Request-ID added, framing chosen for this client), body chunks are written through untouched or
re-chunked, and completion returns the upstream connection to its pool when both sides allow it.

Flow control is a bitmask of reasons to stop reading the client (upstream write buffer full,
too much body buffered for a request not yet connected, too deep a pipeline): reading resumes when
the mask is empty. A full client write buffer pauses the upstream connection's reading.

Errors never raise out of a callback: they become a JSON response (404, 405 with Allow, 413, 502,
503, 504, 400 for malformed requests) or, once a response has started, an aborted connection.
Every upstream failure of a request passes through `ProxyRequest.upstream_failed`, the one place
that decides what the client gets (and where a retry would go). An exception from our own code or
a policy is never silent: `internal_error` logs it once with the request id and route, counts it
(`internal_errors` of the route's counter slot) and answers 500, or aborts a started response.
`start` catches for the request it starts, so a request started from inside another callback (the
next pipelined one, dispatched when the previous upstream response completes) still gets its
answer; each callback catches the rest.

Every response the gateway writes itself (errors, direct routes, policy answers) is serialised by
`http.gateway_response`.
"""

import ipaddress
import json
import logging
from collections import deque
from urllib.parse import quote

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport uint64_t
from posix.unistd cimport getpid
import httptools

from isekai._core.counters cimport Counters, method_index
from isekai._core.http cimport (
    CONNECTION_CLOSE, CONNECTION_KEEP_ALIVE, CONNECTION_UPGRADE, H_CONNECTION, H_CONTENT_LENGTH,
    H_EXPECT, H_HOST, H_OTHER, H_TRANSFER_ENCODING, H_UPGRADE, H_USER_AGENT, H_X_FORWARDED_FOR,
    H_X_FORWARDED_HOST, H_X_FORWARDED_PROTO, H_X_REQUEST_ID, chunk_frame, connection_option,
    connection_tokens, error_body, error_response, gateway_response, header_kind, int_bytes,
    join_bytes, monotonic, next_request_id, response_head, status_has_no_body, status_line,
    valid_host, wall_clock,
)
from isekai._core.policy cimport (
    Answer, CorePolicy, ResponseHead, check_answer_headers, check_field, header_parts, parts_add,
    parts_append, parts_drop, parts_get, parts_move, same_name,
)
from isekai._core.fastrand cimport next_uniform
from isekai._core.iptrie cimport IpSet
from isekai._core.router cimport Router
from isekai._core.tunnel cimport Tunnel
from isekai._core.tracecontext cimport (
    new_span_id, new_trace_id, parse_traceparent, ratio_bound, ratio_sampled, traceparent_line,
)
from isekai._core.cluster cimport (
    OUTCOME_CANCELLED, OUTCOME_CONNECT, OUTCOME_OK, OUTCOME_PROTOCOL, OUTCOME_RESET,
    OUTCOME_TIMEOUT, Cluster,
)
from isekai._core.cluster import REFUSAL_REASONS
from isekai._core.target cimport Target
from isekai._core.upstream cimport (
    FAIL_CONNECT, FAIL_PROTOCOL, FAIL_TIMEOUT, FAIL_UNAVAILABLE, HASH_CLIENT_IP, HASH_COOKIE,
    HASH_HEADER, HASH_PATH, Exchange, Pool, UpstreamProtocol, failure_status,
)
from isekai.errors import RemoteProtocolError

log = logging.getLogger("isekai.core")

# Reasons to stop reading from the client (bits of DownstreamProtocol.read_pause).
cdef enum:
    PAUSE_UPSTREAM = 1      # upstream write buffer is full
    PAUSE_PENDING = 2       # body buffered while the upstream connection is being opened
    PAUSE_PIPELINE = 4      # too many requests queued behind the active one
    PAUSE_DONE = 8          # connection is closing: read nothing more

cdef long long PENDING_LIMIT = 256 * 1024
cdef Py_ssize_t PIPELINE_LIMIT = 16
cdef long long DISCARD_LIMIT = 1024 * 1024

# Request header fields the gateway sets itself or re-frames; they are not copied upstream.

cdef bytes CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


cdef class _Reject(Exception):
    pass


class PolicyError(Exception):
    """A policy raised in a phase that runs inside another callback (the response phase):
    carries the policy to the one place that logs and counts it."""

    def __init__(self, policy, error):
        super().__init__(f"{policy.name}: {error!r}")
        self.policy = policy
        self.error = error


cdef class CoreListener:

    def __init__(self, str name, tuple chain=()):
        self.name = name
        self.chain = chain


cdef tuple NO_POLICIES = ()
cdef bytes PREFLIGHT_METHOD = b"access-control-request-method"
cdef bytes TRACEPARENT = b"traceparent"
cdef bytes TRACESTATE = b"tracestate"


cdef class CoreRoute:

    def __init__(self, str name, int slot=0):
        self.name = name
        self.slot = slot
        self.read_timeout = 30.0
        self.max_body_size = 10 * 1024 * 1024
        self.chain = ()
        self.respond_headers = ()
        self.body_idle_timeout = 0.0       # 0: the global limit
        self.websocket_idle_timeout = 0.0  # 0: the global limit
        self.access_sample = 1.0


cdef class ServerState:

    def __init__(self, Router router, Counters counters, loop):
        self.router = router
        self.counters = counters
        self.loop = loop
        self.max_request_line = 8192
        self.max_header_bytes = 32768
        self.max_header_count = 100
        self.keepalive_timeout = 75.0
        self.max_requests_per_connection = 10000
        self.connections = set()
        self.scheme = b"http"
        self.header_read_timeout = 10.0
        self.body_idle_timeout = 30.0
        self.websocket_idle_timeout = 300.0
        self.max_connections = 10000
        self.on_capacity = None
        self.trusted_proxies = IpSet()
        self.tunnels_open = set()
        self.log_requests = False
        self.access_log = False
        self.access_sample = 1.0
        self.log_headers = ()
        self.log_buffer = []
        self.log_capacity = 10000
        self.log_dropped = 0
        self.access_dropped = 0
        self.access_kept = 0
        self.seed_sampling(0)
        self.run_async = None
        self.stripped = None
        self.head = ResponseHead.__new__(ResponseHead)
        self.shedding = False
        self.shed_header = b"retry-after: 1\r\n"
        self.shed = 0

    def take_request_log(self):
        """The log records gathered since the last call (tuples laid out as `_log_record`
        says: the `LOG_COLUMNS` of isekai/store/base.py, then `RECORD_EXTRAS`, then the values
        of `log_headers`)."""
        records = self.log_buffer
        self.log_buffer = []
        return records

    def set_tracing(self, bint enabled, double sample_ratio=0.0, on_span=None):
        """W3C trace context on (traceparent checked, a trace id per request, one traceparent
        sent upstream) or off (the fields pass through untouched). New traces are sampled at
        `sample_ratio`; `on_span(record)` gets each sampled request once it is over (the tuple
        of `_span_record`)."""
        self.tracing = enabled
        self.trace_bound = ratio_bound(sample_ratio)
        self.on_span = on_span

    def seed_sampling(self, uint64_t seed=0):
        """Seed the access-log sampling; 0 mixes this process's id and the clock (each worker
        is made after the fork, so workers never share a sequence)."""
        if seed == 0:
            seed = (<uint64_t>getpid() << 32) ^ <uint64_t>(wall_clock() * 1e6)
        seed ^= <uint64_t>0x9E3779B97F4A7C15
        self.rng = seed if seed != 0 else 1

    def set_trusted_proxies(self, cidrs):
        """Peers in these CIDRs may supply X-Forwarded-For; others have theirs replaced."""
        self.trusted_proxies = IpSet(cidrs)

    @property
    def tunnel_count(self):
        """Upgraded (WebSocket) tunnels open in this worker."""
        return len(self.tunnels_open)

    def sweep(self, double now=-1.0):
        """Apply the header-read, body-idle, keep-alive and tunnel-idle timeouts."""
        cdef DownstreamProtocol proto
        cdef Tunnel tunnel
        if now < 0:
            now = monotonic()
        for proto in list(self.connections):
            try:
                proto.check_timeouts(now)
            except Exception as error:
                proto.internal_error(proto.active, error, True)
        for tunnel in list(self.tunnels_open):
            tunnel.close_idle(now, tunnel.idle_timeout)


@cython.freelist(64)
cdef class ProxyRequest(Exchange):

    # -- Exchange: called by the upstream side ---------------------------------------------

    cdef int upstream_ready(self, UpstreamProtocol conn) except -1:
        cdef DownstreamProtocol proto = self.proto
        self.conn = conn
        self.upstream_at = monotonic()
        self.sent = True
        proto.write_upstream_head(self)
        if self.pending and not self.wants_upgrade:
            # (bytes after an Upgrade head belong to the tunnel: only a 101 releases them)
            conn.transport.writelines(self.pending)
            self.pending = None
            self.pending_size = 0
            proto.resume(PAUSE_PENDING)
        if self.message_complete and self.chunked:
            conn.write(b"0\r\n\r\n")
        if proto.write_paused:
            conn.pause_reading()
        return 0

    cdef int upstream_failed(self, int kind, str reason) except -1:
        """The one place every upstream failure of this request passes (connect, timeout,
        protocol, unavailable): the attempt is reported to its cluster, retried if the
        upstream's `retry` rules allow it (`retry`), else answered from `FAILURE_STATUS`.
        Called from pool and connection callbacks and the sweep, so it catches for the request
        itself."""
        cdef DownstreamProtocol proto = self.proto
        cdef int outcome
        self.conn = None
        self.upstream_failure = kind + 1
        proto.state.counters.upstream_error(self.route.slot, kind)
        try:
            proto.resume(PAUSE_UPSTREAM)
            if self.target is not None:
                outcome = _outcome(kind, self.sent)
                self.report_attempt(outcome, 0)
                self.release_target()
                if outcome != OUTCOME_CANCELLED and self.retry(outcome, 0):
                    return 0
            if self.cancelled or self.response_done:
                return 0
            if not self.can_answer():
                # Never pass a cut-short body off as complete.
                self.response_done = True
                proto._record(self)
                proto.close()
                proto.retire(self)
                return 0
            proto.send_error(self, failure_status(kind), reason)
        except Exception as error:
            proto.internal_error(self, error, False)
        return 0

    cdef int report_attempt(self, int outcome, int status) except -1:
        """Tell the cluster how this attempt went (once per attempt). Its latency runs from
        the head sent upstream to the response head: the time the response's bytes arrived
        (the clock is read only for a failure)."""
        cdef double now
        if self.target is None or self.reported:
            return 0
        self.reported = True
        if outcome == OUTCOME_OK and self.conn is not None:
            now = self.conn.received_at
        else:
            now = monotonic()
        self.cluster.report(self.target, outcome, status,
                            now - self.upstream_at if self.sent else 0.0, now, self.probe)
        if outcome != OUTCOME_OK and outcome != OUTCOME_CANCELLED:
            self.failed_target = self.target
        return 0

    cdef int release_target(self) except -1:
        """This attempt no longer loads its target."""
        cdef Target target = self.target
        if target is None:
            return 0
        self.target = None
        if not self.reported:
            self.reported = True
            self.cluster.report(target, OUTCOME_CANCELLED, 0, 0.0, 0.0, self.probe)
        self.cluster.release(target)
        return 0

    cdef bint retry(self, int outcome, int status) except -1:
        """Try again on (preferably) another target, if this attempt's `outcome` (and upstream
        `status`) is one the upstream retries on and nothing forbids it: attempts left, nothing
        of a response sent to the client, an idempotent method (or `retry_non_idempotent`; a
        connect failure never reached the upstream, so any method), the body still whole in
        the replay buffer, the overall timeout not passed, and the retry budget. The next
        attempt starts after the backoff, from the event loop (never inside the callback that
        failed)."""
        cdef Cluster cluster = self.cluster
        cdef double delay, now
        if (cluster is None or self.attempt >= cluster.attempts or self.cancelled
                or self.response_done or self.wants_upgrade or self.replay_lost):
            return False
        if not cluster.retry_wanted(outcome, status):
            return False
        if (outcome != OUTCOME_CONNECT and not cluster.retry_non_idempotent
                and not _idempotent(self.method)):
            return False
        if not self.can_answer():
            return False
        now = monotonic()
        if (cluster.overall_timeout > 0.0
                and now + cluster.backoff >= self.first_try_at + cluster.overall_timeout):
            return False
        if self.target is not None:
            self.failed_target = self.target
        if not self.retrying:
            if not cluster.retry_allowed():
                return False
            cluster.retry_started()
            self.retrying = True
        delay = cluster.retry_delay(self.attempt)
        if self.replay is not None:
            self.pending = list(self.replay)
            self.pending_size = self.replay_size
        self.retry_timer = self.proto.state.loop.call_later(delay, _retry_now, self)
        return True

    cdef int finish_upstream(self) except -1:
        """The request is over: no retry may start, its target and budget slot are freed."""
        if self.retry_timer is not None:
            self.retry_timer.cancel()
            self.retry_timer = None
        if self.target is not None:
            self.release_target()
        if self.retrying:
            self.retrying = False
            self.cluster.retry_ended()
        self.replay = None
        return 0

    cdef bytes hash_key(self, int source, bytes name):
        if source == HASH_CLIENT_IP:
            return self.client_address()
        if source == HASH_HEADER:
            return self.get_header_joined(name)
        if source == HASH_PATH:
            return self.path
        if source == HASH_COOKIE:
            return _cookie(self.get_header_joined(b"cookie"), name)
        return None

    cdef bint can_answer(self):
        """True if the client has seen nothing of a response yet, so another can be sent. A head
        still held in our buffer (never written) is dropped."""
        if self.response_started and not self.head_sent and not self.tunneling:
            self.out = None
            self.response_started = False
            self.proto.served -= 1
        return not self.response_started and not self.response_done

    cdef int internal_error(self, object exc) except -1:
        return self.proto.internal_error(self, exc, False)

    cdef int response_head(self, UpstreamProtocol conn) except -1:
        cdef DownstreamProtocol proto = self.proto
        cdef int status = conn.status
        cdef bint no_body = self.is_head or status == 204 or status == 304 or status == 101
        self.upstream_status = status
        if self.target is not None and not self.reported:
            self.report_attempt(OUTCOME_OK, status)
            if status >= 500 and self.retry(OUTCOME_OK, status):
                # this answer is dropped with its connection; the next attempt answers
                self.release_target()
                self.conn = None
                conn.exchange = None
                conn.keep_alive = False
                conn.close()
                proto.resume(PAUSE_UPSTREAM)
                return 0
        # The upstream protocol already sorted the fields into ready-to-join parts; take them.
        cdef list out = conn.headers
        conn.headers = None
        if conn.conn_tokens:
            out = _drop_listed(out, conn.conn_tokens)
        if self.chain is not None and status != 101 and proto._responds(self):
            # response policies edit status and fields; the body is the upstream's, as framed
            out = proto.edited(self, &status, out)
        out.insert(0, status_line(status))
        if status == 101:
            if not self.wants_upgrade or conn.upgrade is None:
                raise RemoteProtocolError("upstream switched protocols unasked", 502)
            self.tunneling = True
        elif self.wants_upgrade:
            self.close_after = True  # the client may already be sending the other protocol
        if not conn.has_request_id:
            out.append(b"x-request-id: ")
            out.append(self.request_id)
            out.append(b"\r\n")
        self.response_chunked = False
        if self.tunneling:
            out.append(b"connection: upgrade\r\nupgrade: ")
            out.append(conn.upgrade)
            out.append(b"\r\n\r\n")
            self.status = status
            self.response_started = True
            proto.transport.write(join_bytes(out))
            return 0
        if not no_body and (conn.chunked or not conn.has_length):
            if self.http11:
                self.response_chunked = True
                out.append(b"transfer-encoding: chunked\r\n")
            else:
                self.close_after = True
        proto.served += 1
        if proto.served >= proto.state.max_requests_per_connection:
            self.close_after = True
        if self.close_after or not self.keep_alive:
            self.close_after = True
            out.append(b"connection: close\r\n\r\n")
        elif not self.http11:
            out.append(b"connection: keep-alive\r\n\r\n")
        else:
            out.append(b"\r\n")
        self.status = status
        self.response_started = True
        # Held until the end of this read from the upstream: head and body leave in one write.
        self.out = [join_bytes(out)]
        return 0

    cdef int response_body(self, bytes data) except -1:
        if self.response_done or self.proto.transport is None or not data:
            return 0
        self.bytes_out += len(data)
        if self.out is None:
            self.out = []
        if self.response_chunked:
            self.out.append(b"%x\r\n" % len(data))
            self.out.append(data)
            self.out.append(b"\r\n")
        else:
            self.out.append(data)
        return 0

    cdef int flush(self) except -1:
        """Write what the response produced during one upstream read, as one write."""
        cdef list out = self.out
        cdef object transport = self.proto.transport
        if out is None:
            return 0
        self.out = None
        if transport is None:
            return 0
        self.head_sent = True
        if len(out) == 1:
            transport.write(out[0])
        else:
            transport.writelines(out)
        return 0

    cdef int response_complete(self, UpstreamProtocol conn) except -1:
        cdef DownstreamProtocol proto = self.proto
        cdef bint reusable = (conn.keep_alive and self.message_complete and not self.cancelled
                              and not self.wants_upgrade)
        if self.tunneling and not self.cancelled:
            return proto.start_tunnel(self, conn)
        self.conn = None
        conn.pool.release(conn, reusable)
        self.release_target()
        proto.resume(PAUSE_UPSTREAM)
        if self.cancelled or self.response_done:
            return 0
        if self.response_chunked:
            if self.out is None:
                self.out = [b"0\r\n\r\n"]
            else:
                self.out.append(b"0\r\n\r\n")
        self.flush()
        proto.finish_response(self)
        return 0

    cdef int upstream_write_paused(self, bint paused) except -1:
        if paused:
            self.proto.pause(PAUSE_UPSTREAM)
        else:
            self.proto.resume(PAUSE_UPSTREAM)
        return 0

    # -- what policies and tests see -----------------------------------------------------------

    @property
    def route_name(self):
        return self.route.name if self.route is not None else None

    @property
    def upstream_name(self):
        """The name of the route's upstream (its cluster), or None: a direct route (`respond`),
        or no route."""
        cdef CoreRoute route = self.route
        if route is None or route.cluster is None:
            return None
        return route.cluster.name

    # request facts for `on_complete` (custom metrics, logs); read-only
    @property
    def status(self):
        """The response status (int) once one is chosen; 0 before."""
        return self.status

    @property
    def elapsed(self):
        """Seconds since the request's first byte (in `on_complete`: its duration)."""
        return monotonic() - self.started_at

    @property
    def request_bytes(self):
        """Request body bytes received so far."""
        return self.bytes_in

    @property
    def response_bytes(self):
        """Response body bytes sent so far."""
        return self.bytes_out

    @property
    def listener_name(self):
        """The name of the listener the request came in on, or None."""
        cdef CoreListener listener = self.proto.listener if self.proto is not None else None
        return listener.name if listener is not None else None

    # what `label_values` reads: a source is (its index in this tuple, its argument)
    LABEL_SOURCES = ("header", "param", "ctx", "route", "method", "status", "status_class",
                     "listener")

    def label_values(self, tuple sources):
        """Metric label values (str, "" when missing) for `sources`, in one call: (0, lname)
        a header's first value (lname: lower-case bytes), (1, name) a path parameter, (2, key)
        a `ctx` value (str() unless str), (3, None) the route's name, (4, None) the method
        (GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, else OTHER), (5, None) the status,
        (6, None) its class (1xx..5xx, else other), (7, None) the listener's name."""
        cdef list out = []
        cdef tuple source
        cdef int kind
        cdef int status = self.status
        cdef bytes raw
        cdef object value
        cdef CoreListener listener
        for source in sources:
            kind = source[0]
            if kind == 0:
                raw = self.get_header(<bytes>source[1])
                value = raw.decode("latin-1") if raw is not None else ""
            elif kind == 1:
                value = self.params.get(source[1]) if self.params else None
            elif kind == 2:
                value = self._ctx.get(source[1]) if self._ctx else None
                if value is not None and type(value) is not str:
                    value = value.decode("latin-1") if type(value) is bytes else str(value)
            elif kind == 3:
                value = self.route.name if self.route is not None else None
            elif kind == 4:
                raw = self.method
                if (raw == b"GET" or raw == b"POST" or raw == b"HEAD" or raw == b"PUT"
                        or raw == b"DELETE" or raw == b"PATCH" or raw == b"OPTIONS"):
                    value = raw.decode("ascii")
                else:
                    value = "OTHER"
            elif kind == 5:
                value = str(status) if status else None
            elif kind == 6:
                value = ("1xx", "2xx", "3xx", "4xx", "5xx")[status // 100 - 1] if (
                    100 <= status < 600) else "other"
            else:
                listener = self.proto.listener if self.proto is not None else None
                value = listener.name if listener is not None else None
            out.append("" if value is None else value)
        return tuple(out)

    @property
    def body(self):
        """The whole request body (bytes, decoded from chunks) for a policy whose
        `body_limit` made the route wait for it; None on routes that do not."""
        if self.body_parts is None:
            return None
        return b"".join(self.body_parts)

    @property
    def client_ip(self):
        """The client's address (str): the peer, or with `trusted_proxies` the address the
        trusted proxies in front of us forwarded (X-Forwarded-For, read from the right)."""
        return self.client_address().decode("latin-1")

    @property
    def ctx(self):
        """A dict for policies to pass facts along (consumer, claims, tags); made on first use."""
        if self._ctx is None:
            self._ctx = {}
        return self._ctx

    def header(self, name):
        """The first value of request field `name` (any case) as str, or None."""
        value = self.get_header(_as_bytes(name).lower())
        return value.decode("latin-1") if value is not None else None

    def set_header(self, name, value):
        """Replace every `name` field sent upstream by one with `value`."""
        self.put_header(_as_bytes(name), _as_bytes(value))

    def add_header(self, name, value):
        self.append_header(_as_bytes(name), _as_bytes(value))

    def remove_header(self, name):
        self.drop_header(_as_bytes(name).lower())

    # -- the same for Cython policies (isekai/_core/policy.pyx) -----------------------------------

    cdef bytes get_header_joined(self, bytes lname):
        """Every `lname` field's value, joined with ", " (a list-valued field sent as several
        lines is one list), or None."""
        cdef list parts = self.headers
        cdef list values = None
        cdef Py_ssize_t i
        for i in range(0, len(parts) - 3, 4):
            if same_name(<bytes>parts[i], lname):
                if values is None:
                    values = [parts[i + 2]]
                else:
                    values.append(parts[i + 2])
        if values is None:
            return None
        return <bytes>values[0] if len(values) == 1 else b", ".join(values)

    cdef bytes get_header(self, bytes lname):
        cdef int kind = header_kind(lname)
        if kind == H_OTHER or kind == H_USER_AGENT:
            return parts_get(self.headers, lname)
        if kind == H_HOST:
            return self.host
        if kind == H_X_FORWARDED_FOR:
            return self.xff
        if kind == H_X_REQUEST_ID:
            return self.request_id
        if kind == H_CONTENT_LENGTH:
            return int_bytes(self.content_length) if self.has_length else None
        if kind == H_TRANSFER_ENCODING:
            return b"chunked" if self.chunked else None
        if kind == H_UPGRADE:
            return self.upgrade
        return None

    cdef int put_header(self, bytes name, bytes value) except -1:
        _editable(name)
        check_field(name, value)
        self.headers = parts_drop(self.headers, name)
        return parts_add(self.headers, name, value)

    cdef int append_header(self, bytes name, bytes value) except -1:
        _editable(name)
        return parts_append(self.headers, name, value)

    cdef int put_valid_header(self, bytes name, bytes value) except -1:
        _editable(name)
        self.headers = parts_drop(self.headers, name)
        return parts_add(self.headers, name, value)

    cdef int append_valid_header(self, bytes name, bytes value) except -1:
        _editable(name)
        return parts_add(self.headers, name, value)

    cdef int drop_header(self, bytes lname) except -1:
        _editable(lname)
        self.headers = parts_drop(self.headers, lname)
        return 0

    cdef int move_header(self, bytes lname, bytes new_name) except -1:
        _editable(lname)
        _editable(new_name)
        return parts_move(self.headers, lname, new_name)

    cdef bytes client_address(self):
        cdef DownstreamProtocol proto = self.proto
        cdef bytes found
        if self.client_ip_cache is not None:
            return self.client_ip_cache
        found = proto.peer_ip
        if proto.trusted and self.xff is not None:
            found = _forwarded_client(proto.state, self.xff, found)
        self.client_ip_cache = found
        return found

    def resume(self, Py_ssize_t index, answer):
        """The slow path's callback: the async policy at `index` returned `answer`."""
        cdef DownstreamProtocol proto = self.proto
        self.task = None
        if self.cancelled or self.response_done or proto.transport is None:
            return
        try:
            if answer is not None:
                self.ran = index
                try:
                    _check_answer(answer)
                except Exception as error:
                    return proto._policy_failed(self, <CorePolicy>self.chain[index], error)
                self.answered = True
                proto.state.counters.policy_answer((<CorePolicy>self.chain[index]).slot)
                proto._send_policy_response(self, answer)
            else:
                proto.run_policies(self, index + 1)
        except Exception as error:
            proto.internal_error(self, error, False)

    def fail(self, Py_ssize_t index, exc):
        """The slow path's callback: the async policy at `index` raised `exc`."""
        cdef DownstreamProtocol proto = self.proto
        self.task = None
        if self.cancelled or self.response_done or proto.transport is None:
            return
        self.ran = index
        proto._policy_failed(self, <CorePolicy>self.chain[index], exc)

    def time_out(self, Py_ssize_t index):
        """The slow path's callback: the async policy at `index` passed its deadline."""
        cdef DownstreamProtocol proto = self.proto
        cdef CorePolicy policy = <CorePolicy>self.chain[index]
        self.task = None
        proto.state.counters.policy_timeout(policy.slot)
        if self.cancelled or self.response_done or proto.transport is None:
            return
        self.ran = index
        self.answered = True
        try:
            proto.send_error(self, 503, f"policy {policy.name} did not finish in time")
        except Exception as error:
            proto.internal_error(self, error, False)


cdef int _check_answer(object answer) except -1:
    """A policy's answer is a final response with a bytes body and well-formed fields the
    gateway does not manage (an `Answer` checked its own when it was made)."""
    cdef int status = answer.status
    if not 200 <= status <= 599:
        raise ValueError(f"a policy answers with a final status (200-599), not {status}")
    if not isinstance(answer.body, bytes):
        raise TypeError(f"a policy answer's body must be bytes, not {type(answer.body).__name__}")
    if type(answer) is not Answer:  # a subclass may present other fields than it was made with
        check_answer_headers(answer.headers)
    return 0


cdef bint _wants_body(ProxyRequest req):
    """Whether a policy of `req`'s chain reads the body; sets `body_wanted` (the smallest
    limit of those that do). A request without a body needs no wait."""
    cdef CorePolicy policy
    cdef long long wanted = 0
    for policy in req.chain:
        if policy.body_limit > 0 and (wanted == 0 or policy.body_limit < wanted):
            wanted = policy.body_limit
    if wanted == 0:
        return False
    req.body_wanted = wanted
    if not req.chunked and not (req.has_length and req.content_length > 0):
        req.body_parts = []  # no body: `body` is b""
        return False
    return True


cdef list _unframed(list pending, bint chunked):
    """Body bytes from pending chunks (`chunk_frame` framing when `chunked`)."""
    cdef list out = []
    cdef Py_ssize_t at
    for chunk in pending:
        if chunked:
            at = (<bytes>chunk).find(b"\r\n")
            out.append((<bytes>chunk)[at + 2:len(chunk) - 2])
        else:
            out.append(chunk)
    return out


cdef bytes _json_text(bytes value):
    """`value` as the inside of a JSON string (a client's X-Request-ID may hold quotes)."""
    if b'"' in value or b"\\" in value:
        return json.dumps(value.decode("latin-1"))[1:-1].encode()
    return value


cdef inline bytes _as_bytes(object value):
    return value if isinstance(value, bytes) else (<str>value).encode("latin-1")


cdef int _editable(bytes name) except -1:
    """Framing, routing and forwarding fields are the gateway's to write (any case)."""
    cdef int kind = header_kind(name)
    if kind != H_OTHER and kind != H_USER_AGENT:
        raise ValueError(
            f"the {name.decode('latin-1').lower()} header is managed by the gateway")
    return 0


cdef bytes _forwarded_client(ServerState state, bytes xff, bytes peer):
    """The rightmost X-Forwarded-For address not in `trusted_proxies` (the peer is): the
    client as the trusted proxies saw it. A malformed entry ends the walk."""
    cdef bytes found = peer
    cdef IpSet trusted = state.trusted_proxies
    for entry in reversed(xff.split(b",")):
        entry = entry.strip()
        if trusted.has_bytes(entry):
            found = entry
            continue
        if b"%" in entry:  # an IPv6 zone is no client address
            break
        try:
            ipaddress.ip_address(entry.decode("latin-1"))
        except ValueError:
            break
        found = entry
        break
    return found


cdef bint _same_identity_name(bytes name, bytes lower) noexcept:
    """Whether field name `name` is `lower` (lower-case, "-" for "_") ignoring ASCII case and
    reading "_" as "-": CGI-style upstreams (WSGI, PHP, ...) take `X_Consumer_ID` for
    `X-Consumer-ID`, so that spelling must not get through either."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    cdef const char* a
    cdef const char* b
    cdef Py_ssize_t i
    cdef char c
    if n != PyBytes_GET_SIZE(lower):
        return False
    a = PyBytes_AS_STRING(name)
    b = PyBytes_AS_STRING(lower)
    for i in range(n):
        c = a[i]
        if b'A' <= c <= b'Z':
            c = c + 32
        elif c == b'_':
            c = b'-'
        if c != b[i]:
            return False
    return True


cdef list _drop_named(list parts, tuple names):
    """`parts` without the fields named in `names` (lower-case, "-" for "_"; any case, either
    spelling), compared without allocating; the same list when none is there (the usual
    case)."""
    cdef Py_ssize_t i, n = len(parts)
    cdef list kept = None
    cdef bint drop
    for i in range(0, n - 3, 4):
        drop = False
        for lname in names:
            if _same_identity_name(<bytes>parts[i], <bytes>lname):
                drop = True
                break
        if drop:
            if kept is None:
                kept = parts[:i]
        elif kept is not None:
            kept.extend(parts[i:i + 4])
    return parts if kept is None else kept


cdef list _drop_listed(list parts, set tokens):
    """Remove the fields named in a Connection header (RFC 9110 §7.6.1) from flat
    [name, b": ", value, b"\r\n", ...] parts."""
    cdef list kept = []
    cdef Py_ssize_t i = 0
    while i + 3 < len(parts):
        if parts[i].lower() not in tokens:
            kept.extend(parts[i:i + 4])
        i += 4
    return kept


cdef class DownstreamProtocol:

    def __init__(self, ServerState state, CoreListener listener=None):
        self.state = state
        self.listener = listener
        self.parser = httptools.HttpRequestParser(self)
        self.queue = deque()
        self.idle_since = monotonic()

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        try:
            peer = transport.get_extra_info("peername")
            self.peer_ip = peer[0].encode() if peer else b"unknown"
            self.forwarded = b"".join(
                (self.peer_ip, b"\r\nx-forwarded-proto: ", self.state.scheme, b"\r\n"))
            if peer:
                self.trusted = self.state.trusted_proxies.has_bytes(self.peer_ip)
            self.last_read = self.idle_since = monotonic()
            self.state.connections.add(self)
            self.state.counters.connection_opened()
            if (len(self.state.connections) >= self.state.max_connections
                    and not self.state.full and self.state.on_capacity is not None):
                self.state.full = True
                self.state.on_capacity(True)
        except Exception as error:
            self._log_internal(None, error)
            self.abort()

    def connection_lost(self, exc):
        try:
            self._lost()
        except Exception as error:
            self._log_internal(self.active, error)

    cdef int _lost(self) except -1:
        cdef ProxyRequest req
        self.transport = None
        self.closing = True
        self.state.connections.discard(self)
        self.state.counters.connection_closed()
        if self.tunnel is not None:
            self.tunnel.close()
        if self.state.full and len(self.state.connections) < self.state.max_connections:
            self.state.full = False
            if self.state.on_capacity is not None:
                self.state.on_capacity(False)
        reqs = [self.active] if self.active is not None else []
        reqs.extend(self.queue)
        self.queue.clear()
        self.active = None
        self.parsing = None
        for req in reqs:
            req.cancel()
            if req.target is not None or req.retrying or req.retry_timer is not None:
                req.finish_upstream()
            if req.task is not None:  # the client left while an async policy ran
                req.task.cancel()
                req.task = None
            if req.conn is not None:
                req.conn.pool.release(req.conn, False)
                req.conn = None
            if req.started and not req.response_done:
                req.status = 499
                self._record(req)
        return 0

    def data_received(self, data):
        try:
            self._received(data)
        except Exception as error:
            self.internal_error(self.active, error, True)

    cdef int _received(self, data) except -1:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
            return 0
        if self.closing:
            return 0
        self.last_read = monotonic()
        if self.upgrade_pending:
            self._hold_for_tunnel(data)
            return 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._after_upgrade_head(data[exc.args[0]:])
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Reject):
                # Our own code raised inside the parser: the parser cannot go on.
                self._log_internal(self.parsing if self.parsing is not None else self.active,
                                   cause if cause is not None else exc)
                if not self.closing:
                    self.reject(500, "internal error while reading the request")
            elif not self.closing:
                self.reject(self.reject_status, self.reject_message)
        except httptools.HttpParserError as exc:
            self.reject(400, f"malformed request: {exc}")
        return 0

    def eof_received(self):
        if self.active is None:
            return False
        # Half-closed client: answer what was received, then close after the last of it.
        (self.last if self.last is not None else self.active).close_after = True
        return True

    def pause_writing(self):
        self._write_paused(True)

    def resume_writing(self):
        self._write_paused(False)

    cdef int _write_paused(self, bint paused) except -1:
        self.write_paused = paused
        try:
            if self.tunnel is not None:
                self.tunnel.client_write_paused(paused)
            elif self.active is not None and self.active.conn is not None:
                if paused:
                    self.active.conn.pause_reading()
                else:
                    self.active.conn.resume_reading()
        except Exception as error:
            self.internal_error(self.active, error, True)
        return 0

    cdef int _after_upgrade_head(self, bytes rest) except -1:
        """httptools stopped after an Upgrade request's head; `rest` is what followed it."""
        cdef ProxyRequest req = self.last
        if req is not None and (req.wants_upgrade or not req.started):
            # Tunnel (or not yet routed): hold the bytes until the upstream answers.
            self.upgrade_pending = True
            if not req.started:
                req.close_after = True
            if rest:
                self._hold_for_tunnel(rest)
        elif rest:
            # A route without `websocket: true` serves the request as plain HTTP.
            self.data_received(rest)
        return 0

    cdef int _hold_for_tunnel(self, bytes data) except -1:
        cdef ProxyRequest req = self.last
        if req is None or req.response_done:
            return 0
        if req.pending is None:
            req.pending = [data]
        else:
            req.pending.append(data)
        req.pending_size += len(data)
        if req.pending_size > PENDING_LIMIT:
            self.pause(PAUSE_PENDING)
        return 0

    cdef int start_tunnel(self, ProxyRequest req, UpstreamProtocol conn) except -1:
        """The upstream said 101: from now on both connections carry raw bytes."""
        cdef Tunnel tunnel = Tunnel(self.transport, conn.transport, self.state.tunnels_open)
        cdef CoreRoute route = req.route
        tunnel.idle_timeout = (route.websocket_idle_timeout if route.websocket_idle_timeout > 0
                               else self.state.websocket_idle_timeout)
        conn.exchange = None
        conn.tunnel = tunnel
        req.conn = None
        req.response_done = True
        self.tunnel = tunnel
        self.upgrade_pending = False
        self._record(req)
        self.active = None
        self.queue.clear()
        if req.pending:
            conn.transport.writelines(req.pending)
            req.pending = None
            req.pending_size = 0
        if self.write_paused:
            tunnel.client_write_paused(True)
        self.read_pause = 0
        self.transport.resume_reading()
        return 0

    @property
    def busy(self):
        """True while a request is being read or answered on this connection."""
        return (self.active is not None or self.parsing is not None
                or (self.tunnel is not None and not self.tunnel.closed))

    def shutdown(self):
        """Close now (end of a drain)."""
        if self.transport is not None:
            self.transport.abort()

    def drain(self):
        """Close once the response in flight is written out; at once if idle. Tunnels go on."""
        if self.tunnel is not None or self.closing:
            return
        if self.active is None and self.parsing is None:
            self.close()
        elif self.active is not None:
            self.active.close_after = True

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self):
        if self.closing:
            raise _Reject("connection is closing")  # stops the parser; nothing more is read
        cdef ProxyRequest req = ProxyRequest.__new__(ProxyRequest)
        req.proto = self
        req.headers = []
        req.url = b""
        req.read_timeout = 30.0
        req.started_at = monotonic()
        self.parsing = req
        self.last = req
        self.messages += 1
        if self.active is None:
            self.active = req
        else:
            self.queue.append(req)
            if len(self.queue) >= PIPELINE_LIMIT:
                self.pause(PAUSE_PIPELINE)

    def on_url(self, bytes url):
        cdef ProxyRequest req = self.parsing
        req.url = url if not req.url else req.url + url
        if len(req.url) > self.state.max_request_line:
            self._fail_parse(414, "request target too long")

    def on_header(self, bytes name, bytes value):
        cdef ProxyRequest req = self.parsing
        cdef int kind, option
        cdef list out
        if req.head_complete:
            return  # a trailer field (RFC 9110 §6.5): never merged into the head; dropped
        req.header_count += 1
        req.header_bytes += len(name) + len(value) + 4
        if req.header_count > self.state.max_header_count:
            self._fail_parse(431, "too many header fields")
        if req.header_bytes > self.state.max_header_bytes:
            self._fail_parse(431, "header block too large")
        kind = header_kind(name)
        if kind == H_OTHER:
            if self.state.tracing and _trace_field(req, name, value):
                return  # sent upstream by write_upstream_head
            # Kept as ready-to-join parts of the upstream head.
            out = req.headers
            out.append(name)
            out.append(b": ")
            out.append(value)
            out.append(b"\r\n")
            return
        if kind == H_HOST:
            if req.host is not None:
                self._fail_parse(400, "duplicate Host header")
            if not valid_host(value):
                self._fail_parse(400, "invalid Host header")
            req.host = value
        elif kind == H_CONTENT_LENGTH:
            # llhttp has checked the digits; a length past 2^62 is refused before int overflow.
            if len(value.strip()) > 18:
                self._fail_parse(400, "Content-Length out of range")
            req.has_length = True
            req.content_length = int(value)
        elif kind == H_TRANSFER_ENCODING:
            # Checked here, before the head can reach an upstream: only a lone "chunked"
            # frames a request body we forward (RFC 9112 §6.1).
            coding = value.strip().lower()
            if req.chunked or coding != b"chunked":
                if (not req.chunked and b"," in coding
                        and coding.replace(b" ", b"").endswith(b",chunked")):
                    self._fail_parse(501, "transfer coding not implemented")
                self._fail_parse(400, "invalid Transfer-Encoding")
            req.chunked = True
        elif kind == H_X_FORWARDED_FOR:
            req.xff = value if req.xff is None else req.xff + b", " + value
        elif kind == H_X_REQUEST_ID:
            if 0 < len(value) <= 200 and value.isascii() and b" " not in value:
                req.request_id = value
        elif kind == H_EXPECT:
            if value.lower() == b"100-continue":
                req.expect_continue = True
            else:
                self._fail_parse(417, "unsupported Expect value")
        elif kind == H_UPGRADE:
            req.upgrade = value
        elif kind == H_USER_AGENT:
            req.user_agent = value
            out = req.headers
            out.append(name)
            out.append(b": ")
            out.append(value)
            out.append(b"\r\n")
        elif kind == H_CONNECTION:
            option = connection_option(value)
            if option == CONNECTION_KEEP_ALIVE:
                req.keepalive_token = True
                return
            if option == CONNECTION_CLOSE:
                return
            if option == CONNECTION_UPGRADE:
                req.connection_upgrade = True
                return
            tokens = connection_tokens(value)
            tokens.discard(b"close")
            if b"keep-alive" in tokens:
                req.keepalive_token = True
                tokens.discard(b"keep-alive")
            if b"upgrade" in tokens:
                req.connection_upgrade = True
                tokens.discard(b"upgrade")
            if tokens:
                req.conn_tokens = tokens if req.conn_tokens is None else req.conn_tokens | tokens

    def on_headers_complete(self):
        cdef ProxyRequest req = self.parsing
        cdef Router router = self.state.router
        cdef CoreRoute route
        cdef bytes url = req.url
        cdef Py_ssize_t q
        req.head_complete = True
        req.method = self.parser.get_method()
        req.is_head = req.method == b"HEAD"
        req.keep_alive = self.parser.should_keep_alive()
        if req.keep_alive and not req.keepalive_token:
            # llhttp keeps a connection alive by default only for HTTP/1.1: no need to ask
            # for the version string (a formatted str per call).
            req.http11 = True
        else:
            version = self.parser.get_http_version()
            req.http11 = version == "1.1"
            if not req.http11 and version != "1.0":
                self._fail_parse(505, "HTTP version not supported")
        if req.request_id is None:
            req.request_id = next_request_id()
        if req.conn_tokens:
            req.headers = _drop_listed(req.headers, req.conn_tokens)
        if self.state.stripped is not None:
            req.headers = _drop_named(req.headers, self.state.stripped)
        if req.host is None and req.http11:
            self._fail_parse(400, "missing Host header")
        if req.chunked and not req.http11:
            self._fail_parse(400, "chunked transfer coding needs HTTP/1.1")
        if url[:1] != b"/":
            url = _origin_form(req, url)
            if url is None:
                self._fail_parse(400, "unsupported request target")
        q = url.find(b"?")
        if q >= 0:
            req.path = url[:q]
            req.query = url[q:]
        else:
            req.path = url
            req.query = b""
        if self.state.tracing:
            _trace_start(self.state, req)
        if req is self.active:
            self.start(req)

    def on_body(self, bytes body):
        cdef ProxyRequest req = self.parsing
        cdef Py_ssize_t n = len(body)
        if req is None:
            return
        req.bytes_in += n
        if req.discarding:
            if req.bytes_in > DISCARD_LIMIT:
                req.close_after = True
                self.close()
            return
        if req.route is not None and req.bytes_in > req.route.max_body_size:
            if req.response_started or req.response_done:
                self.close()
                return
            req.close_after = True
            if req.conn is not None:
                req.conn.pool.release(req.conn, False)
                req.conn = None
            self.send_error(req, 413, "request body too large")
            return
        if req.body_parts is not None:
            if req.bytes_in > req.body_wanted:
                req.close_after = True
                self.send_error(req, 413, "request body too large for this route's policies")
                return
            req.body_parts.append(body)
        chunk = chunk_frame(body) if req.chunked else body
        if (req.route is not None and req.route.cluster is not None
                and req.route.cluster.attempts > 1 and not req.replay_lost):
            # kept for a retry while the whole body fits the replay buffer
            if req.replay_size + n > req.route.cluster.max_body:
                req.replay_lost = True
                req.replay = None
            elif req.replay is None:
                req.replay = [chunk]
                req.replay_size = n
            else:
                req.replay.append(chunk)
                req.replay_size += n
        if req.conn is not None:
            req.conn.write(chunk)
        else:
            if req.pending is None:
                req.pending = [chunk]
            else:
                req.pending.append(chunk)
            req.pending_size += n
            if req.pending_size > PENDING_LIMIT and not req.waiting_body:
                self.pause(PAUSE_PENDING)

    def on_message_complete(self):
        cdef ProxyRequest req = self.parsing
        self.parsing = None
        if req is None:
            return
        req.message_complete = True
        if req.discarding:
            req.discarding = False
            if req.response_done:
                self.retire(req)
            return
        if req.chunked and not req.response_done:
            if req.conn is not None:
                req.conn.write(b"0\r\n\r\n")
            elif req.started:
                pass  # upstream_ready writes the terminator once connected
            else:
                if req.pending is None:
                    req.pending = []
        if req.response_done and req is self.active:
            self.retire(req)
        elif req.waiting_body and not req.response_done:
            self._body_complete(req)

    # -- serving -------------------------------------------------------------------------------

    cdef int _fail_parse(self, int status, str message) except -1:
        self.reject_status = status
        self.reject_message = message
        raise _Reject(message)

    cdef int start(self, ProxyRequest req) except -1:
        """Route `req` and serve it; whatever raises is this request's internal error."""
        try:
            self._start(req)
        except Exception as error:
            self.internal_error(req, error, False)
        return 0

    cdef int _start(self, ProxyRequest req) except -1:
        cdef object found
        cdef CoreRoute route
        req.started = True
        if self.state.shedding:  # the worker's loop is overloaded: new requests are refused
            self.state.shed += 1
            return self.send_error(req, 503, "the gateway is overloaded; retry later",
                                   self.state.shed_header)
        found = self.state.router.match(req.host or b"", req.method, req.path)
        cdef tuple lchain = self.listener.chain if self.listener is not None else NO_POLICIES
        cdef object preflight
        if found is None:
            if lchain:  # the listener's policies see every request on it, routed or not
                req.no_route = 404
                req.chain = lchain
                if _wants_body(req):
                    return self._await_body(req)
                return self.run_policies(req, 0)
            return self.send_error(req, 404, "no route matches this request")
        route = found[0]
        if route is None:
            # A CORS preflight asks about another method: route it by that one, so a policy
            # can answer it even on a route without OPTIONS; unanswered, it is still a 405.
            if req.method == b"OPTIONS":
                preflight = parts_get(req.headers, PREFLIGHT_METHOD)
                if preflight is not None and preflight.strip() != b"OPTIONS":
                    preflight = self.state.router.match(req.host or b"", preflight.strip(),
                                                        req.path)
                    if (preflight is not None and preflight[0] is not None
                            and (lchain or (<CoreRoute>preflight[0]).chain)):
                        req.no_route = 405  # unless a policy answers it
                        req.allow = found[1]
                        found = preflight
                        route = found[0]
            if route is None:
                if lchain:
                    req.no_route = 405
                    req.allow = found[1]
                    req.chain = lchain
                    if _wants_body(req):
                        return self._await_body(req)
                    return self.run_policies(req, 0)
                return self._not_allowed(req, found[1])
        req.route = route
        req.params = found[1]
        req.read_timeout = route.read_timeout
        if req.pending and route.cluster is not None and route.cluster.attempts > 1:
            # body that arrived before the request was routed (pipelined): kept for a retry
            # like the rest (`on_body`)
            if req.pending_size > route.cluster.max_body:
                req.replay_lost = True
            else:
                req.replay = list(req.pending)
                req.replay_size = req.pending_size
        if req.upgrade is not None and req.connection_upgrade and route.websocket:
            req.wants_upgrade = True
            req.close_after = True  # anything but a 101 ends the connection
        if ((req.has_length and req.content_length > route.max_body_size)
                or req.bytes_in > route.max_body_size):
            # (bytes_in: a chunked body that arrived before its request was routed)
            req.close_after = True
            return self.send_error(req, 413, "request body too large")
        if route.chain or lchain:
            if not lchain:
                req.chain = route.chain
            elif not route.chain:
                req.chain = lchain
            else:
                req.chain = lchain + route.chain
            if _wants_body(req):
                return self._await_body(req)
            return self.run_policies(req, 0)
        return self._proceed(req)

    cdef int _await_body(self, ProxyRequest req) except -1:
        """A policy of the chain reads the body: hold the request phase until all of it is
        here (at most `body_wanted` bytes: 413 past it). What arrived before the request was
        routed (pipelined) is taken from the pending chunks."""
        if req.has_length and req.content_length > req.body_wanted:
            req.close_after = True
            return self.send_error(req, 413, "request body too large for this route's policies")
        req.body_parts = _unframed(req.pending, req.chunked) if req.pending else []
        if req.bytes_in > req.body_wanted:
            req.close_after = True
            return self.send_error(req, 413, "request body too large for this route's policies")
        if req.message_complete:
            return self.run_policies(req, 0)
        req.waiting_body = True
        if req.expect_continue and req.http11:
            req.expect_continue = False  # answered here, not again when proxied
            self.transport.write(CONTINUE)
        self.resume(PAUSE_PENDING)  # the whole body is wanted; `body_wanted` bounds it
        return 0

    cdef int _body_complete(self, ProxyRequest req) except -1:
        req.waiting_body = False
        try:
            self.run_policies(req, 0)
        except Exception as error:
            self.internal_error(req, error, False)
        return 0

    cdef int run_policies(self, ProxyRequest req, Py_ssize_t i) except -1:
        """The request phase from policy `i` on: inline until an async policy hands the
        request to the slow path (which calls `ProxyRequest.resume`), an answer, or the end."""
        cdef tuple chain = req.chain
        cdef Py_ssize_t n = len(chain)
        cdef CorePolicy policy
        while i < n:
            policy = <CorePolicy>chain[i]
            if policy.requests:
                req.ran = i
                if policy.is_async:
                    if self.state.run_async is None:
                        raise RuntimeError("no slow path for async policies in this worker")
                    self.state.run_async(req, policy, i, None)
                    return 0
                try:
                    answer = policy.request(req)
                    if answer is not None and type(answer) is not Answer:
                        if hasattr(answer, "__await__"):
                            # the answer needs I/O: the slow path awaits it (this request only)
                            if self.state.run_async is None:
                                raise RuntimeError("no slow path for async policies")
                            self.state.run_async(req, policy, i, answer)
                            return 0
                        _check_answer(answer)
                except Exception as error:
                    return self._policy_failed(req, policy, error)
                if answer is not None:
                    req.answered = True
                    self.state.counters.policy_answer(policy.slot)
                    return self._send_policy_response(req, answer)
            i += 1
        req.ran = n
        return self._proceed(req)

    cdef int _proceed(self, ProxyRequest req) except -1:
        if req.no_route == 404:
            return self.send_error(req, 404, "no route matches this request")
        if req.no_route == 405:
            return self._not_allowed(req, req.allow)
        if req.route.direct:
            return self.send_direct(req)
        return self.proxy(req)

    cdef int _not_allowed(self, ProxyRequest req, bytes allow) except -1:
        return self.send_error(req, 405, "method not allowed on this route",
                               b"allow: " + allow + b"\r\n")

    cdef int _policy_failed(self, ProxyRequest req, CorePolicy policy, object exc) except -1:
        req.answered = True  # it was reached: its on_complete still runs
        return self.internal_error(req, PolicyError(policy, exc), False)

    cdef bint _responds(self, ProxyRequest req):
        """Whether a response policy applies: one of those whose request phase passed."""
        cdef tuple chain = req.chain
        cdef Py_ssize_t i
        if chain is None or req.no_response_phase:
            return False
        for i in range(req.ran):
            if (<CorePolicy>chain[i]).responses:
                return True
        return False

    cdef int response_phase(self, ProxyRequest req, ResponseHead head) except -1:
        """Response policies, last to first, over the policies the request passed."""
        cdef tuple chain = req.chain
        cdef CorePolicy policy
        cdef Py_ssize_t i = req.ran
        while i > 0:
            i -= 1
            policy = <CorePolicy>chain[i]
            if policy.responses:
                try:
                    policy.response(req, head)
                except Exception as error:
                    req.no_response_phase = True
                    raise PolicyError(policy, error)
        return 0

    cdef int complete_phase(self, ProxyRequest req) except -1:
        """`complete` of every policy the request reached (the answering one included)."""
        cdef tuple chain = req.chain
        cdef CorePolicy policy
        cdef Py_ssize_t i
        cdef Py_ssize_t n = req.ran + 1 if req.answered else req.ran
        for i in range(min(n, len(chain))):
            policy = <CorePolicy>chain[i]
            if policy.completes:
                try:
                    policy.complete(req)
                except Exception as error:
                    self._log_internal(req, PolicyError(policy, error))
        return 0

    cdef int proxy(self, ProxyRequest req) except -1:
        """Start an attempt: pick a target (another than the one a retry failed on, if any
        can take it) and ask its pool for a connection."""
        cdef Cluster cluster = req.route.cluster
        cdef double now, left
        cdef Target target = cluster.pick(req, req.failed_target)
        if target is None:
            return req.upstream_failed(FAIL_UNAVAILABLE, REFUSAL_REASONS[cluster.refusal])
        req.cluster = cluster
        req.target = target
        req.probe = cluster.picked_epoch
        req.reported = False
        req.sent = False
        req.attempt += 1
        if cluster.per_try_timeout > 0.0:
            req.read_timeout = cluster.per_try_timeout
        if cluster.overall_timeout > 0.0:
            now = monotonic()
            if req.attempt == 1:
                req.first_try_at = now
            left = req.first_try_at + cluster.overall_timeout - now
            if left < req.read_timeout:
                req.read_timeout = left if left > 0.001 else 0.001
        cdef Pool pool = target.pool
        if req.sampled:  # the client span starts here; its id is the parent-id sent upstream
            req.client_at = monotonic()
            req.upstream_pool = pool
            req.client_span_id = new_span_id()
        if req.expect_continue and not req.message_complete and req.http11 and req.attempt == 1:
            self.transport.write(CONTINUE)
        pool.acquire(req)
        return 0

    cdef int write_upstream_head(self, ProxyRequest req) except -1:
        cdef CoreRoute route = req.route
        cdef bytes path = req.path
        if route.strip_prefix is not None:
            if path.startswith(route.strip_prefix):
                path = path[len(route.strip_prefix):]
                if path[:1] != b"/":
                    path = b"/" + path
        if route.rewrite is not None:
            path = _rewrite(route.rewrite, req.params)
        cdef list out = [req.method, b" ", path, req.query, b" HTTP/1.1\r\nhost: ",
                         req.host if route.preserve_host and req.host else req.conn.pool.authority,
                         b"\r\n"]
        out += req.headers
        if self.state.tracing:
            _trace_inject(req, out)
        if req.wants_upgrade:
            out.append(b"connection: upgrade\r\nupgrade: ")
            out.append(req.upgrade)
            out.append(b"\r\n")
        if req.xff is not None and self.trusted:
            out.append(b"x-forwarded-for: ")
            out.append(req.xff)
            out.append(b", ")
            out.append(self.forwarded)  # "<peer>\r\nx-forwarded-proto: <scheme>\r\n"
        else:
            out.append(b"x-forwarded-for: ")
            out.append(self.forwarded)
        if req.host is not None:
            out.append(b"x-forwarded-host: ")
            out.append(req.host)
            out.append(b"\r\n")
        out.append(b"x-request-id: ")
        out.append(req.request_id)
        if req.chunked:
            out.append(b"\r\ntransfer-encoding: chunked\r\n\r\n")
        elif req.has_length:
            out.append(b"\r\ncontent-length: ")
            out.append(int_bytes(req.content_length))
            out.append(b"\r\n\r\n")
        else:
            out.append(b"\r\n\r\n")
        req.conn.write(join_bytes(out))
        return 0

    cdef int send_direct(self, ProxyRequest req) except -1:
        cdef CoreRoute route = req.route
        if self._responds(req):
            return self._send_parts(req, route.respond_status,
                                    header_parts(route.respond_headers), route.respond_body)
        return self._send_made(req, route.respond_status, route.respond_head, route.respond_body)

    cdef int _send_policy_response(self, ProxyRequest req, answer) except -1:
        cdef int status = answer.status
        cdef bytes body = answer.body
        cdef Py_ssize_t at
        if type(answer) is Answer and (<Answer>answer).request_id_at >= 0:
            at = (<Answer>answer).request_id_at
            body = body[:at] + _json_text(req.request_id) + body[at:]
        if self._responds(req):
            return self._send_parts(req, status, header_parts(answer.headers), body)
        return self._send_made(req, status, response_head(status, answer.headers), body)

    cdef int _send_parts(self, ProxyRequest req, int status, list parts, bytes body) except -1:
        """A response the gateway made, through the response policies first."""
        parts = self.edited(req, &status, parts)
        parts.insert(0, status_line(status))
        return self._send_made(req, status, join_bytes(parts), body)

    cdef list edited(self, ProxyRequest req, int* status, list parts):
        """`parts` (and `status`) after the response phase, on the worker's one `ResponseHead`."""
        cdef ResponseHead head = self.state.head
        head.status = status[0]
        head.parts = parts
        try:
            self.response_phase(req, head)
        finally:
            parts = head.parts
            head.parts = None
        status[0] = head.status
        return parts

    cdef int _send_made(self, ProxyRequest req, int status, bytes head, bytes body) except -1:
        """A response the gateway made (direct route, policy answer): `head` is its status line
        and fields, without framing."""
        req.status = status
        self._count_request()
        # 204 and 304 carry neither content nor a length; 205 has no content: length 0
        cdef bint bodyless = status == 204 or status == 304
        if status_has_no_body(status):
            body = b""
        self.transport.write(gateway_response(head, body, req.request_id,
                                              self._closing_after(req), req.is_head, bodyless))
        req.bytes_out = 0 if bodyless else len(body)
        return self.finish_response(req)

    cdef int send_error(self, ProxyRequest req, int status, str message, bytes extra=b"") except -1:
        if self.transport is None:
            return 0
        req.status = status
        if (status >= 500 or status == 413 or status == 400) and not req.message_complete:
            # Unread body bytes would be taken for the next request; a request without a body
            # is complete once its head is, and the connection can go on.
            req.close_after = req.close_after or req.chunked or req.content_length > 0
        if self._responds(req):
            parts = [b"content-type", b": ", b"application/json", b"\r\n"]
            if extra:
                for line in extra.split(b"\r\n"):
                    if line:
                        name, _, value = line.partition(b": ")
                        parts += [name, b": ", value, b"\r\n"]
            try:
                return self._send_parts(req, status, parts, error_body(message, req.request_id))
            except PolicyError as error:
                return self.internal_error(req, error, False)
        self._count_request()
        self.transport.write(error_response(status, message, req.request_id,
                                            self._closing_after(req), extra, req.is_head))
        return self.finish_response(req)

    cdef void _count_request(self):
        self.served += 1

    cdef bint _closing_after(self, ProxyRequest req):
        if self.served >= self.state.max_requests_per_connection or not req.keep_alive:
            req.close_after = True
        return req.close_after

    cdef int finish_response(self, ProxyRequest req) except -1:
        req.response_done = True
        if req.task is not None:  # answered (timeout, 413, ...) while an async policy ran
            req.task.cancel()
            req.task = None
        self._record(req)
        if req.conn is None and not req.tunneling:
            # Answered without an upstream exchange (direct, error, policy): a connection the
            # pool is still opening or waiting for must not carry this request afterwards.
            req.cancel()
        if req.pending is not None:
            req.pending = None
            req.pending_size = 0
        self.resume(PAUSE_PENDING)
        if req.close_after:
            self.close()
            self.retire(req)
            return 0
        if not req.message_complete:
            # Answered before the body arrived: read and drop the rest, then serve the next one.
            req.discarding = True
            return 0
        return self.retire(req)

    cdef void _record(self, ProxyRequest req):
        cdef double now = monotonic()
        cdef double latency = now - req.started_at
        cdef ServerState state = self.state
        if req.target is not None or req.retrying or req.retry_timer is not None:
            try:
                req.finish_upstream()
            except Exception as error:
                self._log_internal(req, error)
        req.replay = None
        state.counters.record(req.route.slot if req.route is not None else 0,
                              method_index(req.method), req.status, req.bytes_in,
                              req.bytes_out, latency)
        if req.upstream_at > 0.0 and req.route is not None and req.route.cluster is not None:
            state.counters.record_upstream(req.route.cluster.slot, now - req.upstream_at)
        if req.sampled:
            _trace_end(self, req, latency)
        if req.chain is not None:
            self.complete_phase(req)
        if state.log_requests or state.access_log:
            self._keep(req, latency)

    cdef int _keep(self, ProxyRequest req, double latency) except -1:
        """One record for both logs, in a bounded buffer the worker drains to their writers
        (full means dropped and counted); the access log's share is sampled here."""
        cdef ServerState state = self.state
        cdef bint access = False
        cdef double sample
        if state.access_log:
            sample = req.route.access_sample if req.route is not None else state.access_sample
            access = sample >= 1.0 or (sample > 0.0 and _uniform(state) < sample)
        if not (access or state.log_requests):
            return 0
        if len(state.log_buffer) < state.log_capacity:
            state.log_buffer.append(_log_record(self, req, latency, access))
            state.access_kept += access
        else:
            state.log_dropped += state.log_requests
            state.access_dropped += access
        return 0

    cdef int retire(self, ProxyRequest req) except -1:
        """The request and its response are both over: move to the next one."""
        cdef ProxyRequest nxt
        if req is not self.active:
            return 0
        self.active = None
        self.idle_since = monotonic()
        if self.closing:
            return 0
        if self.queue:
            nxt = self.queue.popleft()
            self.active = nxt
            if len(self.queue) < PIPELINE_LIMIT:
                self.resume(PAUSE_PIPELINE)
            if nxt.head_complete:
                self.start(nxt)
        elif self.deferred_error is not None:
            self.transport.write(self.deferred_error)
            self.close()
        return 0

    cdef int reject(self, int status, str message) except -1:
        """The client sent something we cannot parse: answer (in order) and close."""
        cdef ProxyRequest req = self.parsing
        self.pause(PAUSE_DONE)
        self.parsing = None
        if self.active is None or self.active is req:
            if req is None:
                req = ProxyRequest.__new__(ProxyRequest)
                req.proto = self
                req.started_at = monotonic()
            if req.request_id is None:
                req.request_id = next_request_id()
            if req.conn is not None:
                req.conn.pool.release(req.conn, False)
                req.conn = None
            if req.response_started or req.response_done:
                # The answer is out already; the rest of the stream cannot be trusted.
                self.close()
                return 0
            self.active = req
            req.started = True
            req.close_after = True
            self.send_error(req, status, message)
        else:
            self.queue.clear()
            self.deferred_error = error_response(status, message, next_request_id(), True)
        return 0

    cdef int check_timeouts(self, double now) except -1:
        """Called by the worker's sweep: enforce the head, body and keep-alive time limits."""
        cdef ServerState state = self.state
        cdef ProxyRequest req = self.parsing
        cdef double limit
        if self.closing or self.tunnel is not None:
            return 0
        if req is not None and not req.head_complete:
            if now - req.started_at > state.header_read_timeout:
                self.reject(408, "timed out reading the request head")
            return 0
        if req is None:
            if self.active is None:
                # Idle: a connection that never sent a request gets the head timeout.
                limit = state.keepalive_timeout if self.messages else state.header_read_timeout
                if now - self.idle_since > limit:
                    self.close()
            return 0
        if self.read_pause == 0 and not req.message_complete:
            limit = state.body_idle_timeout
            if req.route is not None and req.route.body_idle_timeout > 0:
                limit = req.route.body_idle_timeout
            if now - self.last_read > limit:
                self.reject(408, "timed out reading the request body")
        return 0

    cdef int pause(self, int reason) except -1:
        if self.read_pause == 0 and self.transport is not None:
            self.transport.pause_reading()
        self.read_pause |= reason
        return 0

    cdef int resume(self, int reason) except -1:
        if self.read_pause & reason:
            self.read_pause &= ~reason
            if self.read_pause == 0 and self.transport is not None:
                self.last_read = monotonic()  # time spent paused is not the client's idling
                self.transport.resume_reading()
        return 0

    cdef int close(self) except -1:
        if not self.closing:
            self.closing = True
            self.read_pause |= PAUSE_DONE
            if self.transport is not None:
                self.transport.close()
        return 0

    cdef int abort(self) except -1:
        """Close without writing what is buffered: the response cannot be finished."""
        self.closing = True
        self.read_pause |= PAUSE_DONE
        if self.transport is not None:
            self.transport.abort()
        return 0

    cdef int _log_internal(self, ProxyRequest req, object exc) except -1:
        """Log `exc` once, with the request id, route (and policy, for a `PolicyError`), and
        count it on the route's slot (and the policy's)."""
        cdef CoreRoute route = req.route if req is not None else None
        cdef str policy = None
        if isinstance(exc, PolicyError):
            policy = exc.policy.name
            self.state.counters.policy_error((<CorePolicy>exc.policy).slot)
            exc = exc.error
        self.state.counters.internal_error(route.slot if route is not None else 0)
        log.error("internal error serving request %s (route %s%s): %r",
                  req.request_id.decode("latin-1") if req is not None and req.request_id else "-",
                  route.name if route is not None else "-",
                  f", policy {policy}" if policy is not None else "", exc, exc_info=exc)
        return 0

    cdef int internal_error(self, ProxyRequest req, object exc, bint close) except -1:
        """Our own code or a policy raised while serving `req`: log and count it, then answer
        500 if the client has seen nothing of the response, else abort the connection. With
        `close` the connection ends after the answer (its state is not to be trusted)."""
        cdef UpstreamProtocol conn
        self._log_internal(req, exc)
        try:
            if req is None or self.transport is None or not req.can_answer():
                self.abort()
                return 0
            conn = req.conn
            if conn is not None:
                req.conn = None
                conn.pool.release(conn, False)
            if close:
                req.close_after = True
            self.send_error(req, 500, "internal error")
        except Exception:
            self.abort()
        return 0


# What a log record holds after the request-log columns (`LOG_COLUMNS`), then one value per
# name of `ServerState.log_headers`. Extras are left None when the access log does not take the
# record (`access` false): the request log never reads them.
RECORD_EXTRAS = ("trace_id", "span_id", "query", "referer", "host", "listener", "access")
cdef enum:
    LOG_FIELDS = 13 + 7


cdef inline double _uniform(ServerState state):
    return next_uniform(&state.rng)


cdef inline int _outcome(int kind, bint sent) noexcept:
    """How an attempt that failed with `kind` went, for the cluster and the retry rules."""
    if kind == FAIL_UNAVAILABLE:
        return OUTCOME_CANCELLED   # a pool wait timed out: no verdict on the target
    if not sent:
        return OUTCOME_CONNECT     # refused, reset or timed out while connecting
    if kind == FAIL_TIMEOUT:
        return OUTCOME_TIMEOUT
    if kind == FAIL_PROTOCOL:
        return OUTCOME_PROTOCOL
    return OUTCOME_RESET


cdef inline bint _idempotent(bytes method):
    """RFC 9110 §9.2.2: a repeat has the same effect as one request."""
    return (method == b"GET" or method == b"HEAD" or method == b"OPTIONS" or method == b"PUT"
            or method == b"DELETE" or method == b"TRACE")


cdef bytes _cookie(bytes header, bytes name):
    """The value of cookie `name` in a Cookie header (RFC 6265 §5.4 pairs), or None."""
    cdef bytes pair
    cdef Py_ssize_t eq
    if header is None:
        return None
    for pair in header.split(b";"):
        pair = pair.strip()
        eq = pair.find(b"=")
        if eq > 0 and pair[:eq] == name:
            return pair[eq + 1:]
    return None


def _retry_now(ProxyRequest req):
    """The backoff is over: the next attempt of `req` starts, unless the request is done."""
    cdef DownstreamProtocol proto = req.proto
    req.retry_timer = None
    if req.cancelled or req.response_done or proto is None:
        return
    try:
        proto.proxy(req)
    except Exception as error:
        proto.internal_error(req, error, False)


# longest text kept of the client-supplied request-log columns (`LOG_TEXT_LIMITS` of
# isekai/store/base.py; a test checks they agree): cut while decoding, so the database gets the
# values as they are; the others are bounded already (names by the config, methods by llhttp)
cdef enum:
    PATH_LIMIT = 2048
    USER_AGENT_LIMIT = 512
    REQUEST_ID_LIMIT = 128
RECORD_TEXT_LIMITS = {"path": PATH_LIMIT, "user_agent": USER_AGENT_LIMIT,
                      "request_id": REQUEST_ID_LIMIT}


cdef inline object _text(bytes value, Py_ssize_t limit=PATH_LIMIT):
    if value is None:
        return None
    return value[:limit].decode("latin-1") if len(value) > limit else value.decode("latin-1")


cdef inline void _put(tuple record, Py_ssize_t i, object value):
    Py_INCREF(value)
    PyTuple_SET_ITEM(record, i, value)


cdef tuple _log_record(DownstreamProtocol proto, ProxyRequest req, double latency, bint access):
    # The request-log part is in the order of `LOG_COLUMNS` (isekai/store/base.py), the one
    # list of request-log fields, text already decoded so a batch goes to the database as it
    # is; `_core` imports nothing from the store, so a test checks the two agree field by field.
    cdef CoreRoute route = req.route
    cdef tuple names = proto.state.log_headers
    cdef Py_ssize_t i, n = len(names)
    cdef object consumer
    cdef tuple record = PyTuple_New(LOG_FIELDS + n)
    _put(record, 0, wall_clock())
    _put(record, 1, route.name if route is not None else None)
    _put(record, 2, _text(req.method))
    _put(record, 3, _text(req.path))
    _put(record, 4, req.status)
    _put(record, 5, route.cluster.name if route is not None and route.cluster is not None
         else None)
    _put(record, 6, latency * 1000.0)
    _put(record, 7, req.bytes_in)
    _put(record, 8, req.bytes_out)
    _put(record, 9, _text(proto.peer_ip))
    _put(record, 10, _text(req.user_agent, USER_AGENT_LIMIT))
    _put(record, 11, _text(req.request_id, REQUEST_ID_LIMIT))
    # the consumer a credential policy resolved (`identify` sets ctx["consumer"]), or None
    consumer = req._ctx.get("consumer") if req._ctx else None
    if consumer is not None and type(consumer) is not str:
        consumer = str(consumer)
    _put(record, 12, consumer)
    _put(record, 13, req.trace_id)
    if access:
        _put(record, 14, req.span_id)
        _put(record, 15, req.query)
        _put(record, 16, req.get_header_joined(b"referer"))
        _put(record, 17, req.host)
        _put(record, 18, proto.listener.name if proto.listener is not None else None)
        _put(record, 19, True)
        for i in range(n):
            _put(record, LOG_FIELDS + i, req.get_header_joined(<bytes>names[i]))
    else:
        for i in range(14, LOG_FIELDS - 1):
            _put(record, i, None)
        _put(record, LOG_FIELDS - 1, False)
        for i in range(LOG_FIELDS, LOG_FIELDS + n):
            _put(record, i, None)
    return record


# -- W3C trace context (isekai/_core/tracecontext.pyx), only while tracing is on ---------------

cdef bint _trace_field(ProxyRequest req, bytes name, bytes value) except -1:
    """Keep a traceparent or tracestate field aside (True) for `_trace_start`."""
    if same_name(name, TRACEPARENT):
        req.traceparent = value if req.traceparent is None else b""  # twice: invalid
        return True
    if not same_name(name, TRACESTATE):
        return False
    if req.tracestate is None:
        req.tracestate = value
    else:  # one list over several lines (W3C trace context §3.3.1)
        req.tracestate = req.tracestate + b"," + value
    return True


cdef int _trace_start(ServerState state, ProxyRequest req) except -1:
    """The request's trace: a valid incoming traceparent's (sampled as its flag says), or a new
    one (sampled by the ratio). An invalid traceparent counts as absent, its tracestate goes."""
    cdef bytes parent = req.traceparent
    cdef int flags = parse_traceparent(parent) if parent is not None else -1
    cdef uint64_t low
    if flags < 0:
        req.traceparent = None
        req.tracestate = None
        req.trace_id = new_trace_id(&low)
        req.sampled = ratio_sampled(low, state.trace_bound)
    else:
        req.trace_id = parent[3:35]
        req.sampled = flags & 1
    if req.sampled:
        req.span_id = new_span_id()
    return 0


cdef int _trace_inject(ProxyRequest req, list out) except -1:
    """Exactly one traceparent upstream. Sampled: the client span's (flags 01). Not sampled:
    the incoming one unchanged (a later version re-sent as 00), or without one the request's
    new trace with a fresh parent-id and flags 00. The tracestate goes with a valid parent."""
    cdef bytes parent = req.traceparent
    if req.trace_id is None:
        return 0
    if req.sampled:
        if req.client_span_id is None:
            req.client_span_id = new_span_id()
        out.append(traceparent_line(req.trace_id, req.client_span_id, True))
    elif parent is None:
        out.append(traceparent_line(req.trace_id, None, False))
    else:
        out.append(b"traceparent: ")
        out.append(parent if parent[0] == 48 and parent[1] == 48 else  # "00"
                   b"00-" + parent[3:52] + b"-00")
        out.append(b"\r\n")
    if req.tracestate is not None:
        out.append(b"tracestate: ")
        out.append(req.tracestate)
        out.append(b"\r\n")
    return 0


cdef void _trace_end(DownstreamProtocol proto, ProxyRequest req, double latency):
    """Hand a sampled request over to make its spans; never fails the request."""
    cdef object on_span = proto.state.on_span
    if on_span is None:
        return
    try:
        on_span(_span_record(proto, req, latency))
    except Exception as error:
        log.error("spans of request %s not recorded: %r", req.request_id, error)


cdef tuple _span_record(DownstreamProtocol proto, ProxyRequest req, double latency):
    # In the order of `SPAN_FIELDS` (isekai/observability/tracing.py).
    cdef CoreRoute route = req.route
    cdef Pool pool = req.upstream_pool
    return (
        req.trace_id,
        req.span_id,
        req.traceparent[36:52] if req.traceparent else None,
        req.tracestate,
        wall_clock(),
        latency,
        req.method,
        route.name if route is not None else None,
        req.path,
        req.query,
        proto.state.scheme,
        req.host,
        req.client_address(),
        proto.peer_ip,
        req.user_agent,
        req.http11,
        req.status,
        req.request_id,
        req.client_span_id,
        pool.host if pool is not None else None,
        pool.port if pool is not None else 0,
        req.client_at - req.started_at if pool is not None else 0.0,
        req.upstream_status,
        req.upstream_failure,
    )


cdef object _origin_form(ProxyRequest req, bytes url):
    """Absolute-form targets (RFC 9112 §3.2.2): the authority replaces Host."""
    cdef Py_ssize_t start, end, query
    lower = url[:8].lower()
    if lower.startswith(b"http://"):
        start = 7
    elif lower.startswith(b"https://"):
        start = 8
    else:
        return None
    # the authority ends at the path or the query (RFC 3986 §3.2)
    end = url.find(b"/", start)
    query = url.find(b"?", start)
    if end < 0 or 0 <= query < end:
        end = query
    authority = url[start:] if end < 0 else url[start:end]
    # it replaces Host: the same grammar (no userinfo, lists...), and an http URI has a host
    # (RFC 9110 §4.2.1)
    if not authority or not valid_host(authority):
        return None
    req.host = authority
    if end < 0:
        return b"/"
    return url[end:] if url[end] == 47 else b"/" + url[end:]  # 47: "/"


cdef bytes _rewrite(tuple template, dict params):
    cdef list out = []
    for literal, name in template:
        out.append(literal)
        if name is not None:
            value = params.get(name, "") if params is not None else ""
            out.append(quote(value, safe="/:@!$&'()*+,;=-._~").encode())
    return b"".join(out)
