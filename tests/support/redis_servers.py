"""Throwaway Redis processes for tests: a server, a Sentinel, a 3-node cluster, on free ports.

Tests that stop Redis, or need Sentinel or Cluster, must not touch the shared Redis
(``ISEKAI_TEST_REDIS_URL``); these start ``redis-server`` (``REDIS_SERVER``, default the one on
PATH) on 127.0.0.1 with no persistence, in a temporary directory, and always kill it: each is a
context manager (``with RedisServer() as server: ...``) whose exit kills the process even when
the test failed. Every wait (the server answering, the cluster agreeing) has a deadline.

- `RedisServer`: ``url``; ``stop()`` kills it (SIGKILL: like a crash), ``start()`` starts it
  again on the same port.
- `RedisSentinel(master)`: one ``redis-server --sentinel`` monitoring ``master`` as
  ``mymaster`` (quorum 1); ``url`` is the ``redis+sentinel://`` URL.
- `RedisCluster(3)`: three cluster-enabled servers joined by ``redis-cli --cluster create``
  (no replicas); ``url`` is the ``redis+cluster://`` URL, ``ports`` the nodes' ports.

Without ``redis-server`` the tests that use these skip (or fail under CI=true), as for the
shared services (`tests.support.services.unavailable`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.services import unavailable

__all__ = ["RedisCluster", "RedisSentinel", "RedisServer", "command", "free_port"]

START_TIMEOUT = 10.0  # seconds for a process to answer PING
CLUSTER_TIMEOUT = 20.0  # seconds for a new cluster to reach cluster_state:ok


def _binary(name: str) -> str:
    path = os.environ.get(name.upper().replace("-", "_")) or shutil.which(name)
    if not path:
        unavailable(f"{name} is not installed (needed for throwaway Redis processes)")
    assert path is not None
    return path


def free_port(bus: bool = False) -> int:
    """A TCP port of 127.0.0.1 free right now (``bus``: and the cluster bus port + 10000)."""
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if not bus:
            return port
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair for a cluster node")


def command(port: int, *args: str, timeout: float = 2.0) -> str:
    """One command to 127.0.0.1:port through a raw socket (RESP); the reply as text
    (an error reply raises RuntimeError)."""
    request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request.encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before a complete reply")
            data += chunk
            reply = _complete(data)
            if reply is not None:
                return reply


def _complete(data: bytes) -> str | None:
    if b"\r\n" not in data:
        return None
    head, _, rest = data.partition(b"\r\n")
    kind, body = head[:1], head[1:].decode()
    if kind == b"-":
        raise RuntimeError(body)
    if kind in (b"+", b":"):
        return body
    if kind == b"$":
        size = int(body)
        if size < 0:
            return ""
        return rest[:size].decode() if len(rest) >= size + 2 else None
    if kind == b"*":  # only short arrays of bulk strings are needed (SENTINEL get-master-...)
        items = []
        for _ in range(int(body)):
            if b"\r\n" not in rest:
                return None
            line, _, rest = rest.partition(b"\r\n")
            size = int(line[1:])
            if len(rest) < size + 2:
                return None
            items.append(rest[:size].decode())
            rest = rest[size + 2 :]
        return " ".join(items)
    raise RuntimeError(f"unexpected reply {data[:80]!r}")


def _wait(check, what: str, timeout: float, process: subprocess.Popen | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    problem: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {process.returncode}")
        try:
            if check():
                return
        except (OSError, RuntimeError) as exc:
            problem = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s ({problem})")


class _Process:
    """One redis-server process with a config file in its own directory."""

    def __init__(self, port: int, lines: list[str], sentinel: bool = False) -> None:
        self.port = port
        self.lines = lines
        self.sentinel = sentinel
        self.directory = Path(tempfile.mkdtemp(prefix=f"isekai-redis-{port}-"))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.directory / "redis.conf"
        base = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self.directory}"',
            "protected-mode no",
            'save ""',
            "appendonly no",
            "loglevel warning",
            f'logfile "{self.directory / "log.txt"}"',
        ]
        config.write_text("\n".join(base + self.lines) + "\n")
        args = [_binary("redis-server"), str(config)] + (["--sentinel"] if self.sentinel else [])
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait(self._answers, f"redis :{self.port}", START_TIMEOUT, self.process)

    def _answers(self) -> bool:
        try:
            return command(self.port, "PING") == "PONG"
        except RuntimeError as exc:  # an error reply is an answer too (requirepass)
            return str(exc).startswith("NOAUTH")

    def stop(self) -> None:
        """SIGKILL, then reap (a crash, not a shutdown)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisServer:
    """A plain throwaway redis-server (see the module's text)."""

    def __init__(self, extra: list[str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process = _Process(self.port, list(extra or []))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._process.stop()

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self._process.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.remove()


class RedisSentinel:
    """One Sentinel monitoring ``master`` (a started `RedisServer`) as ``service``."""

    def __init__(self, master: RedisServer, service: str = "mymaster") -> None:
        self.port = free_port()
        self.service = service
        self._process = _Process(
            self.port,
            [
                f"sentinel monitor {service} 127.0.0.1 {master.port} 1",
                f"sentinel down-after-milliseconds {service} 5000",
            ],
            sentinel=True,
        )

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.service}"

    def __enter__(self) -> RedisSentinel:
        try:
            self._process.start()
            _wait(
                lambda: bool(
                    command(self.port, "SENTINEL", "get-master-addr-by-name", self.service)
                ),
                f"sentinel :{self.port}",
                START_TIMEOUT,
            )
        except BaseException:
            self._process.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._process.remove()


class RedisCluster:
    """``size`` cluster-enabled servers joined into one cluster (no replicas)."""

    def __init__(self, size: int = 3) -> None:
        self.ports: list[int] = []
        for _ in range(size):
            port = free_port(bus=True)
            while port in self.ports:
                port = free_port(bus=True)
            self.ports.append(port)
        self._processes = [
            _Process(
                port,
                [
                    "cluster-enabled yes",
                    f"cluster-config-file nodes-{port}.conf",
                    "cluster-node-timeout 5000",
                ],
            )
            for port in self.ports
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])

    def __enter__(self) -> RedisCluster:
        try:
            for process in self._processes:
                process.start()
            nodes = [f"127.0.0.1:{port}" for port in self.ports]
            subprocess.run(
                [_binary("redis-cli"), "--cluster", "create", *nodes]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=CLUSTER_TIMEOUT,
                check=True,
            )
            for port in self.ports:
                _wait(
                    lambda port=port: "cluster_state:ok" in command(port, "CLUSTER", "INFO"),
                    f"cluster node :{port}",
                    CLUSTER_TIMEOUT,
                )
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def _remove(self) -> None:
        for process in self._processes:
            process.remove()
