"""Rate limits in the config: the ``rate_limit`` policy family's settings (`RateLimitConfig`).

A limit is a rate (``100/s``: 100 requests per second), an algorithm and, for the two bucket
algorithms, a ``burst`` (the bucket's size; the rate's count when not given). Requests are
counted per *key*: a list of parts (``client_ip``, ``consumer``, ``route``, ``api_key``,
``header:NAME``, ``param:NAME``, ``jwt_claim:NAME``) whose values, together, name the bucket.
A part the request lacks (no such header, no consumer yet) counts the request under the
client's address instead, so leaving a header out never escapes the limit.

``tiers`` gives consumers of a tier (their ``tier`` in ``consumers:``) their own rate; the
policy's ``rate`` applies to everyone else (no ``rate``: only the tiers are limited).
``backend: local`` counts on this host, exactly across its workers (a table in shared memory);
``backend: redis`` counts in Redis, exactly across every gateway using it, and when Redis
cannot answer in ``backend_timeout`` the request is let through or refused as
``on_backend_error`` says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

from isekai.config.meta import item, setting
from isekai.config.redis_url import check_redis_url
from isekai.config.rules import Where
from isekai.config.units import Rate

__all__ = [
    "ALGORITHMS",
    "BUCKET_ALGORITHMS",
    "KEY_PART_PATTERN",
    "RateLimitConfig",
    "RateTier",
    "key_part",
]

ALGORITHMS = ("token_bucket", "gcra", "sliding_window", "fixed_window")
BUCKET_ALGORITHMS = ("token_bucket", "gcra")  # the ones with a `burst`
PLAIN_PARTS = ("client_ip", "consumer", "route", "api_key")
NAMED_PARTS = ("header", "param", "jwt_claim")
MAX_COST = 1_000_000
# a key part: a plain one, or header:/param:/jwt_claim: and a name (header: an RFC 9110 token;
# param: a query parameter name; jwt_claim: printable ASCII without spaces, at most 64)
KEY_PART_PATTERN = (
    r"^(client_ip|consumer|route|api_key|header:[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}"
    r"|param:[A-Za-z0-9._~-]{1,64}|jwt_claim:[\x21-\x7e]{1,64})$"
)
_KEY_PART = re.compile(KEY_PART_PATTERN[1:-1])
# printable ASCII without spaces and without braces (a brace would make a Redis Cluster hash
# tag of the prefix: every key in one slot)
PREFIX_PATTERN = r"^[\x21-\x7a|~]{0,64}$"
_PREFIX = re.compile(PREFIX_PATTERN[1:-1])


def key_part(text: str) -> tuple[str, str]:
    """``"header:X-User"`` -> ``("header", "x-user")``; ``"client_ip"`` -> ``("client_ip", "")``.
    Header names are lower-cased (compared without case). ``ValueError`` when malformed."""
    if not _KEY_PART.fullmatch(text):
        kind = text.partition(":")[0]
        if kind in NAMED_PARTS:
            raise ValueError(f"bad key part {text!r}: {kind}: needs a name, like {kind}:X-User")
        raise ValueError(
            f"unknown key part {text!r}: expected one of {', '.join(PLAIN_PARTS)}, "
            "header:NAME, param:NAME or jwt_claim:NAME"
        )
    kind, _, name = text.partition(":")
    return kind, name.lower() if kind == "header" else name


def _no_tiers() -> Mapping[str, RateTier]:
    return MappingProxyType({})


def _error(where: Where, key: str, message: str) -> Exception:
    """The error located at ``key`` when it was written, else at the object."""
    return where.error(key if where.has(key) else None, message)


def _check_limit(
    rate: Rate, burst: int | None, cost: int, algorithm: str, where: Where, at: str
) -> None:
    if burst is not None and algorithm not in BUCKET_ALGORITHMS:
        message = (
            f"burst applies to the token_bucket and gcra algorithms; {algorithm} allows "
            "the rate's count per window"
        )
        raise _error(where, at, message)
    capacity = burst if burst is not None else rate.count
    if cost > capacity:
        message = (
            f"cost {cost} is more than the {'burst' if burst is not None else 'count'} "
            f"({capacity:g}) of rate {rate}: every request would be refused"
        )
        raise _error(where, "cost" if not where.has(at) and where.has("cost") else at, message)


def _rate_limit(values: dict[str, Any], where: Where) -> None:
    rate, tiers = values.get("rate"), values.get("tiers") or {}
    algorithm = values.get("algorithm", "token_bucket")
    cost = values.get("cost", 1)
    if rate is None and not tiers:
        raise _error(where, "rate", "a rate_limit needs a rate, or tiers, or both")
    if rate is not None:
        _check_limit(rate, values.get("burst"), cost, algorithm, where, "burst")
    elif values.get("burst") is not None:
        raise where.error("burst", "burst is the bucket of `rate`: give a rate too")
    for tier in tiers.values():
        _check_limit(tier.rate, tier.burst, cost, algorithm, where.of(tier), "burst")
    for text in values.get("key", ()):
        try:
            key_part(text)
        except ValueError as exc:
            raise where.error("key", str(exc)) from None
    backend = values.get("backend", "local")
    url = values.get("redis_url")
    if backend == "redis" and url is None:
        raise _error(where, "redis_url", "backend: redis needs a redis_url")
    if backend != "redis" and url is not None:
        raise where.error("redis_url", "redis_url is set but backend is local: say backend: redis")
    if not _PREFIX.fullmatch(values.get("key_prefix", "")):
        message = "at most 64 printable ASCII characters, no spaces or braces"
        raise _error(where, "key_prefix", message)
    if url is not None:
        try:
            check_redis_url(url)
        except ValueError as exc:
            raise where.error("redis_url", str(exc)) from None


@dataclass(frozen=True, slots=True)
class RateTier:
    """The limit of the consumers of one tier."""

    name: str = setting("name", "The tier (a consumer's `tier`).", yaml=False)
    rate: Rate = setting("rate", "Requests per period for this tier, like `1000/m`.")
    burst: int | None = setting(
        "int",
        "The bucket size for this tier (token_bucket, gcra).",
        default=None,
        minimum=1,
        default_doc="the rate's count",
    )


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Requests past a rate are answered 429 with `Retry-After` (and the `RateLimit` headers);
    counted per key, exactly across the workers of a host (`local`) or across gateways
    (`redis`)."""

    family: ClassVar[str] = "rate_limit"

    rate: Rate | None = setting(
        "rate",
        "Requests per period: `100/s`, `1000/m`, `10000/h`, `30/10s`.",
        default=None,
        default_doc="none (only `tiers` limit)",
    )
    burst: int | None = setting(
        "int",
        "The bucket size: how many requests may come at once after a quiet time "
        "(token_bucket, gcra).",
        default=None,
        minimum=1,
        default_doc="the rate's count",
    )
    algorithm: str = setting(
        "enum",
        "`token_bucket` (a bucket of `burst` refilled at `rate`), `gcra` (the same admission, "
        "one timestamp per key), `sliding_window` (the count of the last period, weighted), "
        "`fixed_window` (the count since the period began).",
        default="token_bucket",
        choices=ALGORITHMS,
        case="lower",
    )
    key: tuple[str, ...] = setting(
        "list",
        "What requests are counted by, one part or a list of them: `client_ip`, `consumer`, "
        "`route`, `api_key`, `header:NAME`, `param:NAME` (query), `jwt_claim:NAME`. A part "
        "the request lacks counts it by its client address.",
        default=("client_ip",),
        item=item("string", what="a key part", schema={"pattern": KEY_PART_PATTERN}),
        single=True,
        empty="a key needs at least one part",
        unique="key part {text!r} is listed twice",
        default_doc="`client_ip`",
    )
    cost: int = setting(
        "int",
        "What one request takes from the limit.",
        default=1,
        minimum=1,
        maximum=MAX_COST,
    )
    tiers: Mapping[str, RateTier] = setting(
        "map",
        "Limits per consumer tier (`{free: {rate: 10/m}, premium: {rate: 1000/m}}`): a "
        "consumer of a listed tier gets that limit instead of `rate`.",
        default_factory=_no_tiers,
        item=item("object", cls=RateTier),
        key_field="name",
        default_doc="none",
    )
    backend: str = setting(
        "enum",
        "`local`: counted on this host, exactly across its workers; `redis`: counted in "
        "Redis, exactly across every gateway using it.",
        default="local",
        choices=("local", "redis"),
        case="lower",
    )
    redis_url: str | None = setting(
        "string",
        "The Redis of `backend: redis`: `redis://`, `rediss://`, `unix://`, "
        "`redis+sentinel://host:port[,...]/service`, `redis+cluster://host:port[,...]`.",
        default=None,
        what="a Redis URL",
        default_doc="none",
    )
    on_backend_error: str = setting(
        "enum",
        "When Redis cannot answer: `allow` lets the request through, `deny` answers 503; "
        "either way counted and logged (never a 500).",
        default="allow",
        choices=("allow", "deny"),
        case="lower",
    )
    backend_timeout: float = setting(
        "duration",
        "The longest a decision may wait for Redis; then it is a backend error.",
        default=0.1,
    )
    key_prefix: str = setting(
        "string",
        "The prefix of this policy's Redis keys (gateways sharing limits use the same).",
        default="isekai:rl:",
        schema={"pattern": PREFIX_PATTERN},
    )
    headers: bool = setting(
        "bool",
        "Allowed responses carry `RateLimit` and `RateLimit-Policy` too (429s always do).",
        default=False,
    )
    legacy_headers: bool = setting(
        "bool",
        "Also send `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`.",
        default=False,
    )

    validate = staticmethod(_rate_limit)
