"""Health, readiness and the gateway's status and statistics."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from isekai import __version__
from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, iso_time, ok
from isekai.config import defaults
from isekai.observability import metrics
from isekai.observability.metrics import Gathered

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


def _stats(provider: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    return dict(provider())


async def load_balancer(request: web.Request) -> web.Response:
    """Every upstream's targets with their connections summed over the workers (and per
    worker), whether they are reachable, and the balancer."""
    ctx: AdminContext = request.app[CTX]
    current = ctx.current or ctx.config
    gathered = await _gather(ctx)
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for stats in gathered.workers:
        for row in stats.get("pools", ()):
            upstream, target, idle, busy, waiting, created, failures, timeouts, down = row
            rows.setdefault((upstream, target), []).append(
                {
                    "pid": stats.get("pid"),
                    "open": idle + busy,
                    "idle": idle,
                    "busy": busy,
                    "waiting": waiting,
                    "opened_total": created,
                    "connect_failures": failures,
                    "pool_timeouts": timeouts,
                    "reachable": not down,
                }
            )
    data = {}
    for name, upstream in current.upstreams.items():
        targets = []
        for each in upstream.targets:
            target = f"{each.host}:{each.port}"
            per_worker = rows.get((name, target), [])
            summed = {
                key: sum(w[key] for w in per_worker)
                for key in (
                    "open",
                    "idle",
                    "busy",
                    "waiting",
                    "opened_total",
                    "connect_failures",
                    "pool_timeouts",
                )
            }
            reachable = not per_worker or any(w["reachable"] for w in per_worker)
            targets.append(
                {"target": target, **summed, "reachable": reachable, "per_worker": per_worker}
            )
        data[name] = {"balancer": defaults.BALANCER, "targets": targets}
    return ok(data)


async def circuit_breakers(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    return ok(_stats(ctx.status.circuit_breakers))


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
