"""Large bodies stream through the gateway with bounded memory, in both directions."""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import psutil
import pytest

from tests.support.client import connect, json_body, read_response
from tests.support.upstream import payload_digest

SIZE = 10 * 1024 * 1024
# Generous for a Python process (allocator slack, httptools buffers) yet far below the 10 MiB that
# buffering a whole body would cost.
MAX_GROWTH = 6 * 1024 * 1024


@pytest.fixture
def gw(start_gateway, upstream):
    return start_gateway(
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream.port}"]}}
        routes:
          - {{name: all, match: {{path: "/*"}}, upstream: app}}
        """
    )


class PeakRss:
    """Samples a process's RSS in a thread while the block runs."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _warm_up(gw) -> None:
    with connect(gw.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 65536\r\n\r\n")
        sock.sendall(b"x" * 65536)
        read_response(sock, method="POST")


def test_streaming_upload_10mib_bounded_memory(gw, upstream):
    _warm_up(gw)
    piece = bytes(range(256)) * 256  # 64 KiB
    digest = hashlib.sha256()
    with PeakRss(gw.proc.pid) as rss, connect(gw.port, timeout=60) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % SIZE)
        for _ in range(SIZE // len(piece)):
            sock.sendall(piece)
            digest.update(piece)
        status, _, body, _ = read_response(sock, method="POST")
    assert status == 200
    seen = json_body(body)
    assert seen["body_length"] == SIZE
    assert seen["body_sha256"] == digest.hexdigest()
    assert rss.growth < MAX_GROWTH, f"gateway RSS grew {rss.growth} bytes"


def test_streaming_chunked_upload_10mib(gw, upstream):
    piece = b"z" * 65536
    with connect(gw.port, timeout=60) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(SIZE // len(piece)):
            sock.sendall(b"10000\r\n" + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        status, _, body, _ = read_response(sock, method="POST")
    assert status == 200
    assert (
        json_body(body)["body_sha256"] == hashlib.sha256(piece * (SIZE // len(piece))).hexdigest()
    )


def test_streaming_download_10mib_to_slow_client_bounded_memory(gw, upstream):
    _warm_up(gw)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", gw.port))
    digest = hashlib.sha256()
    received = 0
    with PeakRss(gw.proc.pid) as rss, sock:
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % SIZE)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        digest.update(rest)
        received = len(rest)
        deadline = time.monotonic() + 60
        while received < SIZE and time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
            if received < SIZE // 2:
                time.sleep(0.002)  # a slow reader for the first half: backpressure must hold
    assert received == SIZE
    assert digest.hexdigest() == payload_digest(SIZE)
    assert rss.growth < MAX_GROWTH, f"gateway RSS grew {rss.growth} bytes"
