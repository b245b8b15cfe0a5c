"""The ``rate_limit`` family: requests past a rate are answered 429 (`RateLimitConfig`).

`build` turns the config into the `_core` policy (`isekai._core.ratelimit_policy`): the limits
as plain tuples (the base ``rate`` first, then one per tier), the key parts, and either the
worker's shared table (`PolicyEnvironment.rate_table`, one for every worker of the host) or,
with ``backend: redis``, a `RemoteDecision` over a `RedisLimiter`: the request phase hands it
the key and the slow path awaits it (one Redis round trip), for that request only.

`RateLimitTally` is what the worker ships to ``/metrics`` (``rate_limits``): every decision by
policy, tier, key class and outcome, the counts of instances already dropped (a reload that
changed the policy) kept so the counters never go back.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Mapping
from typing import Any

from isekai._core.ratelimit import ALGORITHMS
from isekai._core.ratelimit_policy import RateLimitPolicy
from isekai.config.rate_limit_policy import RateLimitConfig, key_part
from isekai.policies.rate_limit_redis import RedisLimiter

__all__ = ["RateLimitTally", "RemoteDecision", "build", "key_state", "limit_tuple"]

log = logging.getLogger("isekai.policies")

# the share of the policy's `deadline` a Redis decision may take at most: past the deadline
# the slow path answers 503 "did not finish in time", and a slow Redis must end in
# `on_backend_error` instead, whatever `backend_timeout` says
DEADLINE_SHARE = 0.8


def limit_tuple(algorithm: str, rate: Any, burst: int | None) -> tuple[int, float, float, float]:
    """``(algorithm index, count, period, burst)`` of one limit (burst: the count if unset)."""
    return (
        ALGORITHMS.index(algorithm),
        float(rate.count),
        float(rate.period),
        float(burst if burst is not None else max(1.0, rate.count)),
    )


class RemoteDecision:
    """The request phase of a ``backend: redis`` policy, as an awaitable per request."""

    def __init__(self, limiter: RedisLimiter) -> None:
        self.limiter = limiter
        self.timeout = limiter.timeout  # `backend_timeout`, before the deadline bounds it

    def __call__(
        self, policy: RateLimitPolicy, req: Any, key: bytes, index: int, fallback: bool
    ) -> Awaitable[Any]:
        return self._decide(policy, req, key, index, fallback)

    async def _decide(
        self, policy: RateLimitPolicy, req: Any, key: bytes, index: int, fallback: bool
    ) -> Any:
        algorithm, count, period, burst = policy.limit_of(index)
        self.limiter.name = policy.name
        self.limiter.timeout = min(self.timeout, policy.deadline * DEADLINE_SHARE)
        try:
            result = await self.limiter.take(key, algorithm, count, period, burst, int(policy.cost))
        except Exception:  # the limiter never raises; a bug here must not become a 500
            log.exception("rate limit %s: the Redis decision failed", policy.name)
            result = None
        if result is None:
            return policy.backend_failed(req, index, fallback)
        return policy.decided(req, index, fallback, *result)


_FIELDS = ("allowed", "limit", "remaining", "reset", "retry_after")


async def key_state(tally: RateLimitTally, query: Mapping[str, Any]) -> dict[str, Any]:
    """The state of one key of a live rate_limit (the admin API's ``GET /api/rate-limits``):
    ``query`` names the ``policy``, the ``tier`` ("" for the policy's own rate) and the
    ``key`` values (one per key part, or a single client address)."""
    name, tier = query.get("policy"), query.get("tier") or ""
    values = query.get("key") or []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        return {"reason": "bad_key", "error": "key must be a list of strings"}
    for policy in tally.policies():
        if policy.name != name:
            continue
        try:
            index, key = policy.key_for(tier, tuple(values))
        except KeyError:
            return {"reason": "bad_key", "error": f"policy {name!r} has no limit for tier {tier!r}"}
        except ValueError as exc:
            return {"reason": "bad_key", "error": str(exc)}
        if policy.remote is None:
            found: Any = policy.peek(tier, tuple(values))
            backend = "local"
        else:
            algorithm, count, period, burst = policy.limit_of(index)
            found = await policy.remote.limiter.peek(key, algorithm, count, period, burst)
            backend = "redis"
            if found is None:
                return {"reason": "backend", "error": "the Redis backend did not answer"}
        return {
            "backend": backend,
            "tier": tier,
            "key": values,
            **dict(zip(_FIELDS, found, strict=True)),
        }
    message = f"no live rate_limit policy {name!r} in the worker (no route uses it?)"
    return {"reason": "not_live", "error": message}


class RateLimitTally:
    """The decisions of every rate_limit instance of one worker (``stats_providers``)."""

    def __init__(self) -> None:
        self._live: weakref.WeakSet[RateLimitPolicy] = weakref.WeakSet()
        self._retired: dict[tuple[str, str, str, str], int] = {}

    def add(self, policy: RateLimitPolicy) -> None:
        self._live.add(policy)
        policy.on_close = self.retire

    def retire(self, policy: RateLimitPolicy) -> None:
        """``policy`` is dropped: keep its counts."""
        if policy in self._live:
            for tier, key, outcome, count in policy.counts():
                row = (policy.name, tier, key, outcome)
                self._retired[row] = self._retired.get(row, 0) + count
            self._live.discard(policy)

    def rows(self) -> list[list[Any]]:
        """``[[policy, tier, key class, outcome, count], ...]``, cumulative."""
        totals = dict(self._retired)
        for policy in list(self._live):
            for tier, key, outcome, count in policy.counts():
                row = (policy.name, tier, key, outcome)
                totals[row] = totals.get(row, 0) + count
        return [[*row, count] for row, count in sorted(totals.items())]

    def policies(self) -> list[RateLimitPolicy]:
        """The live instances (the admin API's state lookups)."""
        return list(self._live)


def build(config: RateLimitConfig, env: Any) -> RateLimitPolicy:
    """The `_core` policy for ``config`` (see the module's text)."""
    limits: list[tuple[int, float, float, float] | None] = [
        limit_tuple(config.algorithm, config.rate, config.burst)
        if config.rate is not None
        else None
    ]
    tiers: dict[str, int] = {}
    for name, tier in config.tiers.items():
        tiers[name] = len(limits)
        limits.append(limit_tuple(config.algorithm, tier.rate, tier.burst))
    parts = tuple(key_part(text) for text in config.key)
    tally = env.rate_limits
    if config.backend == "redis":
        url = config.redis_url
        limiter = RedisLimiter(
            lambda: env.redis(url),
            prefix=config.key_prefix,
            timeout=config.backend_timeout,
            name="rate_limit",  # the policy's name once known (`RemoteDecision`)
            url=url,
        )
        policy = RateLimitPolicy(
            None,
            tuple(limits),
            tiers,
            parts,
            float(config.cost),
            config.headers,
            config.legacy_headers,
            config.on_backend_error == "deny",
            RemoteDecision(limiter),
        )
        tally.add(policy)
    else:
        policy = RateLimitPolicy(
            env.rate_table(),
            tuple(limits),
            tiers,
            parts,
            float(config.cost),
            config.headers,
            config.legacy_headers,
            config.on_backend_error == "deny",
        )
        tally.add(policy)
    return policy
