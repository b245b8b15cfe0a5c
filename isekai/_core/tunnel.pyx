# cython: language_level=3, boundscheck=False, wraparound=False
"""Upgraded connections (WebSocket and other `101 Switching Protocols`): a byte tunnel.

Strategy. Once the upstream answers 101, neither side speaks HTTP to us any more: the downstream
and upstream protocols hand every `data_received` to their `Tunnel`, which writes it to the other
transport unchanged. Backpressure is symmetric: when one transport's write buffer is full, the
other side stops reading until it drains. Either side closing closes both (buffered bytes are
flushed first). `last_activity` feeds the worker's idle sweep; the tunnel keeps itself in the
worker's registry while open, which is what the open-tunnel count reports.
"""

from isekai._core.http cimport monotonic


cdef class Tunnel:

    def __init__(self, client, upstream, set registry):
        self.client = client
        self.upstream = upstream
        self.registry = registry
        self.last_activity = monotonic()
        registry.add(self)

    cdef int from_client(self, data) except -1:
        if not self.closed:
            self.bytes_up += len(data)
            self.last_activity = monotonic()
            self.upstream.write(data)
        return 0

    cdef int from_upstream(self, data) except -1:
        if not self.closed:
            self.bytes_down += len(data)
            self.last_activity = monotonic()
            self.client.write(data)
        return 0

    cdef int client_write_paused(self, bint paused) except -1:
        # The client cannot keep up: stop reading from the upstream, or start again.
        if self.closed or paused == self.upstream_paused:
            return 0
        self.upstream_paused = paused
        if paused:
            self.upstream.pause_reading()
        else:
            self.upstream.resume_reading()
        return 0

    cdef int upstream_write_paused(self, bint paused) except -1:
        if self.closed or paused == self.client_paused:
            return 0
        self.client_paused = paused
        if paused:
            self.client.pause_reading()
        else:
            self.client.resume_reading()
        return 0

    cdef int close(self) except -1:
        if self.closed:
            return 0
        self.closed = True
        self.registry.discard(self)
        for transport in (self.client, self.upstream):
            if not transport.is_closing():
                transport.close()
        return 0

    def close_idle(self, double now, double timeout):
        """Close the tunnel if nothing crossed it for `timeout` seconds; True if closed."""
        if not self.closed and now - self.last_activity > timeout:
            self.close()
            return True
        return False
