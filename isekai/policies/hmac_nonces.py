"""Where the ``hmac`` family remembers nonces: `MemoryNonces` and `RedisNonces`.

A nonce is remembered for ``ttl`` seconds after the request that first used it was accepted;
seeing it again inside that time is a replay. Keys are `nonce_key(keyid, nonce)`: a SHA-256
of both, so two clients with different keys never collide, and a key's size does not depend
on what a client sends.

- `MemoryNonces`: a dict in insertion order (every entry has the same ttl, so it is also
  expiry order: expired entries are dropped from the front), bounded by ``capacity``. It is
  per worker: with several workers a replay sent to another worker is not seen, so the
  policy warns when it starts under ``workers`` > 1.
- `RedisNonces`: ``SET key 1 NX EX ttl``, atomic across workers and gateways sharing the
  Redis. An awaitable; errors and timeouts are the caller's to map (503 or allow).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["MemoryNonces", "RedisNonces", "nonce_key"]


def nonce_key(keyid: str, nonce: str) -> bytes:
    """The 32 bytes a (keyid, nonce) pair is remembered as."""
    return hashlib.sha256(f"{keyid}\x00{nonce}".encode("utf-8", "surrogatepass")).digest()


class MemoryNonces:
    """Nonces of one worker, each kept ``ttl`` seconds, at most ``capacity`` at a time."""

    def __init__(
        self, ttl: float, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self._until: dict[bytes, float] = {}

    def add(self, key: bytes) -> bool | None:
        """True: new (now remembered); False: seen inside the window (a replay); None: the
        store is full of live nonces (nothing remembered)."""
        now = self.clock()
        until = self._until
        while until:
            first = next(iter(until))
            if until[first] > now:
                break
            del until[first]
        if key in until:
            return False
        if len(until) >= self.capacity:
            return None
        until[key] = now + self.ttl
        return True

    def __len__(self) -> int:
        return len(self._until)


class RedisNonces:
    """Nonces in Redis (``client_of()`` gives the ``redis.asyncio`` client, made on the
    worker's loop on first use), under ``prefix`` + hex key, ``EX`` ``ttl`` (whole seconds,
    rounded up)."""

    def __init__(
        self, client_of: Callable[[], Any], prefix: str, ttl: float, timeout: float
    ) -> None:
        self.client_of = client_of
        self.prefix = prefix
        self.ttl = max(1, math.ceil(ttl))
        self.timeout = timeout

    async def add(self, key: bytes) -> bool:
        """True: new; False: a replay. Raises on any store failure (connection, timeout)."""
        client = self.client_of()
        name = self.prefix + key.hex()
        stored = await asyncio.wait_for(client.set(name, b"1", nx=True, ex=self.ttl), self.timeout)
        return bool(stored)
