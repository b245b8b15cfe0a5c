"""The control plane of one gateway instance: store, admin API, and applying their changes.

Routes, upstreams, policies and consumers come from the YAML file (read-only through the API)
and from the store
(created through the API). `ControlPlane` opens the store, builds the admin API's context,
serves the API, and follows the store's change counter (PostgreSQL LISTEN/NOTIFY, or polling
for SQLite), so several gateway instances sharing one database all apply a change.

Where it runs: with ``workers: 1`` inside the single process, where applying a change is a
snapshot swap; with more workers in its own process forked by the master (the master's loop
is a plain selector loop that never runs asyncio, so the admin API cannot live in it), where
applying a change is a message to the master, which forwards it to every worker. What travels
is the file's text plus the stored documents (`change_message`); a worker validates them with
the same `validate_dynamic` the API used and swaps its snapshot, as on a SIGHUP reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import socket

import uvloop

from isekai import __version__
from isekai.admin.app import AdminServer
from isekai.admin.auth import ensure_initial_admin
from isekai.admin.context import AdminContext, ApplyConfig, StatusProviders
from isekai.admin.observe import MetricsServer, Scrape
from isekai.config.changes import Change
from isekai.config.reload import read_config
from isekai.config.schema import Config
from isekai.errors import ConfigError
from isekai.observability.metrics import Gathered, ReloadCounts
from isekai.process.channel import decode_stats, encode_changes, open_channel, send_message
from isekai.store import Store, StoreError, open_store

log = logging.getLogger("isekai.control")


WATCH_TIMEOUT = 1.0  # seconds: the longest a store change waits to be noticed (SQLite polling)
STATS_TIMEOUT = 3.0  # seconds a scrape waits for the master's answer (it waits 1 s per worker)


def change_message(
    text: str,
    source: str,
    routes: list[dict],
    upstreams: dict,
    policies: dict,
    consumers: list[dict] | None = None,
) -> dict:
    """What a worker needs to rebuild the effective config (JSON-compatible)."""
    return {
        "type": "config",
        "text": text,
        "source": source,
        "routes": routes,
        "upstreams": upstreams,
        "policies": policies,
        "consumers": consumers or [],
    }


class ControlPlane:
    """Store + admin API + change following, for one gateway instance."""

    def __init__(self, store: Store, ctx: AdminContext) -> None:
        self.store = store
        self.ctx = ctx
        self.server: AdminServer | None = None
        self._watch: asyncio.Task | None = None

    @classmethod
    async def open(
        cls, config: Config, text: str, *, status: StatusProviders | None = None
    ) -> ControlPlane:
        """Open the store, create the initial admin if asked to, and load the running config
        (``plane.config``). Raises ConfigError when the file is wrong (stored items that do
        not fit are left out), StoreError when the store cannot be opened."""
        store = open_store(config.store.url)
        await store.open()
        try:
            await ensure_initial_admin(store)
            ctx = AdminContext(
                store=store,
                config=config,
                config_text=text,
                apply=_not_yet,
                status=status or StatusProviders(),
            )
            plane = cls(store, ctx)
            async with store.exclusive():
                await ctx.load()
        except BaseException:
            await store.close()
            raise
        return plane

    @property
    def config(self) -> Config:
        """The running config: the file plus stored routes and upstreams that validate."""
        assert self.ctx.current is not None
        return self.ctx.current

    @property
    def revision(self) -> int:
        """The store revision the running config reflects: every change up to it is applied,
        whoever made it, and anything above it is another writer's, still to apply."""
        assert self.ctx.live is not None
        return self.ctx.live.revision

    async def start(self, apply: ApplyConfig) -> None:
        """Serve the admin API and follow store changes. ``apply(config, changes)`` makes a
        new running config current: ``changes`` (`isekai.config.changes.Change`) lead to it
        from the previous one, None after a whole load (SIGHUP)."""
        self.ctx.apply = apply
        self.server = AdminServer(self.ctx)
        await self.server.start()
        self._watch = asyncio.ensure_future(self._follow())

    async def message(self) -> dict:
        """The `change_message` of the running config (a whole config, for a fresh start)."""
        routes, upstreams = await self.ctx.stored_documents()
        policies = await self.ctx.stored_policies()
        consumers = await self.ctx.stored_consumers()
        return change_message(
            self.ctx.config_text, self.config.source, routes, upstreams, policies, consumers
        )

    async def reload(self, config: Config, text: str) -> None:
        """A new config file (SIGHUP): merge it with the store and apply; ConfigError keeps
        the old one."""
        async with self.ctx.lock, self.store.exclusive():
            merged = await self.ctx.reload(config, text)
            await self.ctx.apply(merged, None)

    async def _follow(self) -> None:
        while True:
            try:
                current = await self.store.wait_for_change(self.revision, WATCH_TIMEOUT)
                if current > self.revision:
                    await self._catch_up()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a store outage must not end the watch
                log.warning("store unavailable while following changes: %s", exc)
                await asyncio.sleep(WATCH_TIMEOUT)

    async def _catch_up(self) -> None:
        # apply what other writers stored; our own changes are applied by the API handler
        async with self.ctx.lock, self.store.exclusive():
            changes = await self.ctx.catch_up()
        if changes:
            log.info("store changed (revision %d): %d changes applied", self.revision, len(changes))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.server is not None:
            await self.server.stop()
        await self.store.close()


async def _not_yet(config: Config, changes: list[Change] | None) -> None:
    raise RuntimeError("the control plane is not started")


# -- the admin process (workers > 1) -----------------------------------------------------------


class StatsClient:
    """Asks the master for every worker's statistics over the control channel.

    ``gather()`` sends ``{"type": "stats", "id"}``; the master asks each worker, waits up to its
    own timeout, and answers ``{"type": "stats", "id", "workers", "restarts", "reloads",
    "expected"}``, which `answer` (called by the channel reader) hands to the waiting scrape.
    """

    def __init__(self, writer: asyncio.StreamWriter, reloads: ReloadCounts) -> None:
        self.writer = writer
        self.reloads = reloads  # the ones this process decided (it merges the file on SIGHUP)
        self._pending: dict[int, asyncio.Future] = {}
        self._next = 0

    async def gather(self) -> Gathered:
        self._next += 1
        key = self._next
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            send_message(self.writer, {"type": "stats", "id": key})
            await self.writer.drain()
            reply = await asyncio.wait_for(future, STATS_TIMEOUT)
        finally:
            self._pending.pop(key, None)
        master = reply.get("reloads", {})
        return Gathered(
            workers=[decode_stats(data) for data in reply.get("workers", [])],
            restarts=reply.get("restarts", 0),
            reloads={
                "ok": self.reloads.ok + master.get("ok", 0),
                "failed": self.reloads.failed + master.get("failed", 0),
            },
            expected=reply.get("expected", 0),
            version=__version__,
        )

    async def probe(self, query: dict) -> dict | None:
        """Ask one worker about live state (``query["what"]``: ``rate_limit``); its answer,
        or None when no worker answered in time."""
        self._next += 1
        key = self._next
        future = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            send_message(self.writer, {"type": "probe", "id": key, "query": query})
            await self.writer.drain()
            reply = await asyncio.wait_for(future, STATS_TIMEOUT)
        finally:
            self._pending.pop(key, None)
        data = reply.get("data")
        return data if isinstance(data, dict) else None

    def answer(self, message: dict) -> None:
        future = self._pending.get(message.get("id"))
        if future is not None and not future.done():
            future.set_result(message)


async def _start_metrics(config: Config, scrape: Scrape) -> MetricsServer | None:
    settings = config.observability.metrics
    if not (settings.enabled and settings.bind is not None):
        return None
    server = MetricsServer(scrape, settings.host, settings.port)
    await server.start()
    return server


async def _admin_main(config: Config, control: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader, writer = await open_channel(control)
    try:
        plane = await ControlPlane.open(config, read_config(config.source)[1])
    except (ConfigError, StoreError) as exc:
        log.error("cannot start the control plane: %s", exc)
        send_message(writer, {"type": "failed", "error": str(exc)})
        await writer.drain()
        return 1
    applied = [1]
    reloads = ReloadCounts()
    stats = StatsClient(writer, reloads)
    plane.ctx.status = StatusProviders(
        workers=lambda: plane.config.workers,
        config_version=lambda: applied[0],
        gather=stats.gather,
        probe=stats.probe,
    )

    async def apply(new: Config, changes: list[Change] | None) -> None:
        applied[0] += 1
        if changes is None:
            send_message(writer, {"type": "apply", "config": await plane.message()})
        else:
            send_message(writer, {"type": "apply", "changes": encode_changes(changes)})
        await writer.drain()

    metrics_server = None
    try:
        await plane.start(apply)
    except OSError as exc:
        log.error("cannot start the admin API on %s: %s", config.admin.bind, exc)
        send_message(writer, {"type": "failed", "error": str(exc)})
        await writer.drain()
        await plane.close()
        return 1
    try:
        metrics_server = await _start_metrics(
            config, Scrape(gather=stats.gather, config=lambda: plane.config, store=plane.store)
        )
    except OSError as exc:
        log.error(
            "cannot start the metrics listener on %s: %s", config.observability.metrics.bind, exc
        )
        send_message(writer, {"type": "failed", "error": str(exc)})
        await writer.drain()
        await plane.close()
        return 1
    send_message(writer, {"type": "ready", "config": await plane.message()})

    async def follow_master() -> None:
        while True:
            line = await reader.readline()
            if not line:
                log.warning("the master is gone: shutting down")
                break
            message = json.loads(line)
            if message.get("type") in ("stats", "probe"):
                stats.answer(message)
            elif message.get("type") == "reload":
                try:
                    new, text = read_config(config.source)
                    await plane.reload(new, text)
                except ConfigError as exc:
                    log.error("reload rejected: %s", exc)
                    reloads.failed += 1
                else:
                    reloads.ok += 1
        stop.set()

    channel = asyncio.ensure_future(follow_master())
    await stop.wait()
    channel.cancel()
    if metrics_server is not None:
        await metrics_server.stop()
    await plane.close()
    writer.close()
    return 0


async def _metrics_main(config: Config, control: socket.socket) -> int:
    # admin.enabled false with workers > 1: this process serves only the metrics listener
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader, writer = await open_channel(control)
    stats = StatsClient(writer, ReloadCounts())
    try:
        server = await _start_metrics(
            config, Scrape(gather=stats.gather, config=lambda: config, store=None)
        )
    except OSError as exc:
        log.error(
            "cannot start the metrics listener on %s: %s", config.observability.metrics.bind, exc
        )
        send_message(writer, {"type": "failed", "error": str(exc)})
        await writer.drain()
        return 1
    send_message(writer, {"type": "ready"})

    async def follow_master() -> None:
        while True:
            line = await reader.readline()
            if not line:
                break
            message = json.loads(line)
            if message.get("type") == "stats":
                stats.answer(message)
        stop.set()

    channel = asyncio.ensure_future(follow_master())
    await stop.wait()
    channel.cancel()
    if server is not None:
        await server.stop()
    writer.close()
    return 0


def run_admin_process(config: Config, control: socket.socket) -> int:
    """The admin API and store in a process of its own (forked by the master); with
    ``admin.enabled: false``, only the metrics listener."""
    if not config.admin.enabled:
        return uvloop.run(_metrics_main(config, control))
    return uvloop.run(_admin_main(config, control))
