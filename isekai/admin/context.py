"""What the admin API needs from the gateway: `AdminContext`.

The gateway (the master, or the single process with ``workers: 1``) builds one context with
the opened store, the config file as loaded and its text, the ``apply`` callback that makes a
new config current everywhere, and the status providers. ``await ctx.load()`` gives the config
to start with: the file plus every route and upstream stored through the API that validates
(`isekai.admin.live_config`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from isekai.admin.live_config import LiveConfig, SkippedItem
from isekai.config.changes import Change
from isekai.config.loader import file_documents, file_policies
from isekai.config.schema import Config
from isekai.observability.metrics import Gathered

__all__ = [
    "CTX",
    "REQUEST_ID",
    "USER",
    "AdminContext",
    "ApplyConfig",
    "StatusProviders",
]

log = logging.getLogger("isekai.admin")

ApplyConfig = Callable[[Config, list[Change] | None], Awaitable[None]]


async def _nothing_gathered() -> Gathered:
    return Gathered(workers=[], expected=0)


async def _no_probe(query: dict) -> dict | None:
    return None


@dataclass(slots=True)
class StatusProviders:
    """Callables the status endpoints read; each is called once per request, on the loop.

    ``config_version`` is the version of the snapshot the workers run. ``gather()`` returns
    every worker's live statistics (`Gathered`); ``probe(query)`` asks one worker about live
    state (`isekai.worker.Worker.probe`), None when none answered.
    """

    workers: Callable[[], int] = lambda: 1
    config_version: Callable[[], int] = lambda: 1
    gather: Callable[[], Awaitable[Gathered]] = _nothing_gathered
    probe: Callable[[dict], Awaitable[dict | None]] = _no_probe


@dataclass(eq=False)
class AdminContext:
    """The gateway as the admin API sees it.

    ``config`` and ``config_text`` are the config file (YAML only) as loaded and as read;
    ``live`` is the running config (the file plus stored items, `LiveConfig`), made by `load`.
    ``apply(config, changes)`` must make ``config`` current in every worker: ``changes`` are
    the `Change` objects that lead there from the previous one, or None after a whole load
    (it is awaited after the change is stored). ``started_at`` is the gateway's start, in unix
    seconds. ``bcrypt_rounds`` is the cost of password hashes made through the API.
    """

    store: Any  # isekai.store.Store
    config: Config
    config_text: str
    apply: ApplyConfig
    status: StatusProviders = field(default_factory=StatusProviders)
    started_at: float = field(default_factory=time.time)
    bcrypt_rounds: int = 12
    live: LiveConfig | None = None
    _random_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48), repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)
    _file_docs: tuple[str, tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]] | None = field(
        default=None, repr=False
    )
    _file_policies: tuple[str, dict[str, dict[str, Any]]] | None = field(default=None, repr=False)
    _warned_secret: bool = field(default=False, repr=False)

    @property
    def lock(self) -> asyncio.Lock:
        """Held around every change: validate, store and apply happen one change at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    @property
    def current(self) -> Config | None:
        """The running config: the file plus the stored items that validate."""
        return None if self.live is None else self.live.config

    @property
    def skipped(self) -> tuple[SkippedItem, ...]:
        return () if self.live is None else self.live.skipped

    @property
    def jwt_secret(self) -> str:
        """``admin.auth.jwt_secret``, or a random secret made once per process."""
        configured = self.config.admin.auth.jwt_secret
        if configured is not None:
            return configured
        if not self._warned_secret:
            self._warned_secret = True
            log.warning(
                "admin.auth.jwt_secret is not set: admin API tokens are signed with a random "
                "secret made at startup and will not be valid after a restart"
            )
        return self._random_secret

    def file_documents(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The file's routes and upstreams as documents (values as written)."""
        if self._file_docs is None or self._file_docs[0] != self.config_text:
            self._file_docs = (
                self.config_text,
                file_documents(self.config_text, self.config.source),
            )
        return self._file_docs[1]

    def file_policies(self) -> dict[str, dict[str, Any]]:
        """The file's named policies as documents (values as written)."""
        if self._file_policies is None or self._file_policies[0] != self.config_text:
            found = file_policies(self.config_text, self.config.source)
            self._file_policies = (self.config_text, found)
        return self._file_policies[1]

    async def load(self) -> Config:
        """Read the file and every stored item into `live`; return the running config.

        Stored items that do not validate are left out (``skipped``); raises ``ConfigError``
        when the file itself is wrong.
        """
        live = self.live or LiveConfig(self.store, self.config, self.config_text)
        config = await live.load()
        self.live = live
        return config

    async def reload(self, config: Config, text: str) -> Config:
        """Take a new config file (after SIGHUP) and return the new running config.

        Nothing changes when it raises ``ConfigError``; on success the caller makes the result
        current (this does not call ``apply``). Call it holding `lock` and the store's writer
        lock, in that order, as the API handlers do.
        """
        live = self.live or LiveConfig(self.store, self.config, self.config_text)
        merged = await live.load(config, text)
        self.live = live
        self.config, self.config_text = config, text
        return merged

    async def catch_up(self) -> list[Change]:
        """Apply what other writers stored since the last look (`LiveConfig.sync`), in the
        running config and through ``apply``. Hold `lock` and the store's writer lock."""
        assert self.live is not None
        changes = await self.live.sync()
        if changes:
            await self.apply(self.live.config, changes)
        return changes

    async def stored_documents(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The stored routes and upstreams in the running config, as documents."""
        skipped = {(i.kind, i.name) for i in self.skipped}
        routes = [
            item.doc
            for item in await self.store.list_items("route")
            if ("route", item.name) not in skipped
        ]
        upstreams = {
            item.name: item.doc
            for item in await self.store.list_items("upstream")
            if ("upstream", item.name) not in skipped
        }
        return routes, upstreams

    async def stored_policies(self) -> dict[str, dict[str, Any]]:
        """The stored policies in the running config, as documents (name -> policy mapping):
        what a whole-config message carries besides `stored_documents`."""
        skipped = {(i.kind, i.name) for i in self.skipped}
        return {
            item.name: item.doc
            for item in await self.store.list_items("policy")
            if ("policy", item.name) not in skipped
        }

    async def stored_consumers(self) -> list[dict[str, Any]]:
        """The stored consumers in the running config, as documents (each with its
        ``name``): what a whole-config message carries besides `stored_policies`."""
        skipped = {(i.kind, i.name) for i in self.skipped}
        return [
            item.doc
            for item in await self.store.list_items("consumer")
            if ("consumer", item.name) not in skipped
        ]


CTX = web.AppKey("isekai_admin_context", AdminContext)  # the context in app[CTX]
USER = web.RequestKey("isekai_admin_user", dict)  # request[USER]: the authenticated user
REQUEST_ID = web.RequestKey("isekai_admin_request_id", str)
