"""``GET /api/rate-limits``: the configured rate limits; ``GET /api/rate-limits/{name}``: one,
and the live state of one of its keys.

The list holds every ``rate_limit`` policy of the running config (named ones and those written
inline on routes and listeners, named by where they are: ``routes.api.policies[0]``), its
settings and the routes and listeners using it. One policy's view takes ``key`` (one ``key``
parameter per key part, in the order of the policy's ``key``; or one client address) and
optionally ``tier``: then the answer has that key's ``state`` as a worker sees it (the table
the host's workers share, or Redis), read without taking anything from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiohttp import web

from isekai.admin.context import CTX, AdminContext
from isekai.admin.http import ApiError, ok
from isekai.admin.schemas import NAME_PATTERN
from isekai.config.policies import PolicySpec
from isekai.config.redis_url import describe_redis_url
from isekai.config.schema import Config

__all__ = ["MAX_KEY_VALUES", "MAX_VALUE", "POLICY_NAME_PATTERN", "rate_limit", "rate_limits"]

# a policy's name: its key under `policies`, or where it is inline (routes.api.policies[0])
_NAME = NAME_PATTERN[1:-1]
POLICY_NAME_PATTERN = rf"^({_NAME}|(routes|listeners)\.{_NAME}\.policies\[[0-9]{{1,6}}\])$"
MAX_KEY_VALUES = 16  # key parameters accepted (a key has at most as many parts as listed)
MAX_VALUE = 256  # characters of one key value (a request line stays far below 64 KiB)


def _specs(config: Config) -> Iterator[tuple[str, PolicySpec, str | None]]:
    """(name, spec, owner) of every rate_limit policy: owner None for a named one."""
    for name, spec in config.policies.items():
        if spec.type == "rate_limit":
            yield name, spec, None
    for kind, items in (("listeners", config.listeners), ("routes", config.routes)):
        for owner in items:
            for i, item in enumerate(owner.policies):
                if not isinstance(item, str) and item.type == "rate_limit":
                    yield f"{kind}.{owner.name}.policies[{i}]", item, f"{kind}.{owner.name}"


def _users(config: Config, name: str) -> list[str]:
    found = [f"listeners.{x.name}" for x in config.listeners if name in x.policies]
    return found + [f"routes.{x.name}" for x in config.routes if name in x.policies]


def _view(name: str, spec: PolicySpec, owner: str | None, config: Config) -> dict[str, Any]:
    options = spec.options
    return {
        "name": name,
        "algorithm": options.algorithm,
        "rate": str(options.rate) if options.rate is not None else None,
        "burst": options.burst,
        "key": list(options.key),
        "cost": options.cost,
        "tiers": {
            tier: {"rate": str(limit.rate), "burst": limit.burst}
            for tier, limit in options.tiers.items()
        },
        "backend": options.backend,
        "redis_url": describe_redis_url(options.redis_url) if options.redis_url else None,
        "on_backend_error": options.on_backend_error,
        "headers": options.headers,
        "legacy_headers": options.legacy_headers,
        "used_by": [owner] if owner is not None else _users(config, name),
    }


# a worker's reason for not answering with a state -> (HTTP status, error code)
_FAILURES = {
    "bad_key": (400, "bad_request"),
    "not_live": (409, "not_in_use"),
    "backend": (503, "backend_unavailable"),
}


def _bad(name: str, message: str) -> ApiError:
    return ApiError(400, "bad_request", f"query parameter {name}: {message}", path=name)


async def rate_limits(request: web.Request) -> web.Response:
    """``GET /api/rate-limits``."""
    ctx: AdminContext = request.app[CTX]
    config = ctx.current or ctx.config
    return ok({"policies": [_view(n, spec, owner, config) for n, spec, owner in _specs(config)]})


async def rate_limit(request: web.Request) -> web.Response:
    """``GET /api/rate-limits/{name}[?key=VALUE...&tier=TIER]``."""
    ctx: AdminContext = request.app[CTX]
    config = ctx.current or ctx.config
    policy = request.match_info["name"]
    found = next(((n, s, o) for n, s, o in _specs(config) if n == policy), None)
    if found is None:
        raise ApiError(404, "not_found", f"no rate_limit policy {policy!r}")
    view = _view(*found, config)
    query = request.rel_url.query
    values = query.getall("key", [])
    tier = query.get("tier", "")
    if not values:
        if tier:
            raise _bad("key", "give the key's values, one key parameter per part of the key")
        return ok({"policy": view})
    if len(values) > MAX_KEY_VALUES or any(len(v) > MAX_VALUE for v in values):
        raise _bad("key", f"at most {MAX_KEY_VALUES} values of {MAX_VALUE} characters")
    if tier and tier not in view["tiers"]:
        raise _bad("tier", f"policy {policy!r} has no tier {tier!r}")
    if len(values) not in (1, len(view["key"])):
        raise _bad("key", f"the key has {len(view['key'])} parts: {', '.join(view['key'])}")
    state = await ctx.status.probe(
        {"what": "rate_limit", "policy": policy, "tier": tier, "key": values}
    )
    if state is None:
        raise ApiError(503, "workers_unavailable", "no worker answered in time")
    reason = state.get("reason")
    if reason is not None:
        status, code = _FAILURES.get(reason, (503, "unavailable"))
        raise ApiError(status, code, str(state.get("error")))
    return ok({"policy": view, "state": state})
