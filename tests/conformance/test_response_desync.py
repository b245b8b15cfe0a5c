"""Upstream desynchronisation: bytes after a complete response."""

from __future__ import annotations

from tests.conformance.test_response import ok_head
from tests.conformance.wire import TIMEOUT, connect, read_responses, send


def test_response_extra_bytes_after_message_not_reused(gw, up):
    # Upstream desync: a second, unsolicited response follows the first in the same write. The
    # gateway relays the first, drops the connection, and never serves the second to anyone.
    poison = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\npoison!"
    up.replies.append(ok_head(b"Content-Length: 2") + b"ok" + poison)
    for target in (b"/r", b"/next"):
        with connect(gw.port) as sock:
            send(sock, b"GET " + target + b" HTTP/1.1\r\nHost: gw.test\r\n\r\n")
            responses, _ = read_responses(sock, 1)
        assert gw.proc.poll() is None, f"the gateway died: exit status {gw.proc.returncode}"
        assert responses and responses[0].status == 200 and responses[0].body == b"ok", responses
    assert up.connections[0].wait_closed(TIMEOUT)
    assert [r.target for c in up.connections[1:] for r in c.requests] == [b"/next"]
