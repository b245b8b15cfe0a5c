"""One worker: a uvloop loop, the listeners, the current snapshot, timers, and shutdown.

`serve(config)` runs until SIGINT/SIGTERM, then stops accepting, lets requests in flight finish
(up to ``shutdown_timeout``) and returns 0. With ``workers: 1`` this is the whole gateway; the
master/worker split lands with the process-model work and reuses `Worker` unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket

import uvloop

from isekai._core.counters import Counters
from isekai._core.protocol import DownstreamProtocol, ServerState
from isekai._core.upstream import sweep_pools
from isekai.config.schema import Config
from isekai.gateway import Snapshot, build_snapshot
from isekai.upstream.cluster import ClusterRegistry

log = logging.getLogger("isekai.worker")

UPSTREAM_SWEEP_INTERVAL = 0.1  # seconds: granularity of connect/read timeouts
DOWNSTREAM_SWEEP_INTERVAL = 1.0  # seconds: granularity of keep-alive idle timeouts


class Worker:
    """Serves every listener of one config on the running loop."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.counters = Counters()
        self.registry = ClusterRegistry(loop)
        self.snapshot: Snapshot = build_snapshot(config, self.registry, self.counters)
        self.state = ServerState(self.snapshot.router, self.counters, loop)
        self._apply_limits(config)
        self.servers: list[asyncio.base_events.Server] = []
        self.addresses: list[tuple[str, str, int]] = []
        self._timers: list[asyncio.TimerHandle] = []

    def _apply_limits(self, config: Config) -> None:
        limits = config.limits
        self.state.max_request_line = limits.max_request_line
        self.state.max_header_bytes = limits.max_header_bytes
        self.state.max_header_count = limits.max_header_count
        self.state.keepalive_timeout = limits.keepalive_timeout
        self.state.max_requests_per_connection = limits.max_requests_per_connection

    def swap(self, config: Config) -> Snapshot:
        """Build a snapshot of ``config`` aside, then make it current in one assignment."""
        snapshot = build_snapshot(config, self.registry, self.counters, self.snapshot.version + 1)
        self.snapshot = snapshot
        self._apply_limits(config)
        self.state.router = snapshot.router
        return snapshot

    async def start(self) -> None:
        for listener in self.snapshot.config.listeners:
            server = await self.loop.create_server(
                lambda: DownstreamProtocol(self.state),
                host=listener.host or None,
                port=listener.port,
                reuse_port=True,
                backlog=4096,
            )
            self.servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                self.addresses.append((listener.name, host, port))
                shown = f"[{host}]" if sock.family == socket.AF_INET6 else host
                log.info("listener %s on http://%s:%d", listener.name, shown, port)
        self._tick_upstream()
        self._tick_downstream()

    def _tick_upstream(self) -> None:
        sweep_pools()
        self._timers.append(self.loop.call_later(UPSTREAM_SWEEP_INTERVAL, self._tick_upstream))
        if len(self._timers) > 8:
            self._timers = self._timers[-2:]

    def _tick_downstream(self) -> None:
        self.state.sweep()
        self._timers.append(self.loop.call_later(DOWNSTREAM_SWEEP_INTERVAL, self._tick_downstream))

    def in_flight(self) -> int:
        return sum(1 for proto in self.state.connections if proto.busy)

    async def drain(self, timeout: float) -> None:
        """Stop accepting, wait for requests in flight (bounded by ``timeout``), close the rest."""
        for server in self.servers:
            server.close()
        deadline = self.loop.time() + timeout
        while self.in_flight() and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for timer in self._timers:
            timer.cancel()
        for proto in list(self.state.connections):
            proto.shutdown()
        self.registry.close()


async def _serve(config: Config) -> int:
    loop = asyncio.get_running_loop()
    worker = Worker(config, loop)
    await worker.start()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "isekai serving %d routes, %d upstreams (config %s)",
        len(config.routes),
        len(config.upstreams),
        config.source,
    )
    await stop.wait()
    log.info("shutting down: draining requests in flight (up to %.0fs)", config.shutdown_timeout)
    await worker.drain(config.shutdown_timeout)
    log.info("stopped")
    return 0


def serve(config: Config) -> int:
    """Run the gateway for ``config`` in this process until SIGINT/SIGTERM; return the exit code."""
    if config.workers != 1:
        log.warning("workers: %d requested; this build runs one worker process", config.workers)
    return uvloop.run(_serve(config))
