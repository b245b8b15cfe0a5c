"""The snapshot: everything a worker needs to serve requests under one config, built aside.

`build_snapshot` compiles a validated `Config` into a router whose values are `_core` routes
(prebuilt direct responses, resolved clusters, rewrite templates, policy chains) and the policy
chain of each listener. The worker then swaps one reference (`ServerState.router`) and sets the
listeners' chains; requests in flight keep the route and chain they started with. Policy
instances come from the worker's `PolicySet`, which keeps them across snapshots.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from isekai._core.counters import Counters
from isekai._core.http import response_head
from isekai._core.protocol import CoreRoute
from isekai._core.router import Router
from isekai.chains import PolicySet
from isekai.config import defaults
from isekai.config.changes import Change
from isekai.config.consumers import IdentityHeaders
from isekai.config.geo_policy import GeoFilterConfig
from isekai.config.policies import PolicySpec, plugin_family
from isekai.config.schema import Config, Route
from isekai.errors import ConfigError
from isekai.policies import BUILDERS
from isekai.policies.environment import PolicyEnvironment
from isekai.upstream.clusters import ClusterRegistry

_TEMPLATE_PART = re.compile(r"\{(\*|[A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config, compiled. ``version`` increases with every snapshot a worker builds.

    ``cores`` holds each route's compiled form by name and ``listeners`` each listener's policy
    chain; `update_snapshot` changes them and the router in place. ``policies`` is the set the
    chains' instances belong to.
    """

    config: Config
    router: Router
    version: int
    cores: dict[str, CoreRoute]
    listeners: dict[str, tuple]
    policies: PolicySet


def build_policy(spec: PolicySpec, env: PolicyEnvironment | None = None) -> object:
    """A policy instance for ``spec``: a built-in family (given the worker's ``env``), or one
    registered or installed (given its config only)."""
    build = BUILDERS.get(spec.type)
    if build is None:
        family = plugin_family(spec.type)
        if family is None:  # validated configs name known types only
            raise ConfigError(f"unknown policy type {spec.type!r}")
        return family.policy(spec.options)
    return build(spec.options, env if env is not None else PolicyEnvironment())


def stripped_headers(config: Config) -> tuple[bytes, ...]:
    """Lower-case names of the request fields removed from every client request before any
    policy runs: the headers that carry a resolved identity upstream (`X-Consumer-ID`, and
    every name a credential policy's ``upstream_headers`` lists) and the country header of
    every ``geo_filter`` policy, so that only the gateway can set them (on every route, with
    or without those policies). A name is given with "-" for "_": the core drops either
    spelling, in any case."""
    names = {defaults.CONSUMER_HEADER.lower().encode()}
    specs = [*config.policies.values()]
    for owner in (*config.routes, *config.listeners):
        specs.extend(item for item in owner.policies if isinstance(item, PolicySpec))
    for spec in specs:
        if isinstance(spec.options, GeoFilterConfig):
            names.add(spec.options.header.lower().encode())
        headers = getattr(spec.options, "upstream_headers", None)
        if isinstance(headers, IdentityHeaders):
            if headers.consumer:
                names.add(headers.consumer.lower().encode())
            names.update(header.lower().encode() for _, header in headers.claims)
    # compared with "_" read as "-" (`X_Consumer_ID` is `X-Consumer-ID` to CGI-style upstreams)
    return tuple(sorted({name.replace(b"_", b"-") for name in names}))


def compile_rewrite(template: str) -> tuple[tuple[bytes, str | None], ...]:
    """``/v2/{id}/x`` -> ((b"/v2/", "id"), (b"/x", None)); ``{*}`` is the wildcard tail."""
    parts: list[tuple[bytes, str | None]] = []
    pos = 0
    for m in _TEMPLATE_PART.finditer(template):
        parts.append((template[pos : m.start()].encode(), m.group(1)))
        pos = m.end()
    if pos < len(template) or not parts:
        parts.append((template[pos:].encode(), None))
    return tuple(parts)


def _access_sample(route: Route, config: Config) -> float:
    """The share of ``route``'s requests the access log takes (0 when it is off for it)."""
    own = route.access_log
    if not own.enabled:
        return 0.0
    return own.sample if own.sample is not None else config.observability.access_log.sample


def _core_route(
    route: Route, config: Config, clusters: dict, counters: Counters, policies: PolicySet
) -> CoreRoute:
    core = CoreRoute(route.name, counters.slot(route.name))
    limits = route.limits
    core.max_body_size = (
        limits.max_body_size if limits.max_body_size is not None else config.limits.max_body_size
    )
    core.body_idle_timeout = limits.body_idle_timeout or 0.0
    core.websocket_idle_timeout = limits.websocket_idle_timeout or 0.0
    core.websocket = route.websocket
    core.access_sample = _access_sample(route, config)
    if route.policies:
        core.chain = policies.chain(route.policies, f"routes.{route.name}", config.policies)
    if route.respond is not None:
        core.direct = True
        core.respond_status = route.respond.status
        # status line and configured fields, once; `_core` adds the framing per response
        core.respond_head = response_head(route.respond.status, route.respond.headers)
        core.respond_body = route.respond.body
        core.respond_headers = route.respond.headers
        return core
    upstream = config.upstreams[route.upstream]
    core.cluster = clusters[route.upstream]
    core.read_timeout = route.timeout if route.timeout is not None else upstream.read_timeout
    core.preserve_host = route.preserve_host
    if route.strip_prefix:
        core.strip_prefix = route.strip_prefix.encode()
    if route.rewrite is not None:
        core.rewrite = compile_rewrite(route.rewrite)
    return core


def build_snapshot(
    config: Config,
    registry: ClusterRegistry,
    counters: Counters,
    version: int = 1,
    policies: PolicySet | None = None,
) -> Snapshot:
    """Compile ``config`` for the request path. Raises ConfigError on route conflicts.

    The chains hold instances of ``policies`` (a new set when None); the caller `release`s
    the snapshot this one replaces, so instances it no longer uses are closed.
    """
    if policies is None:
        policies = PolicySet(counters, build_policy)
    clusters = registry.build(config.upstreams)
    router = Router()
    cores = {}
    for route in config.routes:
        core = cores[route.name] = _core_route(route, config, clusters, counters, policies)
        router.add(route.match.host, route.match.methods, route.match.pattern, core)
    listeners = {
        listener.name: policies.chain(
            listener.policies, f"listeners.{listener.name}", config.policies
        )
        for listener in config.listeners
    }
    return Snapshot(config, router, version, cores, listeners, policies)


def release(snapshot: Snapshot) -> None:
    """``snapshot`` was replaced by a whole new one: its chains let go of their instances."""
    for core in snapshot.cores.values():
        snapshot.policies.release(core.chain)
    for chain in snapshot.listeners.values():
        snapshot.policies.release(chain)


def update_snapshot(
    snapshot: Snapshot,
    config: Config,
    changes: list[Change],
    registry: ClusterRegistry,
    counters: Counters,
    version: int,
) -> Snapshot:
    """Apply validated ``changes`` (leading from ``snapshot.config`` to ``config``) to the
    snapshot's router and routes in place: work in proportion to the change, not the config.

    The event loop runs no request while this runs, so a request sees the routes before or
    after, never between; a request that matched an old route keeps it. On an unexpected
    error the caller builds a whole snapshot instead (`build_snapshot`).
    """
    router, cores, policies = snapshot.router, snapshot.cores, snapshot.policies
    listeners = dict(snapshot.listeners)
    old_routes = {route.name: route for route in snapshot.config.routes if route.name in cores}
    # each change is applied as the item stands in ``config`` (a later change of the same batch
    # may have changed or removed it again: the final state is what the snapshot must show),
    # upstreams first, so that every route finds the cluster its final state names
    final_routes = {route.name: route for route in config.routes}
    for change in sorted(changes, key=lambda change: _APPLY_ORDER[change.kind]):
        if change.kind == "consumer":  # the worker's consumer directory follows config
            continue
        if change.kind == "policy":
            _rechain(change.name, config, cores, listeners, policies)
            continue
        if change.kind == "upstream":
            upstream = config.upstreams.get(change.name)
            cluster = registry.update(change.name, upstream)
            if cluster is None or upstream is None:
                continue  # unused: validated
            for route in config.routes:  # point the routes that use it at the new cluster
                core = cores.get(route.name)  # (one not built yet is, by its own change)
                if core is not None and route.upstream == change.name:
                    core.cluster = cluster
                    core.read_timeout = (
                        route.timeout if route.timeout is not None else upstream.read_timeout
                    )
            continue
        old = old_routes.pop(change.name, None)
        dropped = ()
        if old is not None:
            router.remove(old.match.host, old.match.methods, old.match.pattern)
            dropped = cores.pop(change.name).chain
        route = final_routes.get(change.name)
        if route is not None:
            core = _core_route(route, config, registry.clusters, counters, policies)
            cores[route.name] = core
            router.add(route.match.host, route.match.methods, route.match.pattern, core)
            old_routes[route.name] = route
        policies.release(dropped)  # after the new chain took what it keeps
    return Snapshot(config, router, version, cores, listeners, policies)


_APPLY_ORDER = {"upstream": 0, "policy": 1, "route": 2, "consumer": 3}


def _uses(items: tuple, name: str) -> bool:
    return any(item == name for item in items if isinstance(item, str))


def _rechain(name: str, config: Config, cores: dict, listeners: dict, policies: PolicySet) -> None:
    """Policy ``name`` changed (or went): rebuild the chains that name it."""
    for route in config.routes:
        core = cores.get(route.name)
        if core is not None and _uses(route.policies, name):
            # (a route not built yet is built by its own change, with the new policy)
            dropped = core.chain
            core.chain = policies.chain(route.policies, f"routes.{route.name}", config.policies)
            policies.release(dropped)
    for listener in config.listeners:
        if _uses(listener.policies, name):
            dropped = listeners[listener.name]
            listeners[listener.name] = policies.chain(
                listener.policies, f"listeners.{listener.name}", config.policies
            )
            policies.release(dropped)
