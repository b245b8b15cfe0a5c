"""One change to the routes, upstreams, policies and consumers of a validated config, checked
and applied without reading the rest again.

The admin API changes one route, upstream, policy or consumer at a time. Validating the whole
config for each change costs time in proportion to its size (seconds at 10,000 routes); instead a
`ConfigIndex` keeps what the cross-item rules need (routes by name, by host + path shape, the
routes using each upstream, the listeners and routes using each named policy),
`ConfigIndex.prepare` reads the changed document with the loader's own reader and checks it
against the index, and `ConfigIndex.commit` applies it. The result is the config that
`validate_dynamic` would build from the same documents: the same rules
(`rules.route_conflict`, `rules.missing_upstream`, `rules.missing_policy`), the same messages
and config paths (the changed item is placed last, as a full validation of the candidate
places it), which the tests check against the full path on random sequences of changes.

A `Change` carries the built item (``Route``/``Upstream``/``PolicySpec``/``Consumer``, or None
for a delete): it is what travels to the master and the workers, which apply it with
`apply_changes` without validating again.

Consumers are a list in YAML (``consumers:``, each with its ``name``); the stored ones follow
the file's in ``Config.consumers``. Nothing in the config names a consumer, so the only
cross-item rule is that a name is unique: a stored consumer may not take the name of one in
the file (those are read-only through the API). `add_consumers` puts stored consumer documents
after a validated config's own, for whole loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from isekai.config import metrics_policy, rules
from isekai.config.consumers import Consumer
from isekai.config.loader import read_document
from isekai.config.nodes import API_SOURCE
from isekai.config.policies import PolicySpec
from isekai.config.schema import Config, Route, Upstream
from isekai.errors import ConfigError, RouteConflictError

__all__ = ["Change", "ConfigIndex", "RouteShadowError", "add_consumers", "apply_changes"]

KINDS = ("route", "upstream", "policy", "consumer")


@dataclass(frozen=True, slots=True)
class Change:
    """``item`` is the new route, upstream, policy (``PolicySpec``, its ``name`` set) or
    consumer, or None when it is deleted."""

    kind: str
    name: str
    item: Route | Upstream | PolicySpec | Consumer | None


class RouteShadowError(ConfigError):
    """A route made through the admin API would take requests a file route gets now (and
    ``admin.api_routes.may_shadow_yaml`` is false); ``route`` names the file route."""

    def __init__(self, message: str, *, route: str, path: str, file: str | None) -> None:
        super().__init__(message, path=path, file=file)
        self.route = route


def _is_metrics(item: Any) -> bool:
    return isinstance(item, PolicySpec) and item.type == metrics_policy.MetricsConfig.family


def apply_changes(config: Config, changes: Iterable[Change]) -> Config:
    """``config`` with ``changes`` applied in order (already validated: nothing is checked).

    A new or changed route goes last (where a whole validation of the candidate puts the
    changed document); an upstream, a policy or a consumer keeps its place (a new one goes
    last).
    """
    routes = {route.name: route for route in config.routes}
    named = {
        "upstream": dict(config.upstreams),
        "policy": dict(config.policies),
        "consumer": {consumer.name: consumer for consumer in config.consumers},
    }
    for change in changes:
        if change.kind == "route":
            routes.pop(change.name, None)  # a changed route goes last, as in `commit`
            if change.item is not None:
                routes[change.name] = change.item
        elif change.item is None:
            named[change.kind].pop(change.name, None)
        else:
            named[change.kind][change.name] = change.item  # keeps its place
    return dataclasses.replace(
        config,
        routes=tuple(routes.values()),
        upstreams=MappingProxyType(named["upstream"]),
        policies=MappingProxyType(named["policy"]),
        consumers=tuple(named["consumer"].values()),
    )


def add_consumers(
    config: Config, docs: Mapping[str, Mapping[str, Any]]
) -> tuple[Config, list[tuple[str, str]]]:
    """``config`` with the stored consumer documents ``docs`` (name -> document, with its
    ``name``) after its own, and ``(name, reason)`` of each one left out: a document the
    loader refuses, or a name the config has already (the file's consumers are read-only)."""
    consumers = {consumer.name: consumer for consumer in config.consumers}
    skipped: list[tuple[str, str]] = []
    for name, doc in docs.items():
        if name in consumers:
            skipped.append((name, f"the config file defines consumer {name!r}, which is read-only"))
            continue
        try:
            consumers[name] = read_document(Consumer, doc, f"consumers[{len(consumers)}]")
        except ConfigError as exc:
            skipped.append((name, str(exc)))
            continue
        if consumers[name].name != name:
            del consumers[name]
            skipped.append((name, f"its document names consumer {doc.get('name')!r}"))
    if not docs:
        return config, skipped
    return dataclasses.replace(config, consumers=tuple(consumers.values())), skipped


class ConfigIndex:
    """A validated config with what its cross-item rules look up, kept current change by
    change. ``file_routes`` and ``file_consumers`` name the routes and consumers from the
    file (the rest were stored)."""

    def __init__(
        self,
        config: Config,
        file_routes: Iterable[str] = (),
        file_consumers: Iterable[str] = (),
    ) -> None:
        self.config = config
        self.file_routes = frozenset(file_routes)
        self.file_consumers = frozenset(file_consumers)
        self.routes: dict[str, Route] = {route.name: route for route in config.routes}
        self.by_shape: dict[tuple[str | None, str], list[Route]] = {}
        self.users: dict[str, dict[str, None]] = {}  # upstream -> route names, in order
        self.policy_users: dict[str, dict[str, None]] = {}  # policy -> route names, in order
        self.listener_policies: dict[str, tuple[int, int]] = {}  # policy -> first (listener, i)
        for position, listener in enumerate(config.listeners):
            for i, name in rules.policy_refs(listener.policies):
                self.listener_policies.setdefault(name, (position, i))
        for route in config.routes:
            self._link(route)

    # -- checking ---------------------------------------------------------------------------

    def prepare(
        self,
        kind: str,
        name: str,
        doc: Mapping[str, Any] | None,
        *,
        check_shadow: bool = False,
    ) -> Change:
        """Build and check one change: ``doc`` is the item's document (None: delete it).

        Raises ``ConfigError`` exactly as `validate_dynamic` would for the whole candidate
        config (``file`` `API_SOURCE`, a path into the whole config); nothing is changed.
        With ``check_shadow`` (a change made through the admin API), a route that would take
        requests from a file route (`rules.route_shadows`) raises `RouteShadowError` too,
        unless ``admin.api_routes.may_shadow_yaml`` allows it.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        if kind == "route":
            change = self._prepare_route(name, doc)
            if check_shadow and change.item is not None:
                self._check_shadow(change.item)
            return change
        if kind == "policy":
            return self._prepare_policy(name, doc)
        if kind == "consumer":
            return self._prepare_consumer(name, doc)
        return self._prepare_upstream(name, doc)

    def _prepare_consumer(self, name: str, doc: Mapping[str, Any] | None) -> Change:
        # nothing in the config names a consumer: a delete is always allowed
        names = [consumer.name for consumer in self.config.consumers]
        index = names.index(name) if name in names else len(names)
        if name in self.file_consumers:
            raise ConfigError(
                f"consumer {name!r} is defined in the config file, which is read-only",
                path=f"consumers[{index}].name",
                file=API_SOURCE,
            )
        if doc is None:
            return Change("consumer", name, None)
        consumer = read_document(Consumer, doc, f"consumers[{index}]")
        if consumer.name != name:
            raise ConfigError(
                f"{consumer.name!r} is not {name!r}: a consumer cannot be renamed",
                path=f"consumers[{index}].name",
                file=API_SOURCE,
            )
        return Change("consumer", name, consumer)

    def _prepare_route(self, name: str, doc: Mapping[str, Any] | None) -> Change:
        old = self.routes.get(name)
        if doc is None:
            return Change("route", name, None)
        # placed last, as the full validation of the candidate places the changed document
        index = len(self.routes) - (old is not None)
        route = read_document(Route, doc, f"routes[{index}]", extra={"index": index})
        for other in self.by_shape.get((route.match.host, route.match.pattern.shape), ()):
            if other is not old and rules.routes_overlap(route, other):
                position = self.position(other.name)
                if old is not None and self.position(name) < position:
                    position -= 1  # the candidate has the old version taken out
                raise RouteConflictError(
                    rules.route_conflict(other, position),
                    path=f"routes[{index}].match",
                    file=API_SOURCE,
                )
        upstreams = self.config.upstreams
        if route.upstream is not None and route.upstream not in upstreams:
            raise ConfigError(
                rules.missing_upstream(route.upstream, upstreams),
                path=f"routes[{index}].upstream",
                file=API_SOURCE,
            )
        policies = self.config.policies
        for i, policy in rules.policy_refs(route.policies):
            if policy not in policies:
                raise ConfigError(
                    rules.missing_policy(policy, policies),
                    path=f"routes[{index}].policies[{i}]",
                    file=API_SOURCE,
                )
        if any(_is_metrics(item) for item in route.policies):
            routes = [r for r in self.routes.values() if r.name != name]
            self._check_metrics(self.config.policies, [*routes, route], f"routes[{index}]")
        return Change("route", name, route)

    def _check_shadow(self, route: Any) -> None:
        admin = self.config.admin
        if admin is not None and admin.api_routes.may_shadow_yaml:
            return
        index = len(self.routes) - (route.name in self.routes)
        for other in self.routes.values():
            if other.name in self.file_routes and rules.route_shadows(route.match, other.match):
                raise RouteShadowError(
                    rules.route_shadowed(route, other),
                    route=other.name,
                    path=f"routes[{index}].match",
                    file=API_SOURCE,
                )

    def _prepare_policy(self, name: str, doc: Mapping[str, Any] | None) -> Change:
        if doc is not None:
            spec = read_document(PolicySpec, doc, f"policies.{name}", extra={"name": name})
            if _is_metrics(spec):
                policies = {**self.config.policies, name: spec}  # keeps its place, or last
                self._check_metrics(policies, list(self.routes.values()), f"policies.{name}")
            return Change("policy", name, spec)
        remaining = {k: v for k, v in self.config.policies.items() if k != name}
        # the full validation reports the first listener, else the first route, using it
        if name in self.listener_policies:
            position, i = self.listener_policies[name]
            raise ConfigError(
                rules.missing_policy(name, remaining),
                path=f"listeners[{position}].policies[{i}]",
                file=None,
            )
        users = self.policy_users.get(name)
        if users:
            first = next(iter(users))
            i = next(j for j, ref in rules.policy_refs(self.routes[first].policies) if ref == name)
            raise ConfigError(
                rules.missing_policy(name, remaining),
                path=f"routes[{self.position(first)}].policies[{i}]",
                file=None if first in self.file_routes else API_SOURCE,
            )
        return Change("policy", name, None)

    def _prepare_upstream(self, name: str, doc: Mapping[str, Any] | None) -> Change:
        if doc is not None:
            upstream = read_document(Upstream, doc, f"upstreams.{name}", extra={"name": name})
            found = rules.admin_target(upstream, self.config.admin)
            if found is not None:
                raise ConfigError(
                    found[1], path=f"upstreams.{name}.targets[{found[0]}]", file=API_SOURCE
                )
            return Change("upstream", name, upstream)
        users = self.users.get(name)
        if users:
            # the full validation reports the first route that refers to it
            first = next(iter(users))
            remaining = {k: v for k, v in self.config.upstreams.items() if k != name}
            raise ConfigError(
                rules.missing_upstream(name, remaining),
                path=f"routes[{self.position(first)}].upstream",
                file=None if first in self.file_routes else API_SOURCE,
            )
        return Change("upstream", name, None)

    def _check_metrics(self, policies: Any, routes: list[Route], changed: str) -> None:
        # the whole-config rule (rules.config) on the candidate: one declaration per metric
        found = metrics_policy.first_duplicate(
            rules.declared_policies(policies, self.config.listeners, routes)
        )
        if found is None:
            return
        path, _, message = found
        stored = path.startswith(f"{changed}.")
        if not stored and path.startswith("routes["):
            position = int(path[len("routes[") : path.index("]")])
            stored = routes[position].name not in self.file_routes
        raise ConfigError(message, path=path, file=API_SOURCE if stored else None)

    def position(self, route_name: str) -> int:
        """The route's place in ``config.routes`` (its config path is ``routes[position]``)."""
        for i, name in enumerate(self.routes):
            if name == route_name:
                return i
        raise KeyError(route_name)

    # -- applying ---------------------------------------------------------------------------

    def commit(self, changes: Iterable[Change]) -> Config:
        """Apply prepared ``changes``; return (and keep) the new config."""
        changes = list(changes)
        for change in changes:
            if change.kind != "route":
                continue
            old = self.routes.pop(change.name, None)
            if old is not None:
                self._unlink(old)
            if change.item is not None:
                self.routes[change.name] = change.item
                self._link(change.item)
        named: dict[str, dict[str, Any]] = {
            "upstream": dict(self.config.upstreams),
            "policy": dict(self.config.policies),
            "consumer": {consumer.name: consumer for consumer in self.config.consumers},
        }
        for change in changes:
            if change.kind in named:
                if change.item is None:
                    named[change.kind].pop(change.name, None)
                else:
                    named[change.kind][change.name] = change.item
        self.config = dataclasses.replace(
            self.config,
            routes=tuple(self.routes.values()),
            upstreams=MappingProxyType(named["upstream"]),
            policies=MappingProxyType(named["policy"]),
            consumers=tuple(named["consumer"].values()),
        )
        return self.config

    def _link(self, route: Route) -> None:
        self.by_shape.setdefault((route.match.host, route.match.pattern.shape), []).append(route)
        if route.upstream is not None:
            self.users.setdefault(route.upstream, {})[route.name] = None
        for _, policy in rules.policy_refs(route.policies):
            self.policy_users.setdefault(policy, {})[route.name] = None

    def _unlink(self, route: Route) -> None:
        key = (route.match.host, route.match.pattern.shape)
        same = self.by_shape[key]
        same.remove(route)
        if not same:
            del self.by_shape[key]
        if route.upstream is not None:
            users = self.users[route.upstream]
            users.pop(route.name, None)
            if not users:
                del self.users[route.upstream]
        for _, policy in rules.policy_refs(route.policies):
            users = self.policy_users.get(policy)
            if users is not None:
                users.pop(route.name, None)
                if not users:
                    del self.policy_users[policy]
