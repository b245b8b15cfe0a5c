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

__all__ = ["circuit_breakers", "health", "load_balancer", "ready", "status", "websockets"]

log = logging.getLogger("isekai.admin")

READY_TIMEOUT = 2.0  # seconds the store has to answer a readiness probe


async def health(request: web.Request) -> web.Response:
    return ok({"status": "ok"}, message="isekai is running")


async def ready(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    try:
        revision = await asyncio.wait_for(ctx.store.revision(), READY_TIMEOUT)
    except Exception as exc:  # any failure means "not ready", never a 500
        log.warning("readiness: the store is not reachable: %s", exc)
        raise ApiError(503, "not_ready", "the store is not reachable") from None
    return ok({"status": "ready", "store": "ok", "store_revision": revision})


async def status(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    current = ctx.current or ctx.config
    providers = ctx.status
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
        }
    )


def _stats(provider: Callable[[], Mapping[str, Any]]) -> dict[str, Any]:
    return dict(provider())


async def load_balancer(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    return ok(_stats(ctx.status.load_balancer))


async def circuit_breakers(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    return ok(_stats(ctx.status.circuit_breakers))


async def websockets(request: web.Request) -> web.Response:
    ctx: AdminContext = request.app[CTX]
    return ok(_stats(ctx.status.websockets))
