"""The gateway entry point: one process, or a master with forked workers.

`serve(config)` with ``workers: 1`` runs the whole gateway in this process: a `Worker` (which
also runs the active health checks), and the control plane (admin API and store) when
``admin.enabled``; SIGHUP re-reads ``config.source``
and SIGTERM/SIGINT drain. With more workers this process becomes the master (`isekai.master`),
which forks the workers and the admin process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import uvloop

from isekai import __version__, master
from isekai.admin.context import StatusProviders
from isekai.admin.observe import MetricsServer, Scrape
from isekai.config.changes import Change
from isekai.config.reload import keep_running, read_config, warn_restart_needed
from isekai.config.schema import Config
from isekai.control import ControlPlane
from isekai.errors import ConfigError
from isekai.observability.metrics import Gathered, ReloadCounts
from isekai.observability.request_log_feed import LogFeed
from isekai.observability.tracing import check_exporter
from isekai.process.signals import Signals
from isekai.process.sockets import format_address, raise_fd_limit
from isekai.store import StoreError
from isekai.worker import Worker, until_stopped

__all__ = ["serve"]

log = logging.getLogger("isekai.worker")


class _FileReloader:
    """SIGHUP in a single-process gateway: re-read the file and swap (merged with the store
    when the admin API runs)."""

    def __init__(self, worker: Worker, plane: ControlPlane | None = None) -> None:
        self.worker = worker
        self.plane = plane
        self.warned: dict[str, object] = {}
        self.reloads = ReloadCounts()

    def __call__(self) -> None:
        worker = self.worker
        if worker.stopping:
            log.info("SIGHUP ignored: shutting down")
            return
        source = worker.snapshot.config.source
        try:
            new, text = read_config(source)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            self.reloads.failed += 1
            return
        warn_restart_needed(new, worker.snapshot.config, self.warned)
        if self.plane is not None:
            asyncio.ensure_future(self._through_plane(new, text))
            return
        try:
            snapshot = worker.swap(keep_running(new, worker.snapshot.config))
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            self.reloads.failed += 1
            return
        except Exception:
            log.exception("reload failed; keeping config version %d", worker.snapshot.version)
            self.reloads.failed += 1
            return
        self.reloads.ok += 1
        log.info("config reloaded (version %d)", snapshot.version)

    async def _through_plane(self, new: Config, text: str) -> None:
        try:
            await self.plane.reload(new, text)
        except ConfigError as exc:
            log.error("reload rejected: %s", exc)
            self.reloads.failed += 1
        except Exception:
            log.exception("reload failed; keeping config version %d", self.worker.snapshot.version)
            self.reloads.failed += 1
        else:
            self.reloads.ok += 1
            log.info("config reloaded (version %d)", self.worker.snapshot.version)


async def _serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    plane = None
    if config.admin.enabled:
        try:
            plane = await ControlPlane.open(config, read_config(config.source)[1])
        except (ConfigError, StoreError) as exc:
            log.error("cannot start the control plane: %s", exc)
            return 1
        config = plane.config
    worker = Worker(config, loop)
    try:
        await worker.start()
    except OSError as exc:
        log.error("%s", exc)
        worker.abort()
        if plane is not None:
            await plane.close()
        return 1
    for name, host, port in worker.addresses:
        log.info("listener %s on %s", name, format_address(host, port))
    reloader = _FileReloader(worker, plane)
    gather = worker_gather(worker, reloader.reloads)
    if plane is not None:
        plane.ctx.status = worker_status(worker, gather)

        async def apply(new: Config, changes: list[Change] | None) -> None:
            if changes is None:
                snapshot = worker.swap(keep_running(new, worker.snapshot.config))
            else:
                snapshot = worker.apply_changes(changes)
            log.info("config applied (version %d)", snapshot.version)

        try:
            await plane.start(apply)
        except OSError as exc:
            log.error("cannot start the admin API on %s: %s", config.admin.bind, exc)
            worker.abort()
            await plane.close()
            return 1
    feed = LogFeed(worker.state, config, plane.store if plane else None, purge=True)
    if feed.enabled:
        await feed.start()
        worker.stats_providers["logs"] = feed.stats
        worker.access_log = feed.access_log
    metrics_server = None
    settings = config.observability.metrics
    if settings.enabled and settings.bind is not None:
        scrape = Scrape(
            gather=gather,
            config=lambda: worker.snapshot.config,
            store=plane.store if plane is not None else None,
        )
        metrics_server = MetricsServer(scrape, settings.host, settings.port)
        try:
            await metrics_server.start()
        except OSError as exc:
            log.error("cannot start the metrics listener on %s: %s", settings.bind, exc)
            worker.abort()
            if feed.enabled:
                await feed.stop()
            if plane is not None:
                await plane.close()
            return 1
    worker.run_health_checks()  # one process: it checks for itself
    signals = Signals(loop, reload=reloader)
    signals.reopen.append(feed.reopen)
    log.info(
        "isekai serving %d routes, %d upstreams (config %s)",
        len(config.routes),
        len(config.upstreams),
        config.source,
    )
    code = await until_stopped(worker, signals)
    if metrics_server is not None:
        await metrics_server.stop()
    if feed.enabled:
        await feed.stop()
    if plane is not None:
        await plane.close()
    return code


def worker_gather(worker: Worker, reloads: ReloadCounts) -> Callable[[], Awaitable[Gathered]]:
    """The live statistics of a single-process gateway: its one worker's."""

    async def gather() -> Gathered:
        return Gathered(
            workers=[worker.stats()],
            reloads=reloads.as_dict(),
            expected=1,
            version=__version__,
        )

    return gather


def worker_status(worker: Worker, gather: Callable[[], Awaitable[Gathered]]) -> StatusProviders:
    """Status providers of the admin API for a single-process gateway."""
    return StatusProviders(
        workers=lambda: 1,
        config_version=lambda: worker.snapshot.version,
        gather=gather,
        probe=worker.probe,
    )


def serve(config: Config) -> int:
    """Run the gateway for ``config`` until stopped; return the exit code.

    With ``workers: 1`` everything runs in this process and SIGHUP reloads ``config.source``;
    with more, this process becomes the master (`isekai.master`) and forks the workers.
    """
    if config.observability.tracing.enabled:
        try:
            check_exporter()  # here, before any worker starts
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
    if config.workers > 1:
        return master.run(config)
    raise_fd_limit(config)
    return uvloop.run(_serve(config))
