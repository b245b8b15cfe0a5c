"""The snapshot: everything a worker needs to serve requests under one config, built aside.

`build_snapshot` compiles a validated `Config` into a router whose values are `_core` routes
(prebuilt direct responses, resolved clusters, rewrite templates, policy chains). The worker then
swaps one reference (`ServerState.router`); requests in flight keep the route they matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from isekai._core.counters import Counters
from isekai._core.http import response_head
from isekai._core.protocol import CoreRoute
from isekai._core.router import Router
from isekai.config.changes import Change
from isekai.config.schema import Config, Route
from isekai.policy import compile_chain
from isekai.upstream.clusters import ClusterRegistry

_TEMPLATE_PART = re.compile(r"\{(\*|[A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One config, compiled. ``version`` increases with every snapshot a worker builds.

    ``cores`` holds each route's compiled form by name; `update_snapshot` changes it and the
    router in place.
    """

    config: Config
    router: Router
    version: int
    cores: dict[str, CoreRoute]


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


def _core_route(route: Route, config: Config, clusters: dict, counters: Counters) -> CoreRoute:
    core = CoreRoute(route.name, counters.slot(route.name))
    limits = route.limits
    core.max_body_size = (
        limits.max_body_size if limits.max_body_size is not None else config.limits.max_body_size
    )
    core.body_idle_timeout = limits.body_idle_timeout or 0.0
    core.websocket_idle_timeout = limits.websocket_idle_timeout or 0.0
    core.websocket = route.websocket
    core.chain = compile_chain(()).sync
    if route.respond is not None:
        core.direct = True
        core.respond_status = route.respond.status
        # status line and configured fields, once; `_core` adds the framing per response
        core.respond_head = response_head(route.respond.status, route.respond.headers)
        core.respond_body = route.respond.body
        return core
    upstream = config.upstreams[route.upstream]
    core.cluster = clusters[route.upstream]
    core.read_timeout = route.timeout if route.timeout is not None else upstream.read_timeout
    if route.strip_prefix:
        core.strip_prefix = route.strip_prefix.encode()
    if route.rewrite is not None:
        core.rewrite = compile_rewrite(route.rewrite)
    return core


def build_snapshot(
    config: Config, registry: ClusterRegistry, counters: Counters, version: int = 1
) -> Snapshot:
    """Compile ``config`` for the request path. Raises ConfigError on route conflicts."""
    clusters = registry.build(config.upstreams)
    router = Router()
    cores = {}
    for route in config.routes:
        core = cores[route.name] = _core_route(route, config, clusters, counters)
        router.add(route.match.host, route.match.methods, route.match.pattern, core)
    return Snapshot(config, router, version, cores)


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
    router, cores = snapshot.router, snapshot.cores
    old_routes = {route.name: route for route in snapshot.config.routes if route.name in cores}
    for change in changes:
        if change.kind == "upstream":
            cluster = registry.update(change.name, change.item)
            if cluster is None:
                continue  # unused: validated
            for route in config.routes:  # point the routes that use it at the new cluster
                if route.upstream == change.name:
                    core = cores[route.name]
                    core.cluster = cluster
                    core.read_timeout = (
                        route.timeout if route.timeout is not None else change.item.read_timeout
                    )
            continue
        old = old_routes.pop(change.name, None)
        if old is not None:
            router.remove(old.match.host, old.match.methods, old.match.pattern)
            del cores[change.name]
        route = change.item
        if route is not None:
            core = cores[route.name] = _core_route(route, config, registry.clusters, counters)
            router.add(route.match.host, route.match.methods, route.match.pattern, core)
            old_routes[route.name] = route
    return Snapshot(config, router, version, cores)
