"""Health, readiness and the gateway's status and statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from isekai import __version__
from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, iso_time, ok
from isekai.config import defaults
from isekai.observability import metrics
from isekai.observability.metrics import ClusterState, Gathered, TargetState

__all__ = ["circuit_breakers", "health", "load_balancer", "status", "websockets"]

log = logging.getLogger("isekai.admin")

GATHER_TIMEOUT = 3.0  # seconds the workers have to answer a status request


async def health(request: web.Request) -> web.Response:
    return ok({"status": "ok"}, message="isekai is running")


async def _gather(ctx: AdminContext) -> Gathered:
    try:
        return await asyncio.wait_for(ctx.status.gather(), GATHER_TIMEOUT)
    except TimeoutError:
        raise ApiError(503, "workers_unavailable", "the workers did not answer in time") from None


def _live(gathered: Gathered) -> dict[str, Any]:
    per_worker = []
    requests = active = accepted = in_flight = 0
    for stats in gathered.workers:
        counters = stats.get("counters", {})
        served = metrics.served(stats)
        connections = counters.get("connections", {})
        per_worker.append(
            {
                "pid": stats.get("pid"),
                "config_version": stats.get("config_version"),
                "requests": served,
                "connections": connections.get("active", 0),
                "in_flight": stats.get("in_flight", 0),
                "websocket_tunnels": stats.get("tunnels", 0),
            }
        )
        requests += served
        active += connections.get("active", 0)
        accepted += connections.get("total", 0)
        in_flight += stats.get("in_flight", 0)
    return {
        "workers_answered": len(gathered.workers),
        "requests": requests,
        "connections": active,
        "connections_accepted": accepted,
        "in_flight": in_flight,
        "worker_restarts": gathered.restarts,
        "config_reloads": dict(gathered.reloads),
        "per_worker": per_worker,
    }


async def status(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    current = ctx.current or ctx.config
    providers = ctx.status
    gathered = await _gather(ctx)
    return ok(
        {
            "version": __version__,
            "started_at": iso_time(ctx.started_at),
            "uptime": round(max(0.0, time.time() - ctx.started_at), 3),
            "workers": int(providers.workers()),
            "config_version": int(providers.config_version()),
            "routes": len(current.routes),
            "upstreams": len(current.upstreams),
            "policies": len(current.policies),
            "skipped_items": len(ctx.skipped),
            "skipped": [
                {"kind": item.kind, "name": item.name, "reason": item.reason}
                for item in ctx.skipped
            ],
            "live": _live(gathered),
        }
    )


_POOL_SUMS = (
    "open",
    "idle",
    "busy",
    "waiting",
    "opened_total",
    "connect_failures",
    "pool_timeouts",
)
_BREAKER_SETTINGS = ("failure_ratio", "window", "min_requests", "open_for", "half_open_requests")
_LIMITS = ("max_requests", "max_pending", "max_retries")


def _address(host: str, port: int) -> str:
    # a target's name in the workers' rows and in the metrics (`clusters.address_of`)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Rows:
    """The gathered workers' pool, target and cluster rows, by key, each with its worker's
    pid, in the workers' order."""

    def __init__(self, gathered: Gathered) -> None:
        self.pools: dict[tuple[str, str], dict[Any, dict[str, Any]]] = {}
        self.targets: dict[tuple[str, str], dict[Any, Mapping[str, Any]]] = {}
        self.clusters: dict[str, dict[Any, Mapping[str, Any]]] = {}
        self.pids: list[Any] = []
        for stats in gathered.workers:
            pid = stats.get("pid")
            self.pids.append(pid)
            for row in stats.get("pools", ()):
                upstream, target, idle, busy, waiting, created, failures, timeouts, down = row
                self.pools.setdefault((upstream, target), {})[pid] = {
                    "open": idle + busy,
                    "idle": idle,
                    "busy": busy,
                    "waiting": waiting,
                    "opened_total": created,
                    "connect_failures": failures,
                    "pool_timeouts": timeouts,
                    "reachable": not down,
                }
            for row in stats.get("targets", ()):
                self.targets.setdefault((row["upstream"], row["target"]), {})[pid] = row
            for row in stats.get("clusters", ()):
                self.clusters.setdefault(row["upstream"], {})[pid] = row
        self.checks = metrics.newest_checks(gathered.workers)

    def target(self, upstream: str, address: str) -> tuple[TargetState, dict[Any, Any]]:
        rows = self.targets.get((upstream, address), {})
        state = TargetState()
        for row in rows.values():
            state.add(row)
        return state, rows

    def cluster(self, upstream: str) -> tuple[ClusterState, dict[Any, Any]]:
        rows = self.clusters.get(upstream, {})
        state = ClusterState()
        for row in rows.values():
            state.add(row)
        return state, rows


def _breaker_counts(state: TargetState) -> dict[str, int]:
    return {name: state.breakers.get(name, 0) for name in metrics.BREAKER_STATES}


def _probe_at(next_probe_in: float | None, now: float) -> str | None:
    return None if next_probe_in is None else iso_time(now + next_probe_in)


def _health(upstream: Any, check: Mapping[str, Any] | None) -> dict[str, Any]:
    """The active checker's verdict on a target: "healthy", "unhealthy", or "unknown" (no
    check of the upstream, or none finished yet)."""
    if getattr(upstream, "health", None) is None or check is None:
        return {"health": "unknown", "healthy": None, "health_check": None}
    healthy = check.get("healthy")
    verdict = "unknown" if healthy is None else ("healthy" if healthy else "unhealthy")
    detail = {
        key: check.get(key)
        for key in (
            "checks",
            "failures",
            "consecutive_successes",
            "consecutive_failures",
            "last_status",
            "last_error",
            "last_check_age",
        )
    }
    return {"health": verdict, "healthy": healthy, "health_check": detail}


def _target_detail(row: Mapping[str, Any]) -> dict[str, Any]:
    # one worker's view of a target, as the per_worker lists show it
    return {
        "healthy": row.get("healthy"),
        "selectable": row.get("selectable"),
        "in_flight": row.get("in_flight", 0),
        "ewma_ms": row.get("ewma_ms", 0.0) or None,
        "ejected": row.get("ejected", False),
        "ejected_for": row.get("ejected_for", 0.0),
        "ejections": row.get("ejections", 0),
        "consecutive_failures": row.get("consecutive_failures", 0),
        "breaker": row.get("breaker", "closed"),
        "next_probe_in": row.get("next_probe_in") if row.get("breaker") == "open" else None,
        "breaker_opened": row.get("breaker_opened", 0),
        "requests": row.get("requests", 0),
        "failures": row.get("failures", 0),
    }


def _lb_target(name: str, upstream: Any, spec: Any, rows: _Rows, now: float) -> dict[str, Any]:
    address = _address(spec.host, spec.port)
    pools = rows.pools.get((name, f"{spec.host}:{spec.port}"), {})
    state, target_rows = rows.target(name, address)
    per_worker = []
    for pid in rows.pids:
        if pid not in pools and pid not in target_rows:
            continue
        entry: dict[str, Any] = {"pid": pid, **pools.get(pid, {})}
        if pid in target_rows:
            entry.update(_target_detail(target_rows[pid]))
        per_worker.append(entry)
    summed = {key: sum(pool[key] for pool in pools.values()) for key in _POOL_SUMS}
    reachable = not pools or any(pool["reachable"] for pool in pools.values())
    return {
        "target": address,
        "weight": getattr(spec, "weight", state.weight or 1),
        **_health(upstream, rows.checks.get((name, address))),
        "workers": state.workers,
        "healthy_in": state.healthy_in,
        "selectable_in": state.selectable_in,
        "in_flight": state.in_flight,
        "ewma_ms": state.ewma_ms,
        "ejected_in": state.ejected_in,
        "ejected_for": state.ejected_for,
        "ejections": state.ejections,
        "consecutive_failures": state.consecutive_failures,
        "breaker": {
            "state": state.breaker,
            **_breaker_counts(state),
            "next_probe_in": state.next_probe_in,
            "next_probe_at": _probe_at(state.next_probe_in, now),
            "opened_total": state.opened,
        },
        "requests": state.requests,
        "failures": state.failures,
        **summed,
        "reachable": reachable,
        "per_worker": per_worker,
    }


def _cluster_summary(cluster: ClusterState) -> dict[str, Any]:
    return {
        "in_flight": cluster.in_flight,
        "panic": cluster.panic_in > 0,
        "panic_in": cluster.panic_in,
        "retries": cluster.retries,
        "retries_active": cluster.retries_active,
        "retries_refused": cluster.retries_refused,
        "refused": {reason: cluster.refused.get(reason, 0) for reason in metrics.REFUSALS},
    }


async def load_balancer(request: web.Request) -> web.Response:
    """Every upstream: its balancer, load, panic mode, retries and refusals, and its targets
    with their weight, health verdict, balancer, ejection and breaker state and connections,
    summed over the workers (and per worker)."""
    ctx: AdminContext = request.app[CTX]
    current = ctx.current or ctx.config
    gathered = await _gather(ctx)
    now = time.time()
    rows = _Rows(gathered)
    data = {}
    for name, upstream in current.upstreams.items():
        cluster, cluster_rows = rows.cluster(name)
        data[name] = {
            "balancer": cluster.balancer
            or getattr(upstream, "balancer", None)
            or defaults.BALANCER,
            "health_checks": getattr(upstream, "health", None) is not None,
            **_cluster_summary(cluster),
            "targets": [_lb_target(name, upstream, spec, rows, now) for spec in upstream.targets],
            "per_worker": [
                {"pid": pid, **{k: v for k, v in row.items() if k not in ("upstream", "balancer")}}
                for pid, row in cluster_rows.items()
            ],
        }
    return ok(data)


def _settings(config: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {key: getattr(config, key, None) for key in names}


async def circuit_breakers(request: web.Request) -> web.Response:
    """Every upstream's circuit breakers: per target the most severe state of any worker, how
    many workers are in each state, the rolling window's requests and failures summed, the
    times it opened and the soonest next probe; the upstream limits and what they refused."""
    ctx: AdminContext = request.app[CTX]
    current = ctx.current or ctx.config
    gathered = await _gather(ctx)
    now = time.time()
    rows = _Rows(gathered)
    data = {}
    for name, upstream in current.upstreams.items():
        breaker = getattr(upstream, "breaker", None)
        settings = None
        if breaker is not None:
            settings = _settings(breaker, _BREAKER_SETTINGS)
            settings["failure_statuses"] = list(getattr(breaker, "failure_statuses", ()))
        cluster, _ = rows.cluster(name)
        targets = []
        overall = TargetState()
        for spec in upstream.targets:
            address = _address(spec.host, spec.port)
            state, target_rows = rows.target(name, address)
            overall.merge(state)
            window = state.window_requests
            targets.append(
                {
                    "target": address,
                    "state": state.breaker,
                    "states": _breaker_counts(state),
                    "window_requests": window,
                    "window_failures": state.window_failures,
                    "failure_ratio": round(state.window_failures / window, 4) if window else None,
                    "opened_total": state.opened,
                    "next_probe_in": state.next_probe_in,
                    "next_probe_at": _probe_at(state.next_probe_in, now),
                    "per_worker": [
                        {
                            "pid": pid,
                            "state": row.get("breaker", "closed"),
                            "window_requests": row.get("window_requests", 0),
                            "window_failures": row.get("window_failures", 0),
                            "opened_total": row.get("breaker_opened", 0),
                            "next_probe_in": row.get("next_probe_in")
                            if row.get("breaker") == "open"
                            else None,
                        }
                        for pid, row in target_rows.items()
                    ],
                }
            )
        data[name] = {
            "enabled": breaker is not None,
            "settings": settings,
            "state": overall.breaker,
            "limits": {
                **_settings(upstream, _LIMITS),
                "refused": {reason: cluster.refused.get(reason, 0) for reason in metrics.REFUSALS},
            },
            "targets": targets,
        }
    return ok(data)


async def websockets(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    gathered = await _gather(ctx)
    per_worker = [
        {"pid": stats.get("pid"), "open_tunnels": stats.get("tunnels", 0)}
        for stats in gathered.workers
    ]
    return ok(
        {
            "open_tunnels": sum(w["open_tunnels"] for w in per_worker),
            "per_worker": per_worker,
        }
    )
