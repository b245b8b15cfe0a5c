"""An upstream in a process of its own, for tests that kill it (SIGKILL), freeze it (SIGSTOP /
SIGCONT) or make it fail; run as ``python -m tests.support.chaos_upstream``.

It prints ``PORT <n>`` once listening on 127.0.0.1. Every request is counted by its path
(``GET /__counts`` answers the counts as JSON and is not counted itself).

  GET /healthz           200 "ok" (503 while the health mode is "fail")
  POST /__mode/M         the app mode: ok | fail (every other path answers 503)
  POST /__health/M       the health mode: ok | fail
  anything else          200 JSON {"server": NAME, "method", "path", "body_length"} in mode ok

`ChaosUpstream` starts one and drives it from a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class _Server:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.health = "ok"
        self.counts: Counter[str] = Counter()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                status, payload = self.answer(method, target.split("?", 1)[0], body)
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\n"
                    f"{'connection: close' + chr(13) + chr(10) if close else ''}\r\n".encode()
                    + payload
                )
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/__counts":
            return 200, json.dumps(self.counts).encode()
        if path.startswith("/__mode/"):
            self.mode = path.rsplit("/", 1)[1]
            return 200, b"{}"
        if path.startswith("/__health/"):
            self.health = path.rsplit("/", 1)[1]
            return 200, b"{}"
        self.counts[path] += 1
        self.counts["*" if path != "/healthz" else "healthz"] += 1
        if path == "/healthz":
            return (200, b'"ok"') if self.health == "ok" else (503, b'"unhealthy"')
        if self.mode != "ok":
            return 503, json.dumps({"server": self.name, "error": "failing"}).encode()
        reply = {"server": self.name, "method": method, "path": path, "body_length": len(body)}
        return 200, json.dumps(reply).encode()


async def _main(name: str) -> None:
    server = _Server(name)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    print("PORT", listener.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()


class ChaosUpstream:
    """A chaos upstream process: `port`, `counts()`, `set_mode`, `set_health`, `kill`,
    `freeze`, `thaw`. Use as a context manager."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.chaos_upstream", name],
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"chaos upstream {name} did not start: {line!r}")
        self.port = int(line.split()[1])
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self) -> ChaosUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, path: str, method: str = "GET") -> bytes:
        req = urllib.request.Request(f"http://{self.address}{path}", method=method)
        with urllib.request.urlopen(req, timeout=5) as response:
            return response.read()

    def counts(self) -> Counter[str]:
        return Counter(json.loads(self._call("/__counts")))

    def set_mode(self, mode: str) -> None:
        self._call(f"/__mode/{mode}", "POST")

    def set_health(self, mode: str) -> None:
        self._call(f"/__health/{mode}", "POST")

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else "upstream"))
