"""An upstream's resilience settings: active health checks, outlier ejection, circuit breaker
and retries (the ``health``, ``outlier``, ``breaker`` and ``retry`` keys of an upstream).

Each is a frozen dataclass described field by field with ``meta.setting``, like every config
class (``schema.py``): the loader, the JSON Schema and the docs tables are made from it. An
upstream without the key has ``None`` there: no active checks, no ejection, no breaker, no
retries. Everything they govern is per worker (``isekai._core.cluster``) except the active
checks, which run once per target for the whole gateway.
"""

from __future__ import annotations

from dataclasses import dataclass

from isekai.config import defaults, rules
from isekai.config.meta import item, setting

__all__ = ["Breaker", "HealthCheck", "Outlier", "Retry"]


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks: every target is probed with ``GET path`` (once per target for the
    whole gateway, not once per worker) and the verdict reaches every worker."""

    path: str = setting(
        "request_target",
        "What is requested, e.g. `/healthz`; starts with `/`, a query is allowed.",
        what="a path like /healthz",
    )
    interval: float = setting(
        "duration", "Time between two probes of one target.", default=defaults.HEALTH_INTERVAL
    )
    timeout: float = setting(
        "duration",
        "A probe with no complete response by then fails; shorter than `interval`.",
        default=defaults.HEALTH_TIMEOUT,
    )
    healthy_threshold: int = setting(
        "int",
        "Passing probes in a row that put an unhealthy target back in rotation.",
        default=defaults.HEALTH_HEALTHY_THRESHOLD,
        minimum=1,
    )
    unhealthy_threshold: int = setting(
        "int",
        "Failing probes in a row that take a target out of rotation.",
        default=defaults.HEALTH_UNHEALTHY_THRESHOLD,
        minimum=1,
    )
    expected_status: tuple[int, ...] = setting(
        "list",
        "Statuses that pass, e.g. `[200, 204]`; others, and no response, fail.",
        default=defaults.HEALTH_EXPECTED_STATUS,
        item=item("int", minimum=100, maximum=599),
        what="a list of statuses like [200, 204]",
        unique="status {value} is listed twice",
        default_doc="any 2xx or 3xx",
    )
    host: str | None = setting(
        "host_port",
        "`Host` header of the probes (`host` or `host:port`).",
        default=None,
        what="a host like health.internal or 10.0.0.5:9000",
        default_doc="the target's address",
    )

    validate = staticmethod(rules.health_check)


@dataclass(frozen=True, slots=True)
class Outlier:
    """Passive checks: a target whose requests keep failing is ejected for a growing time."""

    consecutive_failures: int = setting(
        "int",
        "Failures in a row (a 5xx, connect failure, reset or timeout) that eject a target, per "
        "worker.",
        default=defaults.OUTLIER_CONSECUTIVE_FAILURES,
        minimum=1,
    )
    base_ejection: float = setting(
        "duration",
        "An ejection lasts this times the target's ejections in a row (the count falls by one "
        "per quiet `base_ejection`).",
        default=defaults.OUTLIER_BASE_EJECTION,
    )
    max_ejection: float = setting(
        "duration", "The longest an ejection lasts.", default=defaults.OUTLIER_MAX_EJECTION
    )
    max_ejection_percent: int = setting(
        "int",
        "At most this percent of the upstream's targets are ejected at once (always one).",
        default=defaults.OUTLIER_MAX_EJECTION_PERCENT,
        minimum=1,
        maximum=100,
    )


@dataclass(frozen=True, slots=True)
class Breaker:
    """A circuit breaker per target: closed -> open on a failure ratio -> half-open -> closed."""

    failure_ratio: float = setting(
        "number",
        "The breaker opens when this share of the target's requests in `window` failed (more "
        "than 0, at most 1).",
        default=defaults.BREAKER_FAILURE_RATIO,
        minimum=0,
        maximum=1,
        schema={"exclusiveMinimum": 0},
    )
    window: float = setting(
        "duration",
        "The rolling time window the ratio is measured over, per worker.",
        default=defaults.BREAKER_WINDOW,
    )
    min_requests: int = setting(
        "int",
        "Requests in the window before the ratio can open the breaker.",
        default=defaults.BREAKER_MIN_REQUESTS,
        minimum=1,
    )
    open_for: float = setting(
        "duration",
        "How long an open breaker keeps the target out before half-open probes.",
        default=defaults.BREAKER_OPEN_FOR,
    )
    half_open_requests: int = setting(
        "int",
        "Probe requests let through half-open (never more at once): all succeed: closed; one "
        "fails: open again.",
        default=defaults.BREAKER_HALF_OPEN_REQUESTS,
        minimum=1,
    )
    failure_statuses: tuple[int, ...] = setting(
        "list",
        "Response statuses that count as failures; connect failures, resets and timeouts "
        "always do.",
        default=defaults.BREAKER_FAILURE_STATUSES,
        item=item("int", minimum=500, maximum=599),
        what="a list of 5xx statuses like [502, 503]",
        unique="status {value} is listed twice",
        default_doc="`[500, 502, 503, 504]`",
    )

    validate = staticmethod(rules.breaker)


@dataclass(frozen=True, slots=True)
class Retry:
    """Retries of failed attempts, on another target when there is one."""

    attempts: int = setting(
        "int",
        "Tries in all, the first included; `1` never retries.",
        default=defaults.RETRY_ATTEMPTS,
        minimum=1,
        maximum=defaults.RETRY_MAX_ATTEMPTS,
    )
    on: tuple[str | int, ...] = setting(
        "list",
        "What is retried: `connect_failure`, `reset` (connection lost before the response), "
        "`timeout`, and 5xx statuses.",
        default=defaults.RETRY_ON,
        item=item("retry_on"),
        what="a list like [connect_failure, reset, 502, 503, 504]",
        unique="{value!r} is listed twice",
        default_doc="`[connect_failure, reset, 502, 503, 504]`",
    )
    backoff: float = setting(
        "duration",
        "Wait before a retry: up to this (random), doubled for each further retry; `0` retries "
        "at once.",
        default=defaults.RETRY_BACKOFF,
        minimum=0,
    )
    max_backoff: float = setting(
        "duration",
        "The longest wait before a retry (at least `backoff`).",
        default=defaults.RETRY_MAX_BACKOFF,
        minimum=0,
    )
    budget: float = setting(
        "number",
        "Retries in flight stay below this share of the upstream's requests in flight, per "
        "worker (0 to 1).",
        default=defaults.RETRY_BUDGET,
        minimum=0,
        maximum=1,
    )
    min_concurrency: int = setting(
        "int",
        "Retries in flight always allowed per worker, whatever `budget` says.",
        default=defaults.RETRY_MIN_CONCURRENCY,
        minimum=0,
    )
    per_try_timeout: float | None = setting(
        "duration",
        "Time to wait for one try's response; then that try fails as a `timeout`.",
        default=None,
        default_doc="the upstream's `read_timeout`",
    )
    overall_timeout: float | None = setting(
        "duration",
        "No retry starts once this long has passed since the first try (backoff included).",
        default=None,
        default_doc="no limit",
    )
    retry_non_idempotent: bool = setting(
        "bool",
        "Also retry POST, PATCH and other non-idempotent methods on any failure (a connect "
        "failure is retried for every method).",
        default=defaults.RETRY_NON_IDEMPOTENT,
    )
    max_body: int = setting(
        "size",
        "Request bodies up to this size are held so they can be sent again; a larger body is "
        "never retried; `0`: only requests without a body are.",
        default=defaults.RETRY_MAX_BODY,
        minimum=0,
    )
