"""``GET /metrics`` and the deep readiness check, on the admin listener and on the metrics one.

Both read the gateway's live numbers through a `Scrape`: ``gather()`` returns every worker's
statistics (`isekai.observability.metrics.Gathered`) — the worker itself in a single-process
gateway, or, with several workers, the master's answer collected over the control channel (a
worker that does not answer within the master's timeout is left out and the scrape says so in
``isekai_workers``; a scrape never waits on a busy worker for long and never blocks one).

Readiness (``GET /health/ready``) is 200 when every check passes and 503 otherwise, with the
checks in the body either way: the store answers (when there is one), every worker answered,
and each upstream's share of reachable targets is at least ``min_healthy_share`` (0 by
default: reported, not enforced). A target counts as reachable unless the latest connect to it
failed in every worker that tried.

`MetricsServer` is the ``observability.metrics.bind`` listener: ``/metrics`` and
``/health/ready`` only, without login (bind it where only your Prometheus can reach it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from isekai.admin.http import fail, listen, ok
from isekai.config.schema import Config
from isekai.observability.metrics import CONTENT_TYPE, Gathered, render, sum_workers

__all__ = ["SCRAPE", "MetricsServer", "Scrape", "metrics", "ready"]

log = logging.getLogger("isekai.admin")

CHECK_TIMEOUT = 2.0  # seconds the store and the workers have to answer a readiness probe
SCRAPE = web.AppKey("isekai_scrape", object)


@dataclass(eq=False)
class Scrape:
    """Where the live numbers come from. ``config()`` is the running config; ``store`` is
    None when the process has none (a metrics-only listener without the admin API)."""

    gather: Callable[[], Awaitable[Gathered]]
    config: Callable[[], Config]
    store: Any = None


async def metrics(request: web.Request) -> web.StreamResponse:
    scrape: Scrape = request.app[SCRAPE]
    settings = scrape.config().observability.metrics
    if not settings.enabled:
        return fail(404, "not_found", "metrics are off (observability.metrics.enabled)")
    gathered = await scrape.gather()
    body = render(gathered, settings.max_label_values)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def upstream_shares(gathered: Gathered, config: Config) -> dict[str, dict[str, Any]]:
    """Per configured upstream: targets, reachable targets and their share."""
    pools = sum_workers(gathered.workers).pools
    shares = {}
    for name, upstream in config.upstreams.items():
        targets = [f"{t.host}:{t.port}" for t in upstream.targets]
        down = [
            target
            for target in targets
            if (pool := pools.get((name, target))) is not None
            and pool.seen_in
            and pool.down_in == pool.seen_in
        ]
        share = (len(targets) - len(down)) / len(targets) if targets else 0.0
        shares[name] = {
            "targets": len(targets),
            "reachable": len(targets) - len(down),
            "share": round(share, 4),
            "unreachable": down,
        }
    return shares


async def ready(request: web.Request) -> web.Response:
    scrape: Scrape = request.app[SCRAPE]
    config = scrape.config()
    checks: dict[str, Any] = {}
    failing: list[str] = []
    if scrape.store is not None:
        try:
            revision = await asyncio.wait_for(scrape.store.revision(), CHECK_TIMEOUT)
        except Exception as exc:  # any failure means "not ready", never a 500
            log.warning("readiness: the store is not reachable: %s", exc)
            checks["store"] = {"ok": False, "error": "the store is not reachable"}
            failing.append("store")
        else:
            checks["store"] = {"ok": True, "revision": revision}
    try:
        gathered = await asyncio.wait_for(scrape.gather(), CHECK_TIMEOUT)
    except Exception as exc:
        log.warning("readiness: the workers did not answer: %s", exc)
        checks["workers"] = {"ok": False, "error": "the workers did not answer"}
        failing.append("workers")
    else:
        answered = len(gathered.workers)
        workers_ok = answered >= gathered.expected
        checks["workers"] = {"ok": workers_ok, "answered": answered, "expected": gathered.expected}
        if not workers_ok:
            failing.append("workers")
        minimum = config.observability.health.min_healthy_share
        shares = upstream_shares(gathered, config)
        low = sorted(name for name, share in shares.items() if share["share"] < minimum)
        checks["upstreams"] = {"ok": not low, "min_healthy_share": minimum, "upstreams": shares}
        if low:
            failing.append("upstreams")
    data = {"status": "not ready" if failing else "ready", "checks": checks}
    if "store" in checks and checks["store"].get("ok"):
        data["store"] = "ok"
        data["store_revision"] = checks["store"]["revision"]
    if failing:
        return fail(
            503, "not_ready", f"not ready: {', '.join(failing)} failing", checks=data["checks"]
        )
    return ok(data)


class MetricsServer:
    """The ``observability.metrics.bind`` listener (``/metrics``, ``/health/ready``)."""

    def __init__(self, scrape: Scrape, host: str, port: int) -> None:
        self.scrape = scrape
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app[SCRAPE] = self.scrape
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health/ready", ready)
        self._runner = web.AppRunner(app, access_log=None)
        self.port, url = await listen(self._runner, self.host, self.port)
        log.info("metrics on %s/metrics", url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
