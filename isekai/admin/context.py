"""What the admin API needs from the gateway: `AdminContext`.

The gateway (the master, or the single process with ``workers: 1``) builds one context with
the opened store, the config file as loaded and its text, the ``apply`` callback that makes a
new config current everywhere, and the status providers. ``await ctx.load()`` gives the config
to start with: the file plus every route and upstream stored through the API.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from isekai.config.loader import API_SOURCE, file_documents, validate_dynamic
from isekai.config.schema import Config
from isekai.errors import ConfigError

__all__ = [
    "CTX",
    "REQUEST_ID",
    "USER",
    "AdminContext",
    "ApplyConfig",
    "SkippedItem",
    "StatusProviders",
    "effective_config",
]

log = logging.getLogger("isekai.admin")

ApplyConfig = Callable[[Config], Awaitable[None]]
Stats = Callable[[], Mapping[str, Any]]


def _empty() -> Mapping[str, Any]:
    return {}


@dataclass(slots=True)
class StatusProviders:
    """Callables the status endpoints read; each is called once per request, on the loop.

    ``config_version`` is the version of the snapshot the workers run. The three ``*_stats``
    return JSON-compatible mappings, shown as they are under ``data``.
    """

    workers: Callable[[], int] = lambda: 1
    config_version: Callable[[], int] = lambda: 1
    load_balancer: Stats = _empty
    circuit_breakers: Stats = _empty
    websockets: Stats = _empty


@dataclass(frozen=True, slots=True)
class SkippedItem:
    """A stored route or upstream left out of the effective config because it does not
    validate against the file and the other items (``reason`` is the loader's message)."""

    kind: str
    name: str
    reason: str


@dataclass(eq=False)
class AdminContext:
    """The gateway as the admin API sees it.

    ``config`` and ``config_text`` are the config file (YAML only) as loaded and as read;
    ``current`` is the config last made current (the file plus stored items), set by `load`
    and after every successful change. ``apply`` must make a config current in every worker
    (it is awaited after the change is stored). ``started_at`` is the gateway's start, in
    unix seconds. ``bcrypt_rounds`` is the cost of password hashes made through the API.
    """

    store: Any  # isekai.store.Store
    config: Config
    config_text: str
    apply: ApplyConfig
    status: StatusProviders = field(default_factory=StatusProviders)
    started_at: float = field(default_factory=time.time)
    bcrypt_rounds: int = 12
    current: Config | None = None
    skipped: tuple[SkippedItem, ...] = ()
    _random_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48), repr=False)
    _lock: asyncio.Lock | None = field(default=None, repr=False)
    _file_docs: tuple[str, tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]] | None = field(
        default=None, repr=False
    )
    _warned_secret: bool = field(default=False, repr=False)

    @property
    def lock(self) -> asyncio.Lock:
        """Held around every change: validate, store and apply happen one change at a time."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

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

    async def load(self) -> Config:
        """The file plus every stored route and upstream that validates; also sets ``current``
        and ``skipped`` (the stored items left out, each logged once).

        Raises ``ConfigError`` when the file itself is wrong.
        """
        config, skipped = await effective_config(self.store, self.config_text, self.config.source)
        self._set_skipped(skipped)
        self.current = config
        return config

    async def reload(self, config: Config, text: str) -> Config:
        """Take a new config file (after SIGHUP) and return the new effective config.

        Nothing changes when it raises ``ConfigError``; on success the caller makes the result
        current (this does not call ``apply``). Call it holding `lock` and the store's writer
        lock, in that order, as the API handlers do.
        """
        merged, skipped = await effective_config(self.store, text, config.source)
        self.config, self.config_text, self.current = config, text, merged
        self._set_skipped(skipped)
        return merged

    def changed(self, kind: str, name: str) -> None:
        """A stored item was written or deleted through the API: it is no longer skipped."""
        self.skipped = tuple(i for i in self.skipped if (i.kind, i.name) != (kind, name))

    def is_skipped(self, kind: str, name: str) -> bool:
        return any((i.kind, i.name) == (kind, name) for i in self.skipped)

    async def stored_documents(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The stored routes and upstreams in the effective config, as documents."""
        routes = [
            item.doc
            for item in await self.store.list_items("route")
            if not self.is_skipped("route", item.name)
        ]
        upstreams = {
            item.name: item.doc
            for item in await self.store.list_items("upstream")
            if not self.is_skipped("upstream", item.name)
        }
        return routes, upstreams

    def _set_skipped(self, skipped: tuple[SkippedItem, ...]) -> None:
        for item in skipped:
            if item not in self.skipped:
                log.error(
                    "stored %s %r left out: %s (fix or delete it through the API)",
                    item.kind,
                    item.name,
                    item.reason,
                )
        self.skipped = skipped


async def effective_config(
    store: Any, text: str, source: str
) -> tuple[Config, tuple[SkippedItem, ...]]:
    """The config file ``text`` plus every route and upstream in ``store`` that validates.

    A stored item the loader refuses is left out (and returned as skipped), then the rest is
    validated again, so one bad item never stops the gateway; a mistake in the file raises
    ``ConfigError``.
    """
    routes = {item.name: item.doc for item in await store.list_items("route")}
    upstreams = {item.name: item.doc for item in await store.list_items("upstream")}
    file_routes = len(file_documents(text, source)[0])
    skipped: list[SkippedItem] = []
    while True:
        try:
            config = validate_dynamic(
                text, source, routes=list(routes.values()), upstreams=upstreams
            )
            return config, tuple(skipped)
        except ConfigError as exc:
            found = stored_item_at(exc, file_routes, list(routes), list(upstreams))
            if found is None:
                raise
            kind, name = found
            (routes if kind == "route" else upstreams).pop(name)
            skipped.append(SkippedItem(kind, name, str(exc)))


def stored_item_at(
    exc: ConfigError, file_routes: int, routes: list[str], upstreams: list[str]
) -> tuple[str, str] | None:
    """``(kind, name)`` of the stored item a loader error points into, or None (the file).

    ``routes`` and ``upstreams`` are the stored items' names in the order given to the loader,
    after the file's ``file_routes`` routes.
    """
    if exc.file != API_SOURCE:
        return None
    found = ROUTE_PATH.fullmatch(exc.path)
    if found is not None:
        index = int(found.group(1)) - file_routes
        return ("route", routes[index]) if 0 <= index < len(routes) else None
    for name in sorted(upstreams, key=len, reverse=True):
        head = f"upstreams.{name}"
        if exc.path == head or exc.path.startswith((head + ".", head + "[")):
            return "upstream", name
    return None


ROUTE_PATH = re.compile(r"routes\[(\d+)\](.*)", re.S)


CTX = web.AppKey("isekai_admin_context", AdminContext)  # the context in app[CTX]
USER = web.RequestKey("isekai_admin_user", dict)  # request[USER]: the authenticated user
REQUEST_ID = web.RequestKey("isekai_admin_request_id", str)
