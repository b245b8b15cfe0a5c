"""A lenient raw-socket HTTP/1.1 upstream for conformance tests, on 127.0.0.1 port 0.

Every byte received is recorded per connection, so a test can prove that the upstream saw nothing
for a request the gateway rejected, or exactly one well-formed request for one it accepted (feed
`RawConnection.received` to a strict parser such as h11 for that). Framing is deliberately
forgiving (bare LF, obs-fold, loose chunk lines): the point is to see what the gateway sends, not
to judge it here. A connection whose bytes cannot be framed is still recorded, just not answered.

Each framed request is answered with the next entry of `replies` (a FIFO), else `default_reply`.
A reply is raw bytes, a `Reply` (pieces with pauses, optional close), a callable taking the
`RawRequest` and returning one of those, or None (stay silent). Replies may be malformed on
purpose: the upstream writes them verbatim.
"""

from __future__ import annotations

import fcntl
import re
import select
import socket
import struct
import termios
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"

_HEAD_END = re.compile(rb"\r?\n\r?\n")


@dataclass
class Reply:
    """Raw response pieces written in order; a float piece is a pause in seconds."""

    pieces: Sequence[bytes | float]
    close: bool = False  # close our side after writing


ReplySpec = bytes | Reply | Callable[["RawRequest"], "bytes | Reply | None"] | None


@dataclass
class RawRequest:
    """One request as this lenient upstream framed it."""

    conn: RawConnection
    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes  # the bytes of the whole message as received

    def header(self, name: bytes) -> list[bytes]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


@dataclass
class RawConnection:
    """One accepted connection and everything received on it."""

    index: int
    sock: socket.socket
    received: bytearray = field(default_factory=bytearray)
    requests: list[RawRequest] = field(default_factory=list)
    unframable: bool = False
    peer_closed: threading.Event = field(default_factory=threading.Event)
    closed_by_us: bool = False
    io_lock: threading.Lock = field(default_factory=threading.Lock)  # a read and its recording

    def unread(self) -> int:
        """Bytes the kernel holds for this socket that nobody has read (and recorded) yet."""
        with self.io_lock:
            if self.peer_closed.is_set() or self.sock.fileno() < 0:
                return 0
            try:
                raw = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            except OSError:
                return 0
            return struct.unpack("i", raw)[0]

    def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the gateway has closed (FIN or RST) this connection."""
        return self.peer_closed.wait(timeout)


class _Unframable(Exception):
    pass


def _frame(buf: bytes) -> tuple[tuple[bytes, bytes, bytes, list, bytes], int] | None:
    """Frame one request leniently: ((method, target, version, headers, body), consumed)."""
    start = 0
    while buf.startswith(b"\r\n", start) or buf.startswith(b"\n", start):
        start += 2 if buf.startswith(b"\r\n", start) else 1
    found = _HEAD_END.search(buf, start)
    if found is None:
        return None
    lines = [ln.rstrip(b"\r") for ln in buf[start : found.start()].split(b"\n")]
    parts = lines[0].split()
    if len(parts) != 3:
        raise _Unframable(lines[0])
    method, target, version = parts
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + b" " + line.strip())
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise _Unframable(line)
        headers.append((name.strip(), value.strip()))
    pos = found.end()
    te = b",".join(v for k, v in headers if k.lower() == b"transfer-encoding")
    lengths = [v for k, v in headers if k.lower() == b"content-length"]
    if te:
        if te.split(b",")[-1].strip().lower() != b"chunked":
            raise _Unframable(te)
        body = bytearray()
        while True:
            eol = buf.find(b"\n", pos)
            if eol < 0:
                return None
            size_text = buf[pos:eol].rstrip(b"\r").split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise _Unframable(size_text) from None
            pos = eol + 1
            if size == 0:
                while True:  # trailer section, ended by an empty line
                    eol = buf.find(b"\n", pos)
                    if eol < 0:
                        return None
                    line = buf[pos:eol].rstrip(b"\r")
                    pos = eol + 1
                    if not line:
                        break
                break
            if len(buf) < pos + size:
                return None
            body += buf[pos : pos + size]
            pos += size
            if buf.startswith(b"\r\n", pos):
                pos += 2
            elif buf.startswith(b"\n", pos):
                pos += 1
            elif len(buf) - pos < 2:
                return None
            else:
                raise _Unframable(b"chunk data not followed by CRLF")
        return (method, target, version, headers, bytes(body)), pos
    if lengths:
        try:
            n = int(lengths[0].split(b",")[0].strip())
        except ValueError:
            raise _Unframable(lengths[0]) from None
        if n < 0:
            raise _Unframable(lengths[0])
        if len(buf) < pos + n:
            return None
        return (method, target, version, headers, buf[pos : pos + n]), pos + n
    return (method, target, version, headers, b""), pos


class RawUpstream:
    """`with RawUpstream() as up:`; `up.port`, `up.connections`, `up.requests`, `up.replies`."""

    def __init__(self, default_reply: ReplySpec = OK) -> None:
        self.default_reply: ReplySpec = default_reply
        self.replies: deque[ReplySpec] = deque()
        self.connections: list[RawConnection] = []
        self.requests: list[RawRequest] = []
        self._initial_reply = default_reply
        self._lock = threading.Lock()
        self._accept_lock = threading.Lock()  # an accept and its recording
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._all: list[RawConnection] = []  # including those forgotten by `reset`, to close

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> RawUpstream:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(5)
        self._listener.close()
        for conn in self._all:
            try:
                conn.sock.close()
            except OSError:
                pass

    def reset(self, timeout: float = 5.0) -> None:
        """Start afresh for the next test of a shared gateway, as if both were new: close every
        connection from this side, wait until the gateway has closed its end too (so its pool
        holds none of them), then forget what was recorded and queued."""
        with self._accept_lock:
            connections = list(self.connections)
        for conn in connections:
            if not conn.peer_closed.is_set():
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    conn.peer_closed.set()
        for conn in connections:
            assert conn.peer_closed.wait(timeout), (
                f"the gateway kept upstream connection {conn.index} open {timeout} s after the "
                "upstream closed it"
            )
        with self._accept_lock, self._lock:
            self.connections = []
            self.requests = []
            self.replies.clear()
            self.default_reply = self._initial_reply

    def sync(self, timeout: float = 5.0) -> None:
        """Return once every byte that reached this upstream's sockets is recorded: no connection
        waits to be accepted, and no accepted one holds unread bytes. After a barrier request has
        arrived, what the gateway wrote before it is all in `connections` / `received()`."""
        deadline = time.monotonic() + timeout
        while True:
            with self._accept_lock:
                queued, _, _ = select.select([self._listener], [], [], 0)
                connections = list(self.connections)
            if not queued and not any(conn.unread() for conn in connections):
                return
            assert time.monotonic() < deadline, "the upstream did not catch up with its input"
            time.sleep(0.002)

    # -- what tests look at --------------------------------------------------------------------

    def received(self) -> bytes:
        """Every byte received so far, on all connections, in connection order."""
        with self._lock:
            return b"".join(bytes(c.received) for c in self.connections)

    def snapshot(self) -> dict[int, int]:
        """Bytes received so far per connection index (a baseline for `received_since`)."""
        with self._lock:
            return {c.index: len(c.received) for c in self.connections}

    def received_since(self, snapshot: dict[int, int]) -> dict[int, bytes]:
        """Bytes received after `snapshot`, per connection index, omitting idle connections."""
        with self._lock:
            out = {}
            for c in self.connections:
                data = bytes(c.received[snapshot.get(c.index, 0) :])
                if data:
                    out[c.index] = data
            return out

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        return self._wait(lambda: len(self.requests) >= n, timeout)

    def wait_target(self, target: bytes, timeout: float = 5.0) -> RawRequest | None:
        """The first recorded request for `target`, once it has arrived (None after `timeout`)."""
        found: list[RawRequest] = []

        def arrived() -> bool:
            with self._lock:
                found[:] = [r for r in self.requests if r.target == target][:1]
            return bool(found)

        return found[0] if self._wait(arrived, timeout) else None

    def wait_connections(self, n: int, timeout: float = 5.0) -> bool:
        return self._wait(lambda: len(self.connections) >= n, timeout)

    def wait_bytes(self, n: int, timeout: float = 5.0) -> bool:
        return self._wait(lambda: len(self.received()) >= n, timeout)

    @staticmethod
    def _wait(predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # -- serving -------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                select.select([self._listener], [], [], 0.05)
            except (OSError, ValueError):
                return
            with self._accept_lock:
                try:
                    sock, _ = self._listener.accept()
                except BlockingIOError:
                    continue
                except OSError:
                    return
                sock.settimeout(5.0)  # bounds a reply the gateway does not read
                with self._lock:
                    conn = RawConnection(index=len(self.connections), sock=sock)
                    self.connections.append(conn)
                    self._all.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: RawConnection) -> None:
        pending = b""
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([conn.sock], [], [], 0.05)
            except (OSError, ValueError):
                conn.peer_closed.set()
                return
            if not ready:
                continue
            with conn.io_lock:  # `sync` sees no unread bytes only once they are recorded
                try:
                    data = conn.sock.recv(65536)
                except OSError:
                    data = b""
                if data:
                    with self._lock:
                        conn.received += data
            if not data:
                conn.peer_closed.set()
                return
            if conn.unframable or conn.closed_by_us:
                continue
            pending += data
            while pending:
                try:
                    framed = _frame(pending)
                except _Unframable:
                    conn.unframable = True
                    break
                if framed is None:
                    break
                (method, target, version, headers, body), used = framed
                request = RawRequest(conn, method, target, version, headers, body, pending[:used])
                pending = pending[used:]
                with self._lock:
                    conn.requests.append(request)
                    self.requests.append(request)
                if not self._answer(conn, request):
                    break

    def _answer(self, conn: RawConnection, request: RawRequest) -> bool:
        """Write the reply; False once our side is closed."""
        with self._lock:
            spec = self.replies.popleft() if self.replies else self.default_reply
        if callable(spec):
            spec = spec(request)
        if spec is None:
            return True
        reply = spec if isinstance(spec, Reply) else Reply([spec])
        try:
            for piece in reply.pieces:
                if isinstance(piece, float | int):
                    time.sleep(piece)
                else:
                    conn.sock.sendall(piece)
            if reply.close:
                conn.closed_by_us = True
                conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return False
        return not reply.close
