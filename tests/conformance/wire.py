"""Raw-socket client helpers and the shared assertions of the conformance suite.

Responses from the gateway are framed by a small parser of our own (status line, CRLF headers,
Content-Length or chunked or close-delimited body), strict enough to notice a truncated message.
What the upstream received is checked with h11, an HTTP/1.1 parser independent of llhttp.

No test sleeps to let a late forward arrive: `settle` sends a barrier request on a new connection
through the same upstream and waits until the upstream has recorded it and read everything its
sockets hold, so whatever the gateway forwarded for the case under test is in the record by then.
"""

from __future__ import annotations

import itertools
import json
import re
import select
import socket
import time
from dataclasses import dataclass, field

import h11

from tests.support.raw_upstream import RawUpstream

TIMEOUT = 5.0  # upper bound for any single wait on a socket
BARRIER = b"/__barrier/"  # target prefix of the requests `settle` sends

TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
FIELD_VALUE = re.compile(rb"^[^\x00-\x08\x0a-\x1f\x7f]*$")  # no CTL but HTAB
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}


def config(
    upstream_port: int, *, limits: dict | None = None, trusted_proxies: list | None = None
) -> str:
    """Gateway YAML: one listener, the raw upstream, one catch-all route."""
    text = f"""
    listeners: [{{name: public, bind: "127.0.0.1:0"}}]
    upstreams:
      raw: {{targets: ["127.0.0.1:{upstream_port}"], read_timeout: 3s}}
    routes:
      - {{name: all, match: {{path: "/*"}}, upstream: raw}}
    """
    if limits:
        items = ", ".join(f"{k}: {v}" for k, v in limits.items())
        text += f"limits: {{{items}}}\n"
    if trusted_proxies is not None:
        text += "trusted_proxies: [" + ", ".join(f'"{c}"' for c in trusted_proxies) + "]\n"
    return text


# -- client side ---------------------------------------------------------------------------


@dataclass
class Received:
    """All bytes a client read, and how the stream ended."""

    data: bytes
    closed: bool  # the gateway closed the connection (FIN or RST) before the timeout
    elapsed: float


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def send(sock: socket.socket, data: bytes) -> None:
    """Send, tolerating a gateway that already closed (it may reject before reading it all)."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        pass


def read_until_close(sock: socket.socket, timeout: float = TIMEOUT) -> Received:
    started = time.monotonic()
    deadline = started + timeout
    data = bytearray()
    closed = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        data += chunk
    return Received(bytes(data), closed, time.monotonic() - started)


def read_responses(
    sock: socket.socket, n: int, timeout: float = TIMEOUT, head_only: bool = False
) -> tuple[list[Response], bytes]:
    """Read until `n` complete responses have arrived (or EOF / timeout)."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        responses, rest = parse_responses(data, head_only=head_only)
        if len([r for r in responses if r.complete]) >= n:
            return responses, rest
        left = deadline - time.monotonic()
        if left <= 0:
            return responses, rest
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return responses, rest
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return parse_responses(data, head_only=head_only, eof=True)
        data += chunk


def exchange(port: int, raw: bytes, timeout: float = TIMEOUT) -> Received:
    """Send `raw` on a new connection and read until the gateway closes it (or timeout)."""
    with connect(port) as sock:
        send(sock, raw)
        return read_until_close(sock, timeout)


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    complete: bool
    raw_head: bytes = b""

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        values = [v for k, v in self.headers if k.lower() == key]
        return b", ".join(values).decode("latin-1") if values else None

    def json(self) -> dict:
        return json.loads(self.body.decode())


STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) [^\r\n]*$")


def parse_responses(
    data: bytes, *, head_only: bool = False, eof: bool = False
) -> tuple[list[Response], bytes]:
    """Split a response stream; the last one may be incomplete. Returns (responses, leftover)."""
    out: list[Response] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos:end]
        lines = head.split(b"\r\n")
        m = STATUS_LINE.match(lines[0])
        assert m, f"bad status line from the gateway: {lines[0]!r}"
        status = int(m.group(1))
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            assert colon and TOKEN.match(name), f"bad header line from the gateway: {line!r}"
            headers.append((name, value.strip(b" \t")))
        body_start = end + 4
        resp = Response(status, headers, b"", False, data[pos:end])
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if head_only or status in (204, 304) or 100 <= status < 200:
            resp.complete = True
            pos = body_start
        elif te is not None:
            assert te.lower() == "chunked", te
            body, used = _dechunk(data, body_start)
            resp.body = body
            if used is None:
                out.append(resp)
                return out, b""
            resp.complete = True
            pos = used
        elif cl is not None:
            n = int(cl)
            resp.body = data[body_start : body_start + n]
            if len(resp.body) < n:
                out.append(resp)
                return out, b""
            resp.complete = True
            pos = body_start + n
        else:
            resp.body = data[body_start:]
            resp.complete = eof
            out.append(resp)
            return out, b""
        out.append(resp)
    return out, data[pos:]


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int | None]:
    body = bytearray()
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return bytes(body), None
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n", pos)
            while end >= 0 and end != pos:  # skip trailer fields
                pos = end + 2
                end = data.find(b"\r\n", pos)
            if end < 0:
                return bytes(body), None
            return bytes(body), end + 2
        if len(data) < pos + size + 2:
            body += data[pos : pos + size]
            return bytes(body), None
        body += data[pos : pos + size]
        assert data[pos + size : pos + size + 2] == b"\r\n", "bad chunk framing from the gateway"
        pos += size + 2


def assert_json_error(resp: Response, status: int | tuple[int, ...]) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status in statuses, f"expected {statuses}, got {resp.status}: {resp.body[:300]!r}"
    assert resp.complete
    assert (resp.header("content-type") or "").startswith("application/json")
    payload = resp.json()
    assert payload["success"] is False, payload
    assert payload.get("error") or payload.get("message"), payload


# -- upstream side ---------------------------------------------------------------------------


@dataclass
class Forwarded:
    """A request as received by the upstream, parsed strictly by h11."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # raw names, in order
    body: bytes
    head: bytes

    def values(self, name: str) -> list[bytes]:
        key = name.lower().encode()
        return [v for k, v in self.headers if k.lower() == key]

    def one(self, name: str) -> str:
        values = self.values(name)
        assert len(values) == 1, f"{name}: {values!r}"
        return values[0].decode("latin-1")


@dataclass
class Parsed:
    requests: list[Forwarded] = field(default_factory=list)
    incomplete: bool = False  # a request was begun but not finished


def parse_forwarded(data: bytes) -> Parsed:
    """Parse what an upstream connection received; any protocol violation fails the test."""
    out = Parsed()
    while data:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        request = None
        body = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise AssertionError(
                    f"upstream received a malformed request: {exc}: {data!r}"
                ) from exc
            if event is h11.NEED_DATA:
                out.incomplete = True
                return out
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert request is not None
        head_end = data.find(b"\r\n\r\n")
        head = data[: head_end + 4]
        check_head(head)
        out.requests.append(
            Forwarded(
                request.method,
                request.target,
                list(request.headers.raw_items()),
                bytes(body),
                head,
            )
        )
        data = conn.trailing_data[0]
    return out


def check_head(head: bytes) -> None:
    """A head the gateway wrote upstream: CRLF lines, token names, `name: value`, no folding."""
    assert head.endswith(b"\r\n\r\n"), head
    lines = head[:-4].split(b"\r\n")
    assert re.match(rb"^[A-Z]+ \S+ HTTP/1\.1$", lines[0]), lines[0]
    for line in lines[1:]:
        assert b"\n" not in line and b"\r" not in line, line
        name, colon, value = line.partition(b":")
        assert colon and TOKEN.match(name), f"bad header line upstream: {line!r}"
        assert FIELD_VALUE.match(value), f"bad header value upstream: {line!r}"


def check_framing(req: Forwarded) -> None:
    """Exactly one framing field, lower-case Host first, nothing hop-by-hop."""
    lengths = req.values("content-length")
    codings = req.values("transfer-encoding")
    assert len(lengths) + len(codings) <= 1, req.head
    if codings:
        assert codings[0].lower() == b"chunked", req.head
    assert req.headers[0][0].lower() == b"host", req.head
    assert len(req.values("host")) == 1, req.head
    for name, _ in req.headers:
        if name.lower() != b"transfer-encoding":
            assert name.lower() not in HOP_BY_HOP, req.head


def warm(port: int, up: RawUpstream) -> dict[int, int]:
    """One good request so the gateway holds an idle pooled upstream connection; returns the
    upstream byte baseline. With a warm pool, a head forwarded by mistake is written at once."""
    before = len(up.requests)
    with connect(port) as sock:
        send(sock, b"GET /warm HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert responses and responses[0].complete and responses[0].status == 200, responses
    assert up.wait_requests(before + 1)
    return up.snapshot()


_barriers = itertools.count()


def settle(port: int, up: RawUpstream, baseline: dict[int, int] | None = None) -> dict[int, bytes]:
    """Barrier: one request on a new client connection, answered through `up`. Once it has
    arrived and `up.sync()` returned, everything the gateway wrote upstream before it (for a case
    the client already saw answered or closed) is recorded. Returns the bytes received since
    `baseline` per connection, without the barrier request itself."""
    target = BARRIER + b"%d" % next(_barriers)
    with connect(port) as sock:
        send(sock, b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        responses, _ = read_responses(sock, 1)
    assert responses and responses[0].complete and responses[0].status == 200, responses
    arrived = up.wait_target(target, TIMEOUT)
    assert arrived is not None, "the barrier request never reached the upstream as a request"
    up.sync()
    seen = up.received_since(baseline or {})
    index = arrived.conn.index
    assert seen[index].endswith(arrived.raw), "bytes after the barrier request on its connection"
    seen[index] = seen[index][: -len(arrived.raw)]
    return {i: data for i, data in seen.items() if data}


def assert_rejected(
    port: int, up: RawUpstream, raw: bytes, status: int | tuple[int, ...] = 400
) -> Response:
    """The gateway answers `raw` with one JSON error, closes, and forwards nothing at all."""
    baseline = warm(port, up)
    got = exchange(port, raw)
    responses, rest = parse_responses(got.data, eof=got.closed)
    assert responses, f"no response; closed={got.closed}, data={got.data!r}"
    assert_json_error(responses[0], status)
    assert len(responses) == 1 and not rest, got.data
    assert got.closed, "the gateway kept the connection open after rejecting the request"
    assert settle(port, up, baseline) == {}, "the upstream received bytes of a rejected request"
    return responses[0]


def assert_rejected_mid_body(
    port: int, up: RawUpstream, raw: bytes, status: int | tuple[int, ...] = 400
) -> Response:
    """A request whose head is valid but whose body framing is not: the gateway may already have
    streamed the head (and part of the body) upstream, but the upstream never receives a complete
    request, the upstream connection is closed, and the client gets one JSON error and a close."""
    baseline = warm(port, up)
    got = exchange(port, raw)
    responses, rest = parse_responses(got.data, eof=got.closed)
    assert responses, f"no response; closed={got.closed}, data={got.data!r}"
    assert_json_error(responses[0], status)
    assert len(responses) == 1 and not rest, got.data
    assert got.closed, "the gateway kept the connection open after rejecting the request"
    assert_no_complete_request(port, up, baseline)
    return responses[0]


def assert_no_complete_request(port: int, up: RawUpstream, baseline: dict[int, int]) -> None:
    """After a barrier: nothing since `baseline` forms a complete request, and every upstream
    connection that got part of one has been closed by the gateway."""
    for index, data in settle(port, up, baseline).items():
        parsed = parse_forwarded(data)
        assert not parsed.requests, f"upstream received a complete request: {data!r}"
        conn = up.connections[index]
        assert conn.wait_closed(TIMEOUT), f"upstream connection {index} left open: {data!r}"


def assert_forwarded_once(port: int, up: RawUpstream, raw: bytes) -> Forwarded:
    """The gateway forwards `raw` as exactly one well-formed request and relays a 200."""
    baseline = up.snapshot()
    got = exchange_one(port, raw)
    assert got.status == 200 and got.body == b"ok", got
    data = b"".join(settle(port, up, baseline).values())
    parsed = parse_forwarded(data)
    assert len(parsed.requests) == 1 and not parsed.incomplete, data
    check_framing(parsed.requests[0])
    return parsed.requests[0]


def exchange_one(port: int, raw: bytes) -> Response:
    with connect(port) as sock:
        send(sock, raw)
        responses, _ = read_responses(sock, 1)
    assert responses and responses[0].complete, responses
    return responses[0]
