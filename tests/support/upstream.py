"""A real HTTP/1.1 upstream for tests, on 127.0.0.1 port 0, in a thread of its own.

Requests are parsed with h11 (an independent parser); responses are written as raw bytes so a
test can choose the framing exactly. Paths:

  /echo...              JSON: method, target, headers, body length and sha256
  /bytes/N              N bytes with Content-Length
  /chunked/N            N bytes, chunked
  /close/N              N bytes delimited by closing the connection
  /slow/MS              wait MS milliseconds, then 200 "slow"
  /status/CODE          that status, empty body (none at all for 204/304)
  /hop                  a response carrying hop-by-hop headers
  /malformed            a response line that is not HTTP
  /reset                close without answering
  /partial              Content-Length 1000, 10 bytes, then close
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading

import h11

PATTERN = b"0123456789abcdef" * 4096  # 64 KiB


def _payload(n: int):
    while n > 0:
        piece = PATTERN[: min(n, len(PATTERN))]
        n -= len(piece)
        yield piece


def payload_digest(n: int) -> str:
    digest = hashlib.sha256()
    for piece in _payload(n):
        digest.update(piece)
    return digest.hexdigest()


class ServerThread:
    """An asyncio server on 127.0.0.1 port 0 in a thread of its own; subclasses write
    `_handle(reader, writer)`. Start with `with`; `port` once started."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None

    def __enter__(self):
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("upstream did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop)
        self._thread.join(10)

    def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in asyncio.all_tasks(self._loop):
            task.cancel()
        self._loop.call_soon(self._loop.stop)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class Upstream(ServerThread):
    """Start with `with Upstream() as up:`; `up.port`, `up.connections`, `up.requests`."""

    def __init__(self) -> None:
        super().__init__()
        self.connections = 0
        self.requests: list[dict] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = None
                body = hashlib.sha256()
                size = 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            return
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body.update(event.data)
                        size += len(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                record = {
                    "method": request.method.decode(),
                    "target": request.target.decode(),
                    "headers": [(k.decode(), v.decode()) for k, v in request.headers],
                    "body_length": size,
                    "body_sha256": body.hexdigest(),
                }
                self.requests.append(record)
                keep = await self._respond(request, record, writer)
                if not keep:
                    return
                # Responses are written raw, so h11 never saw them: carry the unread bytes
                # over to a fresh parser for the next request.
                leftover, closed = conn.trailing_data
                conn = h11.Connection(h11.SERVER)
                if leftover:
                    conn.receive_data(leftover)
                if closed:
                    conn.receive_data(b"")
        except (ConnectionError, h11.ProtocolError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def _respond(self, request, record, writer) -> bool:
        target = request.target.decode()
        path = target.split("?", 1)[0]
        parts = path.strip("/").split("/")
        head_only = request.method == b"HEAD"

        def send(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
            lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            if body and not head_only:
                writer.write(body)

        if parts[0] == "bytes":
            n = int(parts[1])
            send(200, [("content-length", str(n)), ("content-type", "application/octet-stream")])
            if not head_only:
                for piece in _payload(n):
                    writer.write(piece)
                    await writer.drain()
            return True
        if parts[0] == "chunked":
            n = int(parts[1])
            send(200, [("transfer-encoding", "chunked")])
            for piece in _payload(n):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True
        if parts[0] == "close":
            n = int(parts[1])
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
            for piece in _payload(n):
                writer.write(piece)
                await writer.drain()
            return False
        if parts[0] == "slow":
            await asyncio.sleep(int(parts[1]) / 1000)
            send(200, [("content-length", "4")], b"slow")
            return True
        if parts[0] == "status":
            code = int(parts[1])
            headers = [] if code in (204, 304) else [("content-length", "0")]
            send(code, headers)
            return True
        if parts[0] == "hop":
            send(
                200,
                [
                    ("content-length", "2"),
                    ("connection", "x-secret"),
                    ("keep-alive", "timeout=5"),
                    ("x-secret", "hidden"),
                    ("proxy-connection", "keep-alive"),
                    ("x-visible", "yes"),
                ],
                b"ok",
            )
            return True
        if parts[0] == "malformed":
            writer.write(b"THIS IS NOT HTTP\r\n\r\n")
            await writer.drain()
            return False
        if parts[0] == "reset":
            return False
        if parts[0] == "partial":
            send(200, [("content-length", "1000")], b"0123456789")
            await writer.drain()
            return False
        body = json.dumps(record).encode()
        send(200, [("content-type", "application/json"), ("content-length", str(len(body)))], body)
        await writer.drain()
        return True
