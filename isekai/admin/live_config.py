"""The running config as the control plane keeps it: `LiveConfig`.

It is the YAML file plus the stored routes, upstreams, policies and consumers that validate,
held as a `ConfigIndex` (so one change is checked and applied without reading everything
again), with the store revision it reflects and each stored item's version. Three ways it moves:

- `load` (startup, SIGHUP): everything is read and validated as one config. A stored item the
  loader refuses is left out (`SkippedItem`, logged once) and the rest validated again, so one
  bad item never stops the gateway; a mistake in the file raises ``ConfigError``.
- `prepare` + `commit`: one change through the admin API, checked against the index.
- `sync`: what other writers stored since (other processes, other gateways on the database),
  found by comparing item versions, each applied as a change.

Call `sync`, `prepare`/`commit` and `load` holding the store's writer lock, so the revision and
the items read agree (store.md, "One writer at a time").
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from isekai.config import rules
from isekai.config.changes import Change, ConfigIndex, add_consumers
from isekai.config.loader import API_SOURCE, file_documents, validate_dynamic
from isekai.config.schema import Config
from isekai.errors import ConfigError

__all__ = ["ROUTE_PATH", "LiveConfig", "SkippedItem", "stored_item_at"]

log = logging.getLogger("isekai.admin")

ROUTE_PATH = re.compile(r"routes\[(\d+)\](.*)", re.S)
# puts of what routes use first, then the routes, then deletes of what they used
_SYNC_ORDER = (
    ("upstream", True),
    ("policy", True),
    ("route", False),
    ("route", True),
    ("policy", False),
    ("upstream", False),
    ("consumer", True),  # nothing refers to consumers: their order does not matter
    ("consumer", False),
)
_KINDS = ("route", "upstream", "policy", "consumer")


@dataclass(frozen=True, slots=True)
class SkippedItem:
    """A stored route, upstream, policy or consumer left out of the running config because it
    does not validate against the file and the other items (``reason`` is the loader's
    message)."""

    kind: str
    name: str
    reason: str
    version: int | None = None  # the stored version that was left out


class LiveConfig:
    """The running config, its index, the store revision it reflects, and what was left out."""

    def __init__(self, store: Any, config: Config, text: str) -> None:
        self.store = store
        self.file_config = config  # the YAML file alone, as loaded
        self.text = text
        self.index = _index(config, config)
        self.revision = -1
        self.versions: dict[tuple[str, str], int] = {}  # stored items in the index
        self.skipped: tuple[SkippedItem, ...] = ()

    @property
    def config(self) -> Config:
        return self.index.config

    # -- whole loads ------------------------------------------------------------------------

    async def load(self, config: Config | None = None, text: str | None = None) -> Config:
        """Read the file (``config``/``text``: a new one, after SIGHUP) and every stored item;
        nothing changes when it raises ``ConfigError``."""
        config = self.file_config if config is None else config
        text = self.text if text is None else text
        revision = await self.store.revision()  # first: items read after are at least as new
        routes = await self.store.list_items("route")
        upstreams = await self.store.list_items("upstream")
        policies = await self.store.list_items("policy")
        consumers = await self.store.list_items("consumer")
        loaded, skipped = whole_config(
            text,
            config.source,
            {item.name: item.doc for item in routes},
            {item.name: item.doc for item in upstreams},
            {item.name: item.doc for item in policies},
            {item.name: item.doc for item in consumers},
        )
        stored = (*routes, *upstreams, *policies, *consumers)
        stored_versions = {(item.kind, item.name): item.version for item in stored}
        skipped = tuple(
            SkippedItem(i.kind, i.name, i.reason, stored_versions[i.kind, i.name]) for i in skipped
        )
        left_out = {(item.kind, item.name) for item in skipped}
        self.file_config, self.text = config, text
        self.index = _index(loaded, config)
        self.revision = revision
        self.versions = {
            (item.kind, item.name): item.version
            for item in stored
            if (item.kind, item.name) not in left_out
        }
        self._set_skipped(skipped)
        return loaded

    # -- one change -------------------------------------------------------------------------

    def prepare(self, kind: str, name: str, doc: dict[str, Any] | None) -> Change:
        """Check one change made through the API (``doc`` None: delete); ``ConfigError`` as a
        whole validation, or ``RouteShadowError`` for a route over a file route's requests."""
        return self.index.prepare(kind, name, doc, check_shadow=True)

    async def commit(self, change: Change, version: int | None) -> Config:
        """Apply a prepared change now stored at ``version`` (None: deleted)."""
        config = self.index.commit([change])
        key = (change.kind, change.name)
        if version is None:
            self.versions.pop(key, None)
        else:
            self.versions[key] = version
        self.skipped = tuple(i for i in self.skipped if (i.kind, i.name) != key)
        self.revision = await self.store.revision()
        return config

    # -- other writers' changes -------------------------------------------------------------

    async def sync(self) -> list[Change]:
        """Apply what was stored since `revision` by anyone; return the changes applied."""
        revision = await self.store.revision()
        if revision == self.revision:
            return []
        stored: dict[tuple[str, str], int] = {}
        for kind in _KINDS:
            for name, version in (await self.store.list_versions(kind)).items():
                stored[kind, name] = version
        applied: list[Change] = []
        skipped = {(i.kind, i.name): i for i in self.skipped if (i.kind, i.name) in stored}
        for kind, put in _SYNC_ORDER:
            if not put:
                for key in [k for k in self.versions if k[0] == kind and k not in stored]:
                    try:
                        applied.append(self._apply(self.index.prepare(*key, None)))
                    except ConfigError as exc:  # an upstream or policy a file item still uses
                        log.error("stored %s %r was deleted but is kept: %s", *key, exc)
                        continue
                    del self.versions[key]
                continue
            for key, version in stored.items():
                if key[0] != kind or self._known_version(key) == version:
                    continue
                item = await self.store.get_item(*key)
                if item is None:  # deleted meanwhile: the next sync sees it
                    continue
                if self._in_file(kind, key[1]):
                    # another gateway's file may lack it, ours has it: ours is read-only and
                    # wins, as a whole load would leave the stored one out
                    reason = f"the config file defines {kind} {key[1]!r}, which is read-only"
                    skipped[key] = SkippedItem(kind, key[1], reason, item.version)
                    continue
                try:
                    change = self.index.prepare(kind, key[1], item.doc)
                except ConfigError as exc:
                    skipped[key] = SkippedItem(kind, key[1], str(exc), item.version)
                    if kind == "route" and key in self.versions:  # as a load would leave it out
                        applied.append(self._apply(self.index.prepare(*key, None)))
                        del self.versions[key]
                    continue
                applied.append(self._apply(change))
                self.versions[key] = item.version
                skipped.pop(key, None)
        self.revision = revision
        self._set_skipped(tuple(skipped.values()))
        return applied

    def _in_file(self, kind: str, name: str) -> bool:
        if kind == "route":
            return name in self.index.file_routes
        if kind == "consumer":
            return name in self.index.file_consumers
        config = self.file_config
        return name in (config.upstreams if kind == "upstream" else config.policies)

    def _known_version(self, key: tuple[str, str]) -> int | None:
        if key in self.versions:
            return self.versions[key]
        return next((i.version for i in self.skipped if (i.kind, i.name) == key), None)

    def _apply(self, change: Change) -> Change:
        self.index.commit([change])
        return change

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


def _index(config: Config, file_config: Config) -> ConfigIndex:
    return ConfigIndex(
        config,
        (route.name for route in file_config.routes),
        (consumer.name for consumer in file_config.consumers),
    )


def whole_config(
    text: str,
    source: str,
    routes: dict[str, dict],
    upstreams: dict[str, dict],
    policies: dict[str, dict] | None = None,
    consumers: dict[str, dict] | None = None,
) -> tuple[Config, tuple[SkippedItem, ...]]:
    """The config file ``text`` plus the stored ``routes``, ``upstreams``, ``policies`` and
    ``consumers`` that validate.

    A stored item the loader refuses is left out (and returned as skipped), then the rest is
    validated again; a mistake in the file raises ``ConfigError``. Stored consumers are read
    one by one after the rest (`add_consumers`): nothing else depends on them.
    """
    items = {"route": dict(routes), "upstream": dict(upstreams), "policy": dict(policies or {})}
    file_routes = len(file_documents(text, source)[0])
    skipped: list[SkippedItem] = []
    while True:
        try:
            config = validate_dynamic(
                text,
                source,
                routes=list(items["route"].values()),
                upstreams=items["upstream"],
                policies=items["policy"],
            )
            config, left_out = add_consumers(config, consumers or {})
            skipped.extend(SkippedItem("consumer", name, reason) for name, reason in left_out)
            warn_shadowing_routes(config, file_routes)
            return config, tuple(skipped)
        except ConfigError as exc:
            found = stored_item_at(
                exc,
                file_routes,
                list(items["route"]),
                list(items["upstream"]),
                list(items["policy"]),
            )
            if found is None:
                raise
            kind, name = found
            items[kind].pop(name)
            skipped.append(SkippedItem(kind, name, str(exc)))


def shadowing_routes(config: Config, file_routes: int) -> list[tuple[str, str]]:
    """``(stored route, file route)`` for each stored route that takes requests from a file
    route (`rules.route_shadows`) although ``admin.api_routes.may_shadow_yaml`` is false:
    one stored before the setting was turned off, or before the file gained that route (the
    API refuses to store new ones). ``config.routes`` holds the file's routes first."""
    admin = config.admin
    if admin is not None and admin.api_routes.may_shadow_yaml:
        return []
    from_file = config.routes[:file_routes]
    return [
        (route.name, other.name)
        for route in config.routes[file_routes:]
        for other in from_file
        if rules.route_shadows(route.match, other.match)
    ]


def warn_shadowing_routes(config: Config, file_routes: int) -> None:
    """Log a warning for each of `shadowing_routes`: they stay, but an operator should know
    that a file route does not get all its requests."""
    for name, other in shadowing_routes(config, file_routes):
        log.warning(
            "stored route %r takes requests from file route %r although "
            "admin.api_routes.may_shadow_yaml is false (it was stored before); delete or "
            "change it through the admin API",
            name,
            other,
        )


def stored_item_at(
    exc: ConfigError,
    file_routes: int,
    routes: list[str],
    upstreams: list[str],
    policies: list[str] = (),  # type: ignore[assignment]
) -> tuple[str, str] | None:
    """``(kind, name)`` of the stored item a loader error points into, or None (the file).

    ``routes``, ``upstreams`` and ``policies`` are the stored items' names in the order given
    to the loader, after the file's ``file_routes`` routes.
    """
    if exc.file != API_SOURCE:
        return None
    found = ROUTE_PATH.fullmatch(exc.path)
    if found is not None:
        index = int(found.group(1)) - file_routes
        return ("route", routes[index]) if 0 <= index < len(routes) else None
    for kind, plural, names in (
        ("upstream", "upstreams", upstreams),
        ("policy", "policies", policies),
    ):
        for name in sorted(names, key=len, reverse=True):
            head = f"{plural}.{name}"
            if exc.path == head or exc.path.startswith((head + ".", head + "[")):
                return kind, name
    return None
