"""The targets of one upstream and its health, breaker and retry rules (compiled)."""

from collections.abc import Iterable
from typing import Any

from isekai._core.balancer import Balancer
from isekai._core.target import Target
from isekai._core.upstream import Pool

BREAKER_STATES: tuple[str, ...]
OUTCOMES: tuple[str, ...]
REFUSALS: tuple[str, ...]
REFUSAL_REASONS: tuple[str, ...]

class Cluster:
    name: str
    slot: int
    pools: list[Pool]
    targets: list[Target]
    balancer: Balancer
    balancer_name: str
    config: Any
    max_requests: int
    max_pending: int
    max_retries: int
    panic_threshold: float
    panic: bool
    outlier_failures: int
    base_ejection: float
    max_ejection: float
    max_ejection_share: float
    failure_ratio: float
    window: float
    min_requests: int
    open_for: float
    half_open_requests: int
    attempts: int
    retry_connect: bool
    retry_reset: bool
    retry_timeout: bool
    backoff: float
    max_backoff: float
    budget: float
    min_concurrency: int
    per_try_timeout: float
    overall_timeout: float
    retry_non_idempotent: bool
    max_body: int
    ewma_decay: float
    in_flight: int
    retries_active: int
    retries_total: int
    retries_refused: int
    refusal: int
    picked_epoch: int
    def __init__(self, name: str, balancer: Balancer, balancer_name: str = ...) -> None: ...
    def set_failure_statuses(self, statuses: Iterable[int]) -> None: ...
    def set_retry_on(self, conditions: Iterable[str | int]) -> None: ...
    def set_health(self, address: str, healthy: bool) -> bool: ...
    def update(self, now: float = ...) -> None: ...
    def recompute(self) -> None: ...
    def reset_breakers(self) -> None: ...
    def reset_ejections(self) -> None: ...
    def pick_target(self, exchange: object = ..., avoid: Target | None = ...) -> Target | None: ...
    def report_outcome(
        self,
        target: Target,
        outcome: str,
        status: int = ...,
        elapsed: float = ...,
        now: float = ...,
        probe: int = ...,
    ) -> None: ...
    def release_target(self, target: Target) -> None: ...
    def start_retry(self) -> bool: ...
    def end_retry(self) -> None: ...
    def retry_backoff(self, attempt: int) -> float: ...
    def wants_retry(self, outcome: str, status: int = ...) -> bool: ...
    @property
    def refusal_name(self) -> str: ...
    def refusals(self) -> dict[str, int]: ...
    def target_stats(self, now: float = ...) -> list[dict[str, Any]]: ...
    def stats(self) -> dict[str, Any]: ...
