# cython: language_level=3, boundscheck=False, wraparound=False
"""Upstream side of the request path: connection pools and the response parser.

Strategy. A `Cluster` is a round-robin over one `Pool` per target. A `Pool` keeps idle keep-alive
connections on a LIFO stack (the most recently used socket is the warmest), counts every open or
opening connection against `max_connections`, and parks `Exchange`s in a FIFO when the limit is
reached. Opening a connection is the only place that touches a coroutine: `loop.create_connection`
is wrapped in a future whose done-callback hands the ready connection to the exchange; nothing in
this module awaits. Reused connections cost no allocation beyond the response parser's header list.

Timeouts are not timers per request: each connection carries a deadline on the monotonic clock,
and `sweep_pools(now)`, called by the worker a few times a second, fails connections whose connect
or read deadline has passed and closes idle ones older than `keepalive_expiry`.

`UpstreamProtocol` parses the response with httptools and forwards head, body chunks and completion
to its current `Exchange` (the downstream request). Interim 1xx responses other than 101 are
skipped. A response to HEAD ends at its head; since httptools cannot be told the request method,
that connection gets a fresh parser before its next exchange. A body delimited by connection close
ends normally in `connection_lost`; any other loss before completion is a failure.
"""

import asyncio
from collections import deque

import httptools

from isekai._core.http cimport (
    H_CONNECTION, H_CONTENT_LENGTH, H_OTHER, H_TRANSFER_ENCODING, H_UPGRADE, H_X_REQUEST_ID,
    CONNECTION_OTHER, connection_option, connection_tokens, header_kind, kind_is_hop_by_hop,
    monotonic,
)

cdef set _pools = set()


cdef class Exchange:

    cdef int upstream_ready(self, UpstreamProtocol conn) except -1:
        raise NotImplementedError

    cdef int upstream_failed(self, int kind, str reason) except -1:
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
        self.pool._forget(self)
        if self.tunnel is not None:
            self.tunnel.close()
        if ex is None:
            return
        if self.head_received and self.eof_body and exc is None:
            self.exchange = None
            self.keep_alive = False
            ex.response_complete(self)
        else:
            self.exchange = None
            ex.upstream_failed(FAIL_PROTOCOL, "upstream closed the connection")

    def data_received(self, data):
        if self.tunnel is not None:
            self.tunnel.from_upstream(data)
            return
        cdef Exchange ex = self.exchange
        if ex is None:
            # Nothing was asked: a server talking out of turn cannot be reused safely.
            self.close()
            return
        self.bytes_received += len(data)
        self.deadline = monotonic() + ex.read_timeout
        try:
            self.parser.feed_data(data)
            ex.flush()
        except httptools.HttpParserUpgrade as exc:
            # A 101: what follows the head already belongs to the tunnel.
            offset = exc.args[0]
            if self.tunnel is not None:
                if offset < len(data):
                    self.tunnel.from_upstream(data[offset:])
            else:
                self._fail(FAIL_PROTOCOL, "upstream switched protocols unasked")
        except httptools.HttpParserError as exc:
            self._fail(FAIL_PROTOCOL, "malformed upstream response")

    def eof_received(self):
        return False

    def pause_writing(self):
        if self.tunnel is not None:
            self.tunnel.upstream_write_paused(True)
        elif self.exchange is not None:
            self.exchange.upstream_write_paused(True)

    def resume_writing(self):
        if self.tunnel is not None:
            self.tunnel.upstream_write_paused(False)
        elif self.exchange is not None:
            self.exchange.upstream_write_paused(False)

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self):
        if self.exchange is None:
            # A response nobody asked for (several in one read, or after completion).
            raise ValueError("unsolicited upstream response")
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
        cdef int kind = header_kind(name)
        cdef list out = self.headers
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
                raise ValueError("ambiguous upstream response framing")
            self.chunked = True
        elif self.lengths > 1:
            raise ValueError("several Content-Length headers in the upstream response")
        self.has_length = self.lengths == 1
        no_body = ex.is_head or status == 204 or status == 304
        self.eof_body = not no_body and not self.chunked and not self.has_length
        if self.eof_body:
            self.keep_alive = False
        ex.response_head(self)
        if no_body and ex.is_head and self.exchange is ex:
            # The parser would wait for a body that never comes.
            self.parser_dirty = True
            self._complete()

    def on_body(self, bytes body):
        if self.exchange is not None:
            self.exchange.response_body(body)

    def on_message_complete(self):
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


cdef class Pool:
    """Keep-alive connections to one upstream target."""

    def __init__(self, str host, int port, *, int max_connections=1024,
                 int max_keepalive_connections=128, double keepalive_expiry=60.0,
                 double connect_timeout=5.0, double read_timeout=30.0, loop=None):
        self.host = host
        self.port = port
        self.authority = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.max_connections = max_connections
        self.max_keepalive_connections = max_keepalive_connections
        self.keepalive_expiry = keepalive_expiry
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.loop = loop if loop is not None else asyncio.get_event_loop()
        self.idle = []
        self.open = set()
        self.connecting = set()
        self.waiters = deque()
        _pools.add(self)

    @property
    def idle_count(self):
        return len(self.idle)

    @property
    def busy_count(self):
        return len(self.open) - len(self.idle)

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
            self.waiters.append(exchange)
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
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.cancelled:
                continue
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
        while self.waiters and self.total < self.max_connections and not self.closed:
            waiter = self.waiters.popleft()
            if not waiter.cancelled:
                self._connect(waiter)
        return 0

    cdef int sweep(self, double now) except -1:
        cdef UpstreamProtocol conn
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
        _pools.discard(self)
        while self.waiters:  # nothing will ever hand them a connection now
            waiter = self.waiters.popleft()
            if not waiter.cancelled:
                waiter.upstream_failed(FAIL_CONNECT, "upstream pool closed by a reload")
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()


cdef _connect_done(Pool pool, UpstreamProtocol conn, fut):
    cdef Exchange ex = conn.exchange
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
        if ex is not None and not ex.cancelled:
            ex.upstream_failed(kind, reason)
        while pool.waiters and pool.total < pool.max_connections and not pool.closed:
            waiter = pool.waiters.popleft()
            if not waiter.cancelled:
                pool._connect(waiter)
                break
        return
    pool.open.add(conn)
    if ex is None or ex.cancelled:
        pool.release(conn, True)
        return
    conn.attach(ex)
    ex.upstream_ready(conn)


cdef class Cluster:
    """Targets of one upstream, picked round-robin."""

    def __init__(self, str name, list pools):
        if not pools:
            raise ValueError(f"upstream {name!r} has no targets")
        self.name = name
        self.pools = pools
        self.next_index = 0

    cdef Pool pick(self):
        cdef Pool pool = self.pools[self.next_index]
        self.next_index += 1
        if self.next_index >= len(self.pools):
            self.next_index = 0
        return pool


def sweep_pools(double now=-1.0):
    """Fail timed-out upstream exchanges and expire idle connections; called by the worker."""
    cdef Pool pool
    if now < 0:
        now = monotonic()
    for pool in list(_pools):
        pool.sweep(now)


def monotonic_now():
    """The clock every deadline in `_core` uses."""
    return monotonic()
