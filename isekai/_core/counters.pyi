"""Per-worker request counters and fixed-bucket latency histograms (compiled)."""

from typing import Any

LATENCY_BUCKETS: tuple[float, ...]
METHODS: tuple[str, ...]
STATUS_CLASSES: tuple[str, ...]
ROUTE_LAYOUT: tuple[tuple[str, int], ...]
ROUTE_WIDTH: int

class Counters:
    enabled: bool
    def __init__(self) -> None: ...
    def upstream_slot(self, name: str) -> int:
        """Stable upstream-latency slot of an upstream name."""
    def export(self) -> dict[str, Any]:
        """Compact JSON-compatible numbers, zeros left out (see counters.pyx)."""
    def slot(self, name: str) -> int:
        """Stable slot index for a label; "" (unrouted) is slot 0."""
    def policy_slot(self, name: str) -> int:
        """Stable counter slot of a policy name; "" is slot 0."""
    def snapshot(self) -> dict[str, Any]:
        """{"connections": {"active", "total"}, "slots": {label: {"requests", "status",
        "bytes_in", "bytes_out", "upstream_errors", "internal_errors",
        "latency": {"buckets", "sum", "count"}}}, "policies": {name: {"answers", "errors",
        "timeouts"}}}"""
    def __len__(self) -> int: ...
