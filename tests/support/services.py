"""External services the tests may need (PostgreSQL, Redis, RabbitMQ): where they are and whether
they answer. Used by the `require_service` fixture in tests/conftest.py.

Each probe makes a real connection with a short timeout and speaks the first words of the
protocol, so "something listens on the port" is not mistaken for "the service is there":
PostgreSQL through asyncpg (authentication and database included), Redis with `PING` -> `+PONG`,
RabbitMQ with the AMQP 0-9-1 protocol header -> a `connection.start` method frame.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import pytest

from isekai.store.urls import redact_url

PROBE_TIMEOUT = 3.0  # seconds, for each connect and each read of a probe

DEFAULTS = {
    "postgres": ("ISEKAI_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    "redis": ("ISEKAI_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "amqp": ("ISEKAI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
}
DEFAULT_PORTS = {"postgres": 5432, "redis": 6379, "amqp": 5672}
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, most others): a missing service or tool is a failure."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip locally; under CI=true a test that cannot run is a failure, never a silent skip."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this must run, not skip)", pytrace=False)
    pytest.skip(reason)


def service_url(name: str) -> str:
    variable, default = DEFAULTS[name]
    return os.environ.get(variable) or default


def probe(name: str, url: str) -> str | None:
    """None when the service at `url` answers; otherwise why not (one line)."""
    try:
        PROBES[name](url)
    except Exception as exc:  # anything: refused, timeout, auth, wrong protocol, missing module
        return (
            f"{name} is not reachable at {redact_url(url)} ({type(exc).__name__}: {exc}); "
            f"set {DEFAULTS[name][0]}"
        )
    return None


def _address(name: str, url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[name]


def _recv_some(sock: socket.socket, at_least: int) -> bytes:
    data = b""
    while len(data) < at_least:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} bytes: {data[:80]!r}")
        data += chunk
    return data


def probe_postgres(url: str) -> None:
    import asyncpg  # the [postgres] extra; part of [dev]

    async def connect() -> None:
        conn = await asyncpg.connect(url, timeout=PROBE_TIMEOUT)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    asyncio.run(connect())


def probe_redis(url: str) -> None:
    with socket.create_connection(_address("redis", url), timeout=PROBE_TIMEOUT) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        reply = _recv_some(sock, 7)
    # -NOAUTH (a password is needed) still proves a Redis; the tests' URL carries the password
    if not (reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")):
        raise ConnectionError(f"not a Redis PING reply: {reply[:80]!r}")


def probe_amqp(url: str) -> None:
    with socket.create_connection(_address("amqp", url), timeout=PROBE_TIMEOUT) as sock:
        sock.sendall(AMQP_HEADER)
        frame = _recv_some(sock, 11)
    # method frame (type 1) on channel 0 whose payload starts class 10 (connection), method 10
    # (start); a server that wants another protocol version answers with its own header instead
    if frame[:1] != b"\x01" or frame[1:3] != b"\x00\x00" or frame[7:11] != b"\x00\x0a\x00\x0a":
        raise ConnectionError(f"not an AMQP 0-9-1 connection.start: {frame[:40]!r}")


PROBES: dict[str, Callable[[str], None]] = {
    "postgres": probe_postgres,
    "redis": probe_redis,
    "amqp": probe_amqp,
}
