# cython: language_level=3, boundscheck=False, wraparound=False
"""Upstream side of the request path: connection pools and the response parser.

Strategy. A `Cluster` holds one `Pool` per target and asks its `Balancer` which one an exchange
uses (`RoundRobin` stays in C: no Python call per request); a balancer answering `None` (no usable
target) fails the exchange with FAIL_UNAVAILABLE. A `Pool` keeps idle keep-alive connections on a
LIFO stack (the most recently used socket is the warmest), counts every open or opening connection
against `max_connections`, and parks `Exchange`s in a FIFO when the limit is reached; a parked
exchange whose client leaves is taken off the queue at once. Opening a connection is the only
place that touches a coroutine: `loop.create_connection` is wrapped in a future whose
done-callback hands the ready connection to the exchange; nothing in this module awaits. Reused connections cost no allocation beyond the response parser's header list.

Timeouts are not timers per request: each connection carries a deadline on the monotonic clock,
and so does each parked exchange (`pool_timeout`). `sweep_pools(pools, now)`, called a few times a
second for the pools the cluster registry owns, fails connections whose connect or read deadline
has passed, fails parked exchanges that waited past `pool_timeout` (FAIL_UNAVAILABLE) and closes
idle connections older than `keepalive_expiry`.

Every way an exchange can end without a complete response is one `UpstreamFailure` kind, handed to
`Exchange.upstream_failed`; `FAILURE_STATUS` below is the one table of what the client is answered.
An exception from our own code while a connection is handled is not an upstream failure: the
connection is closed and the exchange told through `internal_error` (the downstream side logs,
counts and answers 500).

`UpstreamProtocol` parses the response with httptools and forwards head, body chunks and completion
to its current `Exchange` (the downstream request). Interim 1xx responses other than 101 are
skipped. A response to HEAD ends at its head; since httptools cannot be told the request method,
that connection gets a fresh parser before its next exchange. A body delimited by connection close
ends normally in `connection_lost`; any other loss before completion is a failure. A response
that breaks the framing rules raises `RemoteProtocolError` from a parser callback (FAIL_PROTOCOL).
"""

import asyncio
import logging
from collections import deque

import httptools

from isekai.errors import RemoteProtocolError

from isekai._core.http cimport (
    H_CONNECTION, H_CONTENT_LENGTH, H_OTHER, H_TRANSFER_ENCODING, H_UPGRADE, H_X_REQUEST_ID,
    CONNECTION_OTHER, connection_option, connection_tokens, header_kind, kind_is_hop_by_hop,
    monotonic,
)

log = logging.getLogger("isekai.core")

# What the client is answered for each UpstreamFailure (DESIGN §4).
cdef int FAILURE_STATUS[N_FAILURES]
FAILURE_STATUS[<int>FAIL_CONNECT] = 502
FAILURE_STATUS[<int>FAIL_TIMEOUT] = 504
FAILURE_STATUS[<int>FAIL_PROTOCOL] = 502
FAILURE_STATUS[<int>FAIL_UNAVAILABLE] = 503


cdef int failure_status(int kind) noexcept:
    if kind < 0 or kind >= N_FAILURES:
        return 502
    return FAILURE_STATUS[kind]


cdef class Exchange:

    cdef int cancel(self) except -1:
        """The exchange is over for the client: no connection may be handed to it any more."""
        self.cancelled = True
        if self.waiting is not None:
            self.waiting.leave(self)
        return 0

    cdef int upstream_ready(self, UpstreamProtocol conn) except -1:
        raise NotImplementedError

    cdef int upstream_failed(self, int kind, str reason) except -1:
        raise NotImplementedError

    cdef int internal_error(self, object exc) except -1:
        raise NotImplementedError

    cdef int response_head(self, UpstreamProtocol conn) except -1:
        raise NotImplementedError

    cdef int response_body(self, bytes data) except -1:
        raise NotImplementedError

    cdef int response_complete(self, UpstreamProtocol conn) except -1:
        raise NotImplementedError

    cdef int upstream_write_paused(self, bint paused) except -1:
        return 0

    cdef int flush(self) except -1:
        return 0

    cdef bytes hash_key(self, int source, bytes name):
        """What a consistent-hash balancer hashes for this exchange (`HashSource`; `name` is
        the lower-case header or cookie name); None when the request has none."""
        return None


cdef class UpstreamProtocol:

    def __cinit__(self, Pool pool):
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.headers = []
        self.connect_started = monotonic()

    # -- asyncio protocol -------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.connected = True

    def connection_lost(self, exc):
        cdef Exchange ex = self.exchange
        self.closed = True
        self.transport = None
        try:
            self.pool._forget(self)
            if self.tunnel is not None:
                self.tunnel.close()
            if ex is None:
                return
            self.exchange = None
            if self.head_received and self.eof_body and exc is None:
                self.keep_alive = False
                ex.response_complete(self)
            else:
                ex.upstream_failed(FAIL_PROTOCOL, "upstream closed the connection")
        except Exception as error:
            self._crash(ex, error)

    def data_received(self, data):
        cdef Exchange ex = self.exchange
        try:
            if self.tunnel is not None:
                self.tunnel.from_upstream(data)
                return
            if ex is None:
                # Nothing was asked: a server talking out of turn cannot be reused safely.
                self.close()
                return
            self.bytes_received += len(data)
            self.received_at = monotonic()
            self.deadline = self.received_at + ex.read_timeout
            try:
                self.parser.feed_data(data)
                if self.head_done:
                    # A HEAD response ends with its head; anything after it in this read is
                    # bytes nobody asked for: the connection cannot be trusted again.
                    self.head_done = False
                    if self.stray:
                        self.keep_alive = False
                    self._complete()
                ex.flush()
            except httptools.HttpParserUpgrade as exc:
                # A 101: what follows the head already belongs to the tunnel.
                offset = exc.args[0]
                if self.tunnel is not None:
                    if offset < len(data):
                        self.tunnel.from_upstream(data[offset:])
                else:
                    self._fail(FAIL_PROTOCOL, "upstream switched protocols unasked")
            except httptools.HttpParserCallbackError as exc:
                # A callback raised: the upstream broke a rule, or our own code failed.
                if self._head_then_garbage(ex):
                    return
                cause = exc.__context__
                if cause is None or isinstance(cause, RemoteProtocolError):
                    self._fail(FAIL_PROTOCOL, "malformed upstream response")
                else:
                    self._crash(ex, cause)
            except httptools.HttpParserError:
                if self._head_then_garbage(ex):
                    return
                self._fail(FAIL_PROTOCOL, "malformed upstream response")
        except Exception as error:
            self._crash(ex, error)

    cdef bint _head_then_garbage(self, Exchange ex) except -1:
        """A HEAD response was whole when what followed it broke the parser: answer it and
        close the connection."""
        if not self.head_done:
            return False
        self.head_done = False
        self.keep_alive = False
        self._complete()
        ex.flush()
        return True

    def eof_received(self):
        return False

    def pause_writing(self):
        self._write_paused(True)

    def resume_writing(self):
        self._write_paused(False)

    cdef int _write_paused(self, bint paused) except -1:
        cdef Exchange ex = self.exchange
        try:
            if self.tunnel is not None:
                self.tunnel.upstream_write_paused(paused)
            elif ex is not None:
                ex.upstream_write_paused(paused)
        except Exception as error:
            self._crash(ex, error)
        return 0

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self):
        if self.head_done:
            self.stray = True
            return
        if self.exchange is None:
            # A response nobody asked for (several in one read, or after completion).
            raise RemoteProtocolError("unsolicited upstream response", 502)
        self.headers = []
        self.chunked = False
        self.has_length = False
        self.upgrade = None
        self.has_request_id = False
        self.lengths = 0
        self.encoding = None
        self.conn_tokens = None

    def on_header(self, bytes name, bytes value):
        # Fields are sorted as they arrive: what the client may see goes straight into
        # `headers` as ready-to-join parts; framing and hop-by-hop fields are only noted.
        cdef int kind
        cdef list out = self.headers
        if self.head_done:
            return
        kind = header_kind(name)
        if kind == H_OTHER or not kind_is_hop_by_hop(kind):
            if kind == H_CONTENT_LENGTH:
                self.lengths += 1
            elif kind == H_X_REQUEST_ID:
                self.has_request_id = True
            out.append(name)
            out.append(b": ")
            out.append(value)
            out.append(b"\r\n")
        elif kind == H_TRANSFER_ENCODING:
            self.encoding = value if self.encoding is None else self.encoding + b"," + value
        elif kind == H_UPGRADE:
            self.upgrade = value
        elif kind == H_CONNECTION and connection_option(value) == CONNECTION_OTHER:
            tokens = connection_tokens(value)
            tokens.discard(b"close")
            tokens.discard(b"keep-alive")
            tokens.discard(b"upgrade")
            if tokens:
                self.conn_tokens = tokens if self.conn_tokens is None else self.conn_tokens | tokens

    def on_headers_complete(self):
        cdef int status = self.parser.get_status_code()
        cdef Exchange ex = self.exchange
        cdef bytes codings
        if self.head_done:
            return
        self.status = status
        if 100 <= status < 200 and status != 101:
            self.interim = True
            self.headers = []
            return
        self.interim = False
        self.head_received = True
        self.keep_alive = self.parser.should_keep_alive()
        if self.encoding is not None:
            # Only a final "chunked" frames a body we can trust (RFC 9112 §6.1); anything else,
            # or a Content-Length beside it, is how responses get desynchronised.
            codings = self.encoding.lower().replace(b" ", b"").replace(b"\t", b"")
            if self.lengths or not (codings == b"chunked" or codings.endswith(b",chunked")):
                raise RemoteProtocolError("ambiguous upstream response framing", 502)
            self.chunked = True
        elif self.lengths > 1:
            raise RemoteProtocolError(
                "several Content-Length headers in the upstream response", 502)
        self.has_length = self.lengths == 1
        no_body = ex.is_head or status == 204 or status == 304
        self.eof_body = not no_body and not self.chunked and not self.has_length
        if self.eof_body:
            self.keep_alive = False
        ex.response_head(self)
        if no_body and ex.is_head and self.exchange is ex:
            # The parser would wait for a body that never comes: it is replaced before the
            # next exchange, and this one completes once the read is parsed (`data_received`),
            # so bytes after the head in the same read never reach another exchange.
            self.parser_dirty = True
            self.head_done = True
            self.stray = False

    def on_body(self, bytes body):
        if self.head_done:
            self.stray = True
        elif self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self):
        if self.head_done:
            return
        if self.interim:
            self.interim = False
            return
        if self.exchange is not None:
            self._complete()

    # -- driven by the exchange ---------------------------------------------------------------

    cdef int _complete(self) except -1:
        cdef Exchange ex = self.exchange
        self.exchange = None
        ex.response_complete(self)
        return 0

    cdef int attach(self, Exchange exchange) except -1:
        self.exchange = exchange
        self.head_done = False
        self.head_received = False
        self.interim = False
        self.eof_body = False
        self.status = 0
        if self.parser_dirty:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_dirty = False
        self.deadline = monotonic() + exchange.read_timeout
        if self.reading_paused:
            self.resume_reading()
        return 0

    cdef int write(self, bytes data) except -1:
        if self.transport is not None:
            self.transport.write(data)
            if self.exchange is not None:
                self.deadline = monotonic() + self.exchange.read_timeout
        return 0

    cdef int pause_reading(self) except -1:
        if self.transport is not None and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        return 0

    cdef int resume_reading(self) except -1:
        if self.transport is not None and self.reading_paused:
            self.reading_paused = False
            if self.exchange is not None:
                self.deadline = monotonic() + self.exchange.read_timeout
            self.transport.resume_reading()
        return 0

    cdef int close(self) except -1:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()
        elif self.connect_future is not None and not self.connected:
            self.connect_future.cancel()
        return 0

    cdef int _fail(self, int kind, str reason) except -1:
        cdef Exchange ex = self.exchange
        self.exchange = None
        self.close()
        if ex is not None:
            ex.upstream_failed(kind, reason)
        return 0

    cdef int _crash(self, Exchange ex, object exc) except -1:
        """Our own code raised while `ex` was handled on this connection: whatever state the
        connection is in cannot be trusted, so it is closed; `ex` answers 500 (or aborts)."""
        cdef Exchange now = self.exchange
        self.exchange = None
        self.close()
        if now is not None and now is not ex:
            # The connection went to another exchange before the error: it fails normally.
            now.upstream_failed(FAIL_PROTOCOL, "upstream connection closed after an error")
        if ex is not None:
            ex.internal_error(exc)
        else:
            log.error("internal error on an upstream connection to %s", self.pool.authority,
                      exc_info=exc)
        return 0


cdef class Pool:
    """Keep-alive connections to one upstream target."""

    def __init__(self, str host, int port, *, int max_connections=1024,
                 int max_keepalive_connections=128, double keepalive_expiry=60.0,
                 double connect_timeout=5.0, double read_timeout=30.0, double pool_timeout=5.0,
                 loop=None):
        self.host = host
        self.port = port
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.max_connections = max_connections
        self.max_keepalive_connections = max_keepalive_connections
        self.keepalive_expiry = keepalive_expiry
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.idle = []
        self.open = set()
        self.connecting = set()
        self.waiters = deque()

    @property
    def idle_count(self):
        return len(self.idle)

    @property
    def busy_count(self):
        return len(self.open) - len(self.idle)

    @property
    def waiting_count(self):
        """Exchanges parked until a connection is free."""
        return len(self.waiters)

    cdef int acquire(self, Exchange exchange) except -1:
        cdef UpstreamProtocol conn
        cdef double now = monotonic()
        while self.idle:
            conn = self.idle.pop()
            if conn.closed or now - conn.idle_since > self.keepalive_expiry:
                conn.close()
                continue
            conn.attach(exchange)
            exchange.upstream_ready(conn)
            return 0
        if self.total < self.max_connections:
            self._connect(exchange)
        else:
            self._park(exchange, now)
        return 0

    cdef int _park(self, Exchange exchange, double now) except -1:
        exchange.waiting = self
        exchange.wait_deadline = now + self.pool_timeout
        self.waiters.append(exchange)
        return 0

    cdef Exchange _unpark(self):
        """The longest-waiting exchange that still wants a connection, off the queue; or None."""
        cdef Exchange waiter
        while self.waiters:
            waiter = self.waiters.popleft()
            waiter.waiting = None
            if not waiter.cancelled:
                return waiter
        return None

    cdef int leave(self, Exchange exchange) except -1:
        """`exchange` no longer waits (its client left, or it was answered otherwise)."""
        exchange.waiting = None
        try:
            self.waiters.remove(exchange)
        except ValueError:
            pass
        return 0

    cdef int _connect(self, Exchange exchange) except -1:
        cdef UpstreamProtocol conn = UpstreamProtocol(self)
        self.total += 1
        self.connections_opened += 1
        self.connecting.add(conn)
        conn.deadline = conn.connect_started + self.connect_timeout
        conn.exchange = exchange
        fut = asyncio.ensure_future(
            self.loop.create_connection(lambda: conn, self.host, self.port), loop=self.loop)
        conn.connect_future = fut
        fut.add_done_callback(lambda f: _connect_done(self, conn, f))
        return 0

    cdef int release(self, UpstreamProtocol conn, bint reusable) except -1:
        cdef Exchange waiter
        conn.exchange = None
        if not reusable or conn.closed or self.closed:
            conn.close()
            return 0
        waiter = self._unpark()
        if waiter is not None:
            conn.attach(waiter)
            waiter.upstream_ready(conn)
            return 0
        if len(self.idle) >= self.max_keepalive_connections:
            conn.close()
            return 0
        conn.idle_since = monotonic()
        self.idle.append(conn)
        return 0

    cdef int _forget(self, UpstreamProtocol conn) except -1:
        """A connection is gone: free its slot and let a parked exchange open a new one."""
        cdef Exchange waiter
        if conn in self.connecting:
            return 0  # _connect_done does the accounting
        self.total -= 1
        self.open.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        while self.total < self.max_connections and not self.closed:
            waiter = self._unpark()
            if waiter is None:
                break
            self._connect(waiter)
        return 0

    cdef int sweep(self, double now) except -1:
        cdef UpstreamProtocol conn
        cdef Exchange waiter
        while self.waiters:
            # One pool_timeout for the whole queue: deadlines are in FIFO order.
            waiter = self.waiters[0]
            if now <= waiter.wait_deadline and not waiter.cancelled:
                break
            self.waiters.popleft()
            waiter.waiting = None
            if not waiter.cancelled:
                self.pool_timeouts += 1
                waiter.upstream_failed(FAIL_UNAVAILABLE,
                                       "no upstream connection came free within pool_timeout")
        for conn in list(self.connecting):
            if now > conn.deadline and not conn.closed:
                conn.connect_future.cancel()
        for conn in list(self.open):
            # While reading is paused (the client is slow) the upstream cannot be late.
            if conn.exchange is not None and not conn.reading_paused and now > conn.deadline:
                conn._fail(FAIL_TIMEOUT, "upstream timed out")
        while self.idle:
            conn = self.idle[0]
            if now - conn.idle_since <= self.keepalive_expiry:
                break
            self.idle.pop(0)
            conn.close()
        return 0

    def close(self):
        """Close idle connections now and busy ones as they finish."""
        cdef UpstreamProtocol conn
        cdef Exchange waiter
        self.closed = True
        while True:  # nothing will ever hand them a connection now
            waiter = self._unpark()
            if waiter is None:
                break
            # not the target's fault (no verdict on it): 503, try again
            waiter.upstream_failed(FAIL_UNAVAILABLE, "upstream pool closed by a reload")
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


cdef _connect_done(Pool pool, UpstreamProtocol conn, fut):
    cdef Exchange ex = conn.exchange
    try:
        _connected(pool, conn, fut, ex)
    except Exception as error:
        conn._crash(ex, error)


cdef int _connected(Pool pool, UpstreamProtocol conn, fut, Exchange ex) except -1:
    cdef Exchange waiter
    pool.connecting.discard(conn)
    conn.exchange = None
    conn.connect_future = None
    failed = fut.cancelled() or fut.exception() is not None or conn.closed
    if failed:
        if conn.closed and not fut.cancelled() and fut.exception() is None:
            kind, reason = FAIL_CONNECT, "upstream closed the connection"
        elif fut.cancelled():
            kind, reason = FAIL_TIMEOUT, "upstream connect timed out"
        else:
            kind, reason = FAIL_CONNECT, f"upstream connect failed: {fut.exception()}"
        conn.closed = True
        pool.total -= 1
        pool.connect_failures += 1
        pool.last_connect_failed = True
        if ex is not None and not ex.cancelled:
            ex.upstream_failed(kind, reason)
        if pool.total < pool.max_connections and not pool.closed:
            waiter = pool._unpark()
            if waiter is not None:
                pool._connect(waiter)
        return 0
    pool.open.add(conn)
    pool.last_connect_failed = False
    if ex is None or ex.cancelled:
        pool.release(conn, True)
        return 0
    conn.attach(ex)
    ex.upstream_ready(conn)
    return 0


def sweep_pools(pools, double now=-1.0):
    """Fail timed-out upstream exchanges and waits, expire idle connections, in `pools` (the
    pools a cluster registry owns)."""
    cdef Pool pool
    if now < 0:
        now = monotonic()
    for pool in list(pools):
        pool.sweep(now)


def monotonic_now():
    """The clock every deadline in `_core` uses."""
    return monotonic()
