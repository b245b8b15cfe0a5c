"""What the built-in policy families share inside one worker: `PolicyEnvironment`.

A family's builder gets the worker's environment beside its config (``build(config, env)``):
the consumer directory (`ConsumerDirectory`: the consumers of the running config, with the
indexes the credential families keep over them), and connections that many policy instances
share and that must live as long as the worker, not one instance: one HTTP client session
(JWKS, OIDC discovery, token introspection) and one Redis client per URL (nonces, rate
limits; every URL form of `isekai.config.redis_url`: one server, TLS, a Unix socket, Sentinel,
Cluster). Both are made on first use, on the worker's running loop, and closed with the
worker (`aclose`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from isekai.policies.rate_limit import RateLimitTally

__all__ = ["ConsumerDirectory", "PolicyEnvironment"]

log = logging.getLogger("isekai.policies")

REDIS_CONNECT_TIMEOUT = 2.0  # seconds to connect to a Redis (or a Sentinel, a cluster node)
REDIS_SOCKET_TIMEOUT = 5.0  # seconds a Redis command may wait for its answer


class ConsumerDirectory:
    """The consumers of the running config by name, followed on every snapshot.

    ``update(consumers)`` replaces the set (each item has a ``name``); indexes that other
    modules keep over it (credential lookups) register with ``on_update(callback)`` and are
    rebuilt from the same items, so a request never sees a consumer and an index that
    disagree. ``version`` grows with every update that changed something.
    """

    def __init__(self) -> None:
        self._by_name: Mapping[str, Any] = MappingProxyType({})
        self._items: tuple[Any, ...] = ()
        self._listeners: list[Callable[[tuple[Any, ...]], None]] = []
        self.version = 0

    def update(self, consumers: Iterable[Any]) -> None:
        items = tuple(consumers)
        if items == self._items:
            return
        self._items = items
        self._by_name = MappingProxyType({item.name: item for item in items})
        self.version += 1
        for callback in self._listeners:
            callback(items)

    def on_update(self, callback: Callable[[tuple[Any, ...]], None]) -> None:
        """Call ``callback(items)`` now and after every change."""
        self._listeners.append(callback)
        callback(self._items)

    def get(self, name: str) -> Any | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)


class PolicyEnvironment:
    """Shared by every policy instance of one worker (see the module's text)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None = None,
        workers: int = 1,
        shared_memory: Any = None,
        rate_limit_memory: int | None = None,
    ) -> None:
        self.loop = loop
        # how many workers serve the config (a family keeping state per worker may warn)
        self.workers = workers
        self.consumers = ConsumerDirectory()
        # the running config's `security` section (isekai.config.schema.Security): the API key
        # pepper; set by the worker on every snapshot, before the consumers
        self.security: Any = None
        # name -> callable returning JSON-compatible numbers, shipped with the worker's
        # statistics (the worker merges these into its own `stats_providers`)
        self.stats_providers: dict[str, Callable[[], Any]] = {}
        self._http: Any = None
        self._redis: dict[str, Any] = {}
        self._redis_owners: list[Any] = []  # what made a client and must be closed too
        # the rate-limit table: over `shared_memory` (a mapping the master made before forking
        # the workers, so every worker of the host counts in it) or, without one, private and
        # of `rate_limit_memory` bytes (single-process mode; None: the table's default size)
        self.shared_memory = shared_memory
        self.rate_limit_memory = rate_limit_memory
        self._rate_table: Any = None
        # the decisions of the rate_limit instances (isekai.policies.rate_limit), for /metrics
        self.rate_limits = RateLimitTally()
        self.stats_providers["rate_limits"] = self.rate_limits.rows

    def http(self) -> Any:
        """The worker's `aiohttp.ClientSession` (made on first use; call it on the loop)."""
        if self._http is None or self._http.closed:
            import aiohttp

            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=10), raise_for_status=False
            )
        return self._http

    def rate_table(self) -> Any:
        """The worker's `isekai._core.ratelimit.LimitTable` (made on first use)."""
        if self._rate_table is None:
            from isekai._core.ratelimit import LimitTable

            region = self.shared_memory
            size = len(region) if region is not None else self.rate_limit_memory
            if size is None:
                self._rate_table = LimitTable()
                return self._rate_table
            # as many whole buckets of slots as the memory holds
            bucket = LimitTable.bytes_for(16) - LimitTable.bytes_for(8)
            header = LimitTable.bytes_for(8) - bucket
            slots = max(1, (size - header) // bucket) * 8
            if region is None:
                self._rate_table = LimitTable(slots=slots)
            else:
                view = memoryview(region)[: LimitTable.bytes_for(slots)]
                self._rate_table = LimitTable(view, slots)
        return self._rate_table

    def redis(self, url: str) -> Any:
        """The worker's Redis client for ``url`` (made on first use; call it on the loop).

        Every form of `isekai.config.redis_url` is served: ``redis://``, ``rediss://`` and
        ``unix://`` give a `redis.asyncio.Redis`; ``redis+sentinel://`` the master's client
        (`redis.asyncio.sentinel.Sentinel.master_for`, which follows a failover);
        ``redis+cluster://`` a `redis.asyncio.cluster.RedisCluster`. Connections retry once
        (a pooled connection that died since its last use is replaced), connect within
        `REDIS_CONNECT_TIMEOUT` seconds; callers bound each command with their own timeout.
        """
        client = self._redis.get(url)
        if client is None:
            client = self._redis[url] = self._make_redis(url)
        return client

    def _make_redis(self, url: str) -> Any:
        import redis.asyncio as redis_asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialWithJitterBackoff

        from isekai.config.redis_url import parse_redis_url

        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), 1)
        try:
            parsed = parse_redis_url(url)
        except ValueError:
            # a URL checked by an older, looser rule (the hmac nonce store's): redis-py's own
            return redis_asyncio.Redis.from_url(url, retry=retry)
        common: dict[str, Any] = {
            "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
            "socket_timeout": REDIS_SOCKET_TIMEOUT,
        }
        if parsed.username is not None:
            common["username"] = parsed.username
        if parsed.password is not None:
            common["password"] = parsed.password
        if parsed.scheme == "redis+cluster":
            from redis.asyncio.cluster import ClusterNode, RedisCluster

            nodes = [ClusterNode(host, port) for host, port in parsed.hosts]
            return RedisCluster(startup_nodes=nodes, retry=retry, **common)
        if parsed.scheme == "redis+sentinel":
            from redis.asyncio.sentinel import Sentinel

            sentinel_kwargs = {k: v for k, v in common.items() if k.startswith("socket_")}
            sentinel = Sentinel(
                list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, retry=retry, **common
            )
            self._redis_owners.append(sentinel)
            assert parsed.service is not None
            return sentinel.master_for(parsed.service, db=parsed.db)
        return redis_asyncio.Redis.from_url(url, retry=retry, **common)

    async def aclose(self) -> None:
        """Close what was opened (the worker is stopping)."""
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
        for client in (*self._redis.values(), *self._redis_owners):
            with contextlib.suppress(Exception):
                await client.aclose()
        self._redis.clear()
        self._redis_owners.clear()
