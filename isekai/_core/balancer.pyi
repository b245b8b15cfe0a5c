"""Balancers: which selectable target of a cluster an exchange goes to (compiled)."""

from typing import Any

from isekai._core.target import Target
from isekai._core.upstream import Exchange

RING_POINTS_PER_WEIGHT: int
MAX_RING_POINTS: int
MAGLEV_SIZE: int
MAGLEV_RETRIES: int
ALGORITHMS: tuple[str, ...]
HASH_SOURCES: dict[str, int]

def hash_bytes(data: bytes, seed: int = 0) -> int:
    """The 64-bit hash consistent hashing uses (stable across processes)."""

class Balancer:
    @property
    def targets(self) -> list[Target]: ...
    def __init__(self, targets: list[Target], **options: Any) -> None: ...
    def choose(self, exchange: Exchange | None, avoid: Target | None) -> Target | None:
        """A selectable target, not ``avoid`` unless it is the only one; None if none."""
    def pick(self, exchange: Exchange | None = None, avoid: Target | None = None) -> Target | None:
        """`choose` from Python (tests, benchmarks)."""
    def seed(self, value: int) -> None:
        """Fix the random draws (tests)."""
    def pick_loop(self, exchanges: list[Exchange | None], count: int, hold: int = 0) -> int:
        """``count`` picks in one C loop (benchmarks); returns the picks that found no target."""

class RoundRobin(Balancer): ...
class LeastConn(Balancer): ...
class WeightedDraw(Balancer): ...
class Random(WeightedDraw): ...
class PowerOfTwo(WeightedDraw): ...
class Ewma(WeightedDraw): ...

class ConsistentHash(WeightedDraw):
    @property
    def hash_source(self) -> int: ...
    @property
    def hash_name(self) -> bytes: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def size(self) -> int:
        """Points on the ring ("ring"), entries in the table ("maglev")."""
    def __init__(
        self,
        targets: list[Target],
        hash_source: int = 0,
        hash_name: bytes | str = b"",
        algorithm: str = "ring",
        **options: Any,
    ) -> None: ...
    def owner(self, key: bytes) -> Target:
        """The target ``key`` maps to when every target is selectable."""

class KeyedExchange(Exchange):
    key: bytes | None
    def __init__(self, key: bytes | None = None) -> None: ...
