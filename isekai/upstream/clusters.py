"""The cluster registry: clusters (one per configured upstream) built from config, and every
upstream pool of the worker, kept across snapshots.

A reload builds new `Cluster` objects (each with a balancer from `balancer.make_balancer`), but a
target whose connection settings did not change keeps its `Pool`, so warm keep-alive connections
survive the swap. Pools no longer referenced by the newest snapshot are closed (their busy
connections finish first). The registry owns the pools, so it is what `sweep()` walks for
timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from isekai._core.counters import Counters
from isekai._core.upstream import Cluster, Pool, sweep_pools
from isekai.config.schema import Upstream
from isekai.upstream.balancer import DEFAULT_BALANCER, make_balancer


def _pool_key(upstream: Upstream, host: str, port: int) -> tuple:
    return (
        host,
        port,
        upstream.max_connections,
        upstream.max_keepalive_connections,
        upstream.keepalive_expiry,
        upstream.connect_timeout,
        upstream.read_timeout,
        upstream.pool_timeout,
    )


class ClusterRegistry:
    """Builds clusters for a snapshot and owns every pool of the worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: Counters | None = None) -> None:
        self._loop = loop
        self._counters = counters  # gives each cluster its upstream latency slot
        self._pools: dict[tuple, Pool] = {}
        self.clusters: dict[str, Cluster] = {}

    def build(self, upstreams: Mapping[str, Upstream]) -> dict[str, Cluster]:
        """Clusters for ``upstreams``; pools of unchanged targets are reused."""
        pools: dict[tuple, Pool] = {}
        self.clusters = {
            name: self._cluster(name, upstream, pools) for name, upstream in upstreams.items()
        }
        for key, pool in self._pools.items():
            if key not in pools:
                pool.close()
        self._pools = pools
        return self.clusters

    def update(self, name: str, upstream: Upstream | None) -> Cluster | None:
        """Build (or, with None, drop) the cluster of one upstream, the others untouched;
        pools nothing uses any more are closed."""
        if upstream is None:
            self.clusters.pop(name, None)
            cluster = None
        else:
            cluster = self.clusters[name] = self._cluster(name, upstream, self._pools)
        used = {id(pool) for each in self.clusters.values() for pool in each.pools}
        for key, pool in list(self._pools.items()):
            if id(pool) not in used:
                pool.close()
                del self._pools[key]
        return cluster

    def _cluster(self, name: str, upstream: Upstream, pools: dict[tuple, Pool]) -> Cluster:
        # a cluster whose targets take pools from ``pools`` (new ones are added to it), else
        # from the current ones, else new
        members = []
        for target in upstream.targets:
            key = _pool_key(upstream, target.host, target.port)
            pool = pools.get(key) or self._pools.get(key)
            if pool is None:
                pool = Pool(
                    target.host,
                    target.port,
                    max_connections=upstream.max_connections,
                    max_keepalive_connections=upstream.max_keepalive_connections,
                    keepalive_expiry=upstream.keepalive_expiry,
                    connect_timeout=upstream.connect_timeout,
                    read_timeout=upstream.read_timeout,
                    pool_timeout=upstream.pool_timeout,
                    loop=self._loop,
                )
            pools[key] = pool
            members.append(pool)
        cluster = Cluster(name, make_balancer(DEFAULT_BALANCER, members))
        if self._counters is not None:
            cluster.slot = self._counters.upstream_slot(name)
        return cluster

    def status(self) -> dict:
        """Per upstream, its targets and their connections (for the admin API)."""
        return {
            name: {
                "balancer": DEFAULT_BALANCER,
                "targets": [
                    {
                        "target": f"{pool.host}:{pool.port}",
                        "open": pool.total,
                        "idle": pool.idle_count,
                        "busy": pool.busy_count,
                        "waiting": pool.waiting_count,
                        "opened_total": pool.connections_opened,
                    }
                    for pool in cluster.pools
                ],
            }
            for name, cluster in self.clusters.items()
        }

    def pool_stats(self) -> list[list]:
        """One row per (upstream, target): ``[upstream, "host:port", idle, active, waiting,
        created, connect_failures, pool_timeouts, last_connect_failed]`` (JSON-compatible;
        counts since the pool was made)."""
        return [
            [
                name,
                f"{pool.host}:{pool.port}",
                pool.idle_count,
                pool.busy_count,
                pool.waiting_count,
                pool.connections_opened,
                pool.connect_failures,
                pool.pool_timeouts,
                pool.last_connect_failed,
            ]
            for name, cluster in self.clusters.items()
            for pool in cluster.pools
        ]

    def sweep(self, now: float = -1.0) -> None:
        """Apply connect, read and pool-wait timeouts and expire idle connections (``now`` on
        the `_core` clock; by default the current time)."""
        sweep_pools(self._pools.values(), now)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}
