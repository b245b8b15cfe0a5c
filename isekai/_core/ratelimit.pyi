"""The shared rate-limit table: fixed-size, keyed by bytes, one mmap for every worker (compiled)."""

from typing import Any

Decision = tuple[bool, float, float, float, float]  # allowed, limit, remaining, reset, retry_after

ALGORITHMS: tuple[str, ...]  # ("token_bucket", "gcra", "sliding_window", "fixed_window")

def now() -> float:
    """CLOCK_MONOTONIC seconds (as time.monotonic()): one clock for every process of the host."""

class LimitTable:
    slots: int
    def __init__(self, buffer: Any = None, slots: int = 65536) -> None:
        """Over ``buffer`` (writable, ``bytes_for(slots)`` bytes, zeroed or a table already),
        shared by every process that maps it; None: a private table."""
    @staticmethod
    def bytes_for(slots: int) -> int:
        """The buffer size of a table of ``slots`` slots (rounded up to whole buckets of 8)."""
    def take_py(
        self,
        key: bytes,
        algorithm: str,
        count: float,
        period: float,
        burst: float,
        cost: float = 1,
        now: float | None = None,
    ) -> Decision:
        """Take ``cost`` for ``key`` now: (allowed, limit, remaining, reset, retry_after)."""
    def peek_py(
        self,
        key: bytes,
        algorithm: str,
        count: float,
        period: float,
        burst: float,
        now: float | None = None,
    ) -> Decision:
        """The decision a request of cost 0 would get now; changes nothing."""
    def count_allowed(
        self,
        keys: list[bytes],
        rounds: int,
        algorithm: str,
        count: float,
        period: float,
        burst: float,
        cost: float = 1,
        now: float | None = None,
    ) -> int:
        """Take each key in turn, ``rounds`` times, in one C loop; how many were allowed."""
    def stats(self, now: float | None = None) -> dict[str, int]:
        """{"slots", "used", "evictions", "lock_steals"}."""
    def _hold_lock_for_test(self, key: bytes) -> None: ...

def _siphash128_for_test(key: bytes, data: bytes) -> bytes: ...
