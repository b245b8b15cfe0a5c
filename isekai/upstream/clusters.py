"""The cluster registry: clusters (one per configured upstream) built from config, every upstream
pool of the worker, and every target's state, kept across snapshots.

A reload or admin change builds clusters only for upstreams whose settings changed: an unchanged
upstream keeps its `Cluster` (balancer position, rings, counters). A target keeps its `Target`
(health verdict, ejection, breaker, EWMA) while its upstream keeps that address, even when other
settings of the upstream change; and its `Pool` while its connection settings stay the same, so
warm keep-alive connections survive the swap. Pools no longer referenced by the newest snapshot
are closed (their busy connections finish first). The registry owns the pools, so it is what
`sweep()` walks for timeouts; the sweep is also when time passes for ejections and breakers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from isekai._core.cluster import Cluster
from isekai._core.counters import Counters
from isekai._core.target import Target
from isekai._core.upstream import Pool, monotonic_now, sweep_pools
from isekai.config.schema import Upstream
from isekai.upstream.balancer import make_balancer, options_for


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


def address_of(host: str, port: int) -> str:
    """A target's address as status, metrics and health verdicts name it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ClusterRegistry:
    """Builds clusters for a snapshot and owns every pool and target of the worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, counters: Counters | None = None) -> None:
        self._loop = loop
        self._counters = counters  # gives each cluster its upstream latency slot
        self._pools: dict[tuple, Pool] = {}
        self._targets: dict[tuple[str, str], Target] = {}
        self._verdicts: dict[tuple[str, str], bool] = {}  # health verdicts, also for the future
        self.clusters: dict[str, Cluster] = {}

    def build(self, upstreams: Mapping[str, Upstream]) -> dict[str, Cluster]:
        """Clusters for ``upstreams``; unchanged upstreams keep theirs, targets and pools of
        unchanged targets are reused."""
        pools: dict[tuple, Pool] = {}
        self.clusters = {
            name: self._cluster(name, upstream, pools) for name, upstream in upstreams.items()
        }
        for key, pool in self._pools.items():
            if key not in pools:
                pool.close()
        self._pools = pools
        self._forget_targets()
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
        self._forget_targets()
        return cluster

    def _forget_targets(self) -> None:
        live = {(c.name, t.address) for c in self.clusters.values() for t in c.targets}
        for key in [key for key in self._targets if key not in live]:
            del self._targets[key]

    def _cluster(self, name: str, upstream: Upstream, pools: dict[tuple, Pool]) -> Cluster:
        # a cluster whose targets take pools from ``pools`` (new ones are added to it), else
        # from the current ones, else new
        current = self.clusters.get(name)
        if current is not None and current.config == upstream:
            for target, spec in zip(current.targets, upstream.targets, strict=True):
                pools[_pool_key(upstream, spec.host, spec.port)] = target.pool
            return current
        members = []
        for spec in upstream.targets:
            key = _pool_key(upstream, spec.host, spec.port)
            pool = pools.get(key) or self._pools.get(key)
            if pool is None:
                pool = Pool(
                    spec.host,
                    spec.port,
                    max_connections=upstream.max_connections,
                    max_keepalive_connections=upstream.max_keepalive_connections,
                    keepalive_expiry=upstream.keepalive_expiry,
                    connect_timeout=upstream.connect_timeout,
                    read_timeout=upstream.read_timeout,
                    pool_timeout=upstream.pool_timeout,
                    loop=self._loop,
                )
            pools[key] = pool
            address = address_of(spec.host, spec.port)
            target = self._targets.get((name, address))
            if target is None:
                target = self._targets[(name, address)] = Target(name, address, pool, spec.weight)
                target.healthy = self._verdicts.get((name, address), True)
            target.pool = pool
            target.weight = spec.weight
            members.append(target)
        balancer = make_balancer(upstream.balancer, members, **options_for(upstream))
        cluster = Cluster(name, balancer, upstream.balancer)
        for target in members:
            target.owner = cluster  # the newest cluster decides what is selectable
        configure(cluster, upstream)
        cluster.config = upstream
        if self._counters is not None:
            cluster.slot = self._counters.upstream_slot(name)
        return cluster

    # -- health verdicts (from the active checker) -----------------------------------------------

    def set_health(self, upstream: str, target: str, healthy: bool) -> bool:
        """Apply an active health verdict; False when ``upstream`` has no such target (the
        verdict is kept for when it does)."""
        self._verdicts[(upstream, target)] = healthy
        cluster = self.clusters.get(upstream)
        return cluster is not None and cluster.set_health(target, healthy)

    def set_verdicts(self, verdicts: Iterable[tuple[str, str, bool]]) -> None:
        for upstream, target, healthy in verdicts:
            self.set_health(upstream, target, healthy)

    # -- statistics -------------------------------------------------------------------------------

    def status(self) -> dict:
        """Per upstream, its balancer and targets: connections and state (tests, debugging)."""
        now = monotonic_now()
        return {
            name: {
                "balancer": cluster.balancer_name,
                "targets": [
                    dict(
                        row,
                        open=target.pool.total,
                        idle=target.pool.idle_count,
                        busy=target.pool.busy_count,
                        waiting=target.pool.waiting_count,
                        opened_total=target.pool.connections_opened,
                    )
                    for target, row in zip(cluster.targets, cluster.target_stats(now), strict=True)
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

    def target_stats(self) -> list[dict[str, Any]]:
        """One dict per (upstream, target): balancer, health, ejection and breaker state
        (`Cluster.target_stats`)."""
        now = monotonic_now()
        return [row for cluster in self.clusters.values() for row in cluster.target_stats(now)]

    def cluster_stats(self) -> list[dict[str, Any]]:
        """One dict per upstream: load, retries, refusals (`Cluster.stats`)."""
        return [cluster.stats() for cluster in self.clusters.values()]

    def sweep(self, now: float = -1.0) -> None:
        """Apply connect, read and pool-wait timeouts, expire idle connections, end ejections
        and open breakers' waits (``now`` on the `_core` clock; by default the current
        time)."""
        if now < 0:
            now = monotonic_now()
        sweep_pools(self._pools.values(), now)
        for cluster in self.clusters.values():
            cluster.update(now)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools = {}


def configure(cluster: Cluster, upstream: Upstream) -> None:
    """Copy an upstream's resilience settings onto its cluster."""
    cluster.panic_threshold = upstream.panic_threshold / 100.0
    cluster.max_requests = upstream.max_requests or 0
    cluster.max_pending = upstream.max_pending or 0
    cluster.max_retries = upstream.max_retries or 0
    outlier = upstream.outlier
    if outlier is None:
        cluster.reset_ejections()  # (targets keep their state across upstream changes)
    else:
        cluster.outlier_failures = outlier.consecutive_failures
        cluster.base_ejection = outlier.base_ejection
        cluster.max_ejection = outlier.max_ejection
        cluster.max_ejection_share = outlier.max_ejection_percent / 100.0
    breaker = upstream.breaker
    if breaker is None:
        cluster.reset_breakers()
    else:
        cluster.failure_ratio = breaker.failure_ratio
        cluster.window = breaker.window
        cluster.min_requests = breaker.min_requests
        cluster.open_for = breaker.open_for
        cluster.half_open_requests = breaker.half_open_requests
        cluster.set_failure_statuses(breaker.failure_statuses)
    retry = upstream.retry
    if retry is not None:
        cluster.attempts = retry.attempts
        cluster.set_retry_on(retry.on)
        cluster.backoff = retry.backoff
        cluster.max_backoff = max(retry.max_backoff, retry.backoff)
        cluster.budget = retry.budget
        cluster.min_concurrency = retry.min_concurrency
        cluster.per_try_timeout = retry.per_try_timeout or 0.0
        cluster.overall_timeout = retry.overall_timeout or 0.0
        cluster.retry_non_idempotent = retry.retry_non_idempotent
        cluster.max_body = retry.max_body
    cluster.recompute()
