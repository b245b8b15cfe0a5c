"""Per-worker request counters and fixed-bucket latency histograms (compiled)."""

from typing import Any

LATENCY_BUCKETS: tuple[float, ...]

class Counters:
    def __init__(self) -> None: ...
    def slot(self, name: str) -> int:
        """Stable slot index for a label; "" (unrouted) is slot 0."""
    def record_py(
        self, slot: int, status: int, bytes_in: int, bytes_out: int, latency_s: float
    ) -> None: ...
    def connection_opened_py(self) -> None: ...
    def connection_closed_py(self) -> None: ...
    def upstream_error_py(self, slot: int, kind: int) -> None:
        """kind: 0 connect failed, 1 timeout, 2 reset/malformed response."""
    def snapshot(self) -> dict[str, Any]:
        """{"connections": {"active", "total"}, "slots": {label: {"requests", "status",
        "bytes_in", "bytes_out", "upstream_errors", "latency": {"buckets", "sum", "count"}}}}"""
    def __len__(self) -> int: ...
