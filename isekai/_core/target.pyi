"""Per-target state of the upstream side (compiled)."""

from isekai._core.upstream import Pool

class Target:
    upstream: str
    address: str
    pool: Pool | None
    weight: int
    index: int
    owner: object
    selectable: bool
    in_flight: int
    ewma: float
    ewma_at: float
    healthy: bool
    consecutive_failures: int
    ejections: int
    ejected_until: float
    quiet_since: float
    ejections_total: int
    breaker: int
    opened_at: float
    probe_at: float
    epoch: int
    probes_in_flight: int
    probe_successes: int
    opened_total: int
    requests: int
    failures: int
    def __init__(
        self, upstream: str, address: str, pool: Pool | None = None, weight: int = 1
    ) -> None: ...
    def window(self, now: float, width: float) -> tuple[int, int]:
        """(requests, failures) in the rolling window ending at ``now``."""
