"""Throttling in the config: the ``concurrency_limit`` and ``adaptive_concurrency`` families.

Both bound how many requests of a worker are inside the gateway (past this policy, waiting
for the upstream) at once, and hold the next ones in a bounded admission queue rather than
refusing them outright. ``concurrency_limit`` has a fixed ``max``; ``adaptive_concurrency``
moves its limit between ``min_limit`` and ``max_limit`` with a gradient controller (as Envoy's
adaptive concurrency filter) that lowers it when the latency sampled rises above the measured
minimum and raises it when latency falls back. The runtime is `isekai.policies.concurrency`
and `isekai.policies.adaptive_concurrency`; docs/throttling.md describes them for users.

Shared settings (`QueueSettings` fields are repeated in both classes, the loader reading each
class's own fields): ``queue`` (how many may wait), ``queue_timeout`` (how long one may wait),
``retry_after`` (the ``Retry-After`` of a 503), ``per`` (what one counter covers) and
``priority`` (`Priority`: which waiting request goes first, and which is shed when the queue
is full).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from isekai.config import defaults
from isekai.config.meta import setting
from isekai.config.rules import Where

__all__ = [
    "PER_CHOICES",
    "AdaptiveConcurrencyConfig",
    "ConcurrencyLimitConfig",
    "Priority",
]

PER_CHOICES = ("policy", "route", "upstream")
PRIORITY_MIN = 0
PRIORITY_MAX = 100
_TIERS_SCHEMA = {
    "type": "object",
    "additionalProperties": {"type": "integer", "minimum": PRIORITY_MIN, "maximum": PRIORITY_MAX},
}


def _priority(values: dict[str, Any], where: Where) -> None:
    tiers = values.get("tiers")
    if tiers is None:
        return
    if not isinstance(tiers, Mapping):
        raise where.error("tiers", "expected a mapping of tier names to priorities (0-100)")
    for name, value in tiers.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise where.error("tiers", f"the priority of tier {name!r} must be an integer 0-100")
        if not PRIORITY_MIN <= value <= PRIORITY_MAX:
            raise where.error("tiers", f"the priority of tier {name!r} must be 0-100, not {value}")


@dataclass(frozen=True, slots=True)
class Priority:
    """How important a request is (0-100, higher first): from a request header, else the
    consumer's tier (set by a credential policy earlier in the chain), else `default`."""

    header: str | None = setting(
        "header_name",
        "A request header carrying the priority as an integer 0-100 (other values are ignored).",
        default=None,
        default_doc="none",
    )
    tiers: Any = setting(
        "json",
        "Consumer tier → priority 0-100, e.g. `{enterprise: 10, free: 0}`.",
        default=None,
        schema=_TIERS_SCHEMA,
        default_doc="none",
    )
    default: int = setting(
        "int",
        "The priority of a request that has none of the above.",
        default=defaults.THROTTLE_PRIORITY,
        minimum=PRIORITY_MIN,
        maximum=PRIORITY_MAX,
    )

    validate = staticmethod(_priority)

    def tier_map(self) -> dict[str, int]:
        return dict(self.tiers) if self.tiers else {}


_PER_DOC = (
    "What one counter covers: `route` (each route using the policy has its own), `upstream` "
    "(one per upstream, shared by the routes using the policy that proxy to it; direct "
    "routes share one), or `policy` (one for every route using it)."
)
_QUEUE_DOC = "How many requests may wait for a slot (per counter); `0`: none wait."
_QUEUE_TIMEOUT_DOC = (
    "How long a request may wait in the queue; then 503. Keep it below the policy's `deadline`."
)
_RETRY_AFTER_DOC = "The `Retry-After` of the 503 answers (rounded up to whole seconds)."
_PRIORITY_DOC = (
    "Which waiting request is admitted first and which is shed when the queue is full; "
    "without it every request has priority 0 (first come, first served)."
)


@dataclass(frozen=True, slots=True)
class ConcurrencyLimitConfig:
    """At most `max` requests in flight per worker (per counter); the next wait in a bounded
    queue, then 503 with `Retry-After`."""

    family: ClassVar[str] = "concurrency_limit"

    max: int = setting(
        "int", "Requests in flight at once, per worker and counter.", minimum=1, maximum=1_000_000
    )
    queue: int = setting(
        "int", _QUEUE_DOC, default=defaults.THROTTLE_QUEUE, minimum=0, maximum=1_000_000
    )
    queue_timeout: float = setting(
        "duration", _QUEUE_TIMEOUT_DOC, default=defaults.THROTTLE_QUEUE_TIMEOUT
    )
    per: str = setting(
        "enum", _PER_DOC, default=defaults.THROTTLE_PER, choices=PER_CHOICES, case="lower"
    )
    retry_after: float = setting(
        "duration", _RETRY_AFTER_DOC, default=defaults.THROTTLE_RETRY_AFTER
    )
    priority: Priority | None = setting(
        "object", _PRIORITY_DOC, default=None, cls=Priority, default_doc="none"
    )


def _adaptive(values: dict[str, Any], where: Where) -> None:
    low = values.get("min_limit", defaults.ADAPTIVE_MIN_LIMIT)
    high = values.get("max_limit", defaults.ADAPTIVE_MAX_LIMIT)
    if low > high:
        raise where.error("min_limit", f"min_limit ({low}) is above max_limit ({high})")
    initial = values.get("initial_limit")
    if initial is not None and not low <= initial <= high:
        message = f"initial_limit ({initial}) must be within min_limit..max_limit ({low}..{high})"
        raise where.error("initial_limit", message)


@dataclass(frozen=True, slots=True)
class AdaptiveConcurrencyConfig:
    """A concurrency limit that follows the upstream's latency (a gradient controller, as
    Envoy's adaptive concurrency): lower when the sampled latency rises above the measured
    minimum, higher when it falls back."""

    family: ClassVar[str] = "adaptive_concurrency"

    min_limit: int = setting(
        "int",
        "The lowest limit (and the limit while the minimum latency is re-measured).",
        default=defaults.ADAPTIVE_MIN_LIMIT,
        minimum=1,
        maximum=1_000_000,
    )
    max_limit: int = setting(
        "int",
        "The highest limit.",
        default=defaults.ADAPTIVE_MAX_LIMIT,
        minimum=1,
        maximum=1_000_000,
    )
    initial_limit: int | None = setting(
        "int",
        "The limit to start with.",
        default=None,
        minimum=1,
        maximum=1_000_000,
        default_doc="`min_limit`",
    )
    sample_interval: float = setting(
        "duration",
        "How often the limit is recomputed from the latencies sampled since the last time.",
        default=defaults.ADAPTIVE_SAMPLE_INTERVAL,
    )
    percentile: float = setting(
        "number",
        "The percentile of the sampled latencies compared with the minimum, 1-100.",
        default=defaults.ADAPTIVE_PERCENTILE,
        minimum=1,
        maximum=100,
    )
    min_rtt_interval: float = setting(
        "duration",
        "How often the baseline (minimum) latency is re-measured; meanwhile the limit is "
        "`min_limit`.",
        default=defaults.ADAPTIVE_MIN_RTT_INTERVAL,
    )
    min_rtt_requests: int = setting(
        "int",
        "Requests sampled to measure the minimum latency.",
        default=defaults.ADAPTIVE_MIN_RTT_REQUESTS,
        minimum=1,
        maximum=100_000,
    )
    buffer: float = setting(
        "number",
        "Tolerance above the minimum latency before the limit goes down (0.1: 10 %).",
        default=defaults.ADAPTIVE_BUFFER,
        minimum=0,
        maximum=10,
    )
    queue: int = setting(
        "int", _QUEUE_DOC, default=defaults.THROTTLE_QUEUE, minimum=0, maximum=1_000_000
    )
    queue_timeout: float = setting(
        "duration", _QUEUE_TIMEOUT_DOC, default=defaults.THROTTLE_QUEUE_TIMEOUT
    )
    per: str = setting(
        "enum", _PER_DOC, default=defaults.THROTTLE_PER, choices=PER_CHOICES, case="lower"
    )
    retry_after: float = setting(
        "duration", _RETRY_AFTER_DOC, default=defaults.THROTTLE_RETRY_AFTER
    )
    priority: Priority | None = setting(
        "object", _PRIORITY_DOC, default=None, cls=Priority, default_doc="none"
    )

    validate = staticmethod(_adaptive)
