"""The control plane of one gateway instance: store, admin API, and applying their changes.

Routes and upstreams come from the YAML file (read-only through the API) and from the store
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
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from isekai.admin.app import AdminServer
from isekai.admin.auth import ensure_initial_admin
from isekai.admin.context import AdminContext, StatusProviders
from isekai.config.reload import read_config
from isekai.config.schema import Config
from isekai.errors import ConfigError
from isekai.process.channel import open_channel, send_message
from isekai.store import Store, StoreError, open_store

log = logging.getLogger("isekai.control")


WATCH_TIMEOUT = 1.0  # seconds: the longest a store change waits to be noticed (SQLite polling)


def change_message(text: str, source: str, routes: list[dict], upstreams: dict) -> dict:
    """What a worker needs to rebuild the effective config (JSON-compatible)."""
    return {
        "type": "config",
        "text": text,
        "source": source,
        "routes": routes,
        "upstreams": upstreams,
    }


class ControlPlane:
    """Store + admin API + change following, for one gateway instance."""

    def __init__(self, store: Store, ctx: AdminContext) -> None:
        self.store = store
        self.ctx = ctx
        self.server: AdminServer | None = None
        self.revision = -1
        self._watch: asyncio.Task | None = None
        self._apply_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls, config: Config, text: str, *, status: StatusProviders | None = None
    ) -> ControlPlane:
        """Open the store, create the initial admin if asked to, and load the effective config
        (``plane.ctx.current``). Raises ConfigError when stored items no longer fit the file,
        and StoreError when the store cannot be opened."""
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
            plane.revision = await store.revision()
            await ctx.load()
        except BaseException:
            await store.close()
            raise
        return plane

    @property
    def config(self) -> Config:
        """The effective config: the file plus stored routes and upstreams."""
        assert self.ctx.current is not None
        return self.ctx.current

    async def start(self, apply: Callable[[Config, dict], Awaitable[None]]) -> None:
        """Serve the admin API and follow store changes; ``apply(config, message)`` makes a
        new effective config current (``message`` is its `change_message`)."""

        async def apply_current(config: Config) -> None:
            # Called with the store's writer lock held (by an API handler, `_catch_up` or
            # `reload`), so the documents and the revision read here are exactly those
            # ``config`` was validated against: every revision up to ``self.revision`` is
            # applied, and a peer's change always shows as a revision above it.
            async with self._apply_lock:
                routes, upstreams = await self.ctx.stored_documents()
                revision = await self.store.revision()
                message = change_message(self.ctx.config_text, config.source, routes, upstreams)
                await apply(config, message)
                self.revision = revision

        self.ctx.apply = apply_current
        self.server = AdminServer(self.ctx)
        await self.server.start()
        self._watch = asyncio.ensure_future(self._follow())

    async def message(self) -> dict:
        """The `change_message` of the current effective config."""
        routes, upstreams = await self.ctx.stored_documents()
        return change_message(self.ctx.config_text, self.config.source, routes, upstreams)

    async def reload(self, config: Config, text: str) -> None:
        """A new config file (SIGHUP): merge it with the store and apply; ConfigError keeps
        the old one."""
        async with self.ctx.lock, self.store.exclusive():
            merged = await self.ctx.reload(config, text)
            await self.ctx.apply(merged)

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
            current = await self.store.revision()
            if current <= self.revision:
                return  # applied meanwhile (our own change, or an earlier catch-up)
            try:
                config = await self.ctx.load()
            except ConfigError as exc:
                self.revision = current
                log.error("stored routes do not fit the config file; not applied: %s", exc)
                return
            log.info("store changed (revision %d): applying", current)
            await self.ctx.apply(config)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.server is not None:
            await self.server.stop()
        await self.store.close()


async def _not_yet(config: Config) -> None:
    raise RuntimeError("the control plane is not started")


def stats_of(provider: Callable[[], Any]) -> Callable[[], Any]:
    """A status provider that never raises into the admin API."""

    def safe() -> Any:
        try:
            return provider()
        except Exception:  # status is best effort
            log.exception("status provider failed")
            return {}

    return safe


# -- the admin process (workers > 1) -----------------------------------------------------------


def _config_status(plane: ControlPlane, applied: list[int]) -> StatusProviders:
    def load_balancer() -> dict:
        return {
            name: {
                "balancer": "round_robin",
                "targets": [{"target": f"{t.host}:{t.port}"} for t in upstream.targets],
            }
            for name, upstream in plane.config.upstreams.items()
        }

    return StatusProviders(
        workers=lambda: plane.config.workers,
        config_version=lambda: applied[0],
        load_balancer=stats_of(load_balancer),
    )


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
    plane.ctx.status = _config_status(plane, applied)

    async def apply(new: Config, message: dict) -> None:
        applied[0] += 1
        send_message(writer, {"type": "apply", "config": message})
        await writer.drain()

    try:
        await plane.start(apply)
    except OSError as exc:
        log.error("cannot start the admin API on %s: %s", config.admin.bind, exc)
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
            if json.loads(line).get("type") == "reload":
                try:
                    new, text = read_config(config.source)
                    await plane.reload(new, text)
                except ConfigError as exc:
                    log.error("reload rejected: %s", exc)
        stop.set()

    channel = asyncio.ensure_future(follow_master())
    await stop.wait()
    channel.cancel()
    await plane.close()
    writer.close()
    return 0


def run_admin_process(config: Config, control: socket.socket) -> int:
    """The admin API and store in a process of its own (forked by the master)."""
    return uvloop.run(_admin_main(config, control))
