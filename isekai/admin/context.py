"""What the admin API needs from the gateway: `AdminContext`.

The gateway (the master, or the single process with ``workers: 1``) builds one context with
the opened store, the config file as loaded and its text, the ``apply`` callback that makes a
new config current everywhere, and the status providers. ``await ctx.load()`` gives the config
to start with: the file plus every route and upstream stored through the API.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from isekai.config.loader import file_documents, validate_dynamic
from isekai.config.schema import Config

__all__ = [
    "CTX",
    "REQUEST_ID",
    "USER",
    "AdminContext",
    "ApplyConfig",
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
        """The file plus every stored route and upstream, validated; also sets ``current``.

        Raises ``ConfigError`` (from ``validate_dynamic``) when a stored item no longer fits
        the file, for example a file route now has the name of a stored one.
        """
        config = await effective_config(self.store, self.config_text, self.config.source)
        self.current = config
        return config

    async def reload(self, config: Config, text: str) -> Config:
        """Take a new config file (after SIGHUP) and return the new effective config.

        Nothing changes when it raises ``ConfigError``; on success the caller makes the result
        current (this does not call ``apply``). Call it holding `lock` and the store's writer
        lock, in that order, as the API handlers do.
        """
        merged = await effective_config(self.store, text, config.source)
        self.config, self.config_text, self.current = config, text, merged
        return merged


async def effective_config(store: Any, text: str, source: str) -> Config:
    """The config file ``text`` plus every route and upstream in ``store``, validated."""
    routes = [item.doc for item in await store.list_items("route")]
    upstreams = {item.name: item.doc for item in await store.list_items("upstream")}
    return validate_dynamic(text, source, routes=routes, upstreams=upstreams)


CTX = web.AppKey("isekai_admin_context", AdminContext)  # the context in app[CTX]
USER = web.RequestKey("isekai_admin_user", dict)  # request[USER]: the authenticated user
REQUEST_ID = web.RequestKey("isekai_admin_request_id", str)
