"""Micro-benchmark: ns per balancer pick, each balancer with 3, 10 and 100 targets.

Run after building the extension:  PYTHONPATH=. python bench/micro/bench_balancers.py
Picks run in one C loop (`Balancer.pick_loop`), as the cluster calls `choose` from C. Weights
cycle 1, 2, 3 (the weighted paths, not the equal-weight shortcuts); each pick stays in flight
for the next 2 x targets picks, so in_flight varies as under load; ewma targets carry EWMAs of
5-50 ms; consistent hashing cycles through 256 client-address keys. The loop's own bookkeeping
(in_flight up and down, next key) is in every row. Median of REPEATS runs of LOOPS picks (the
best run is printed too: on a busy machine the gap between them is the noise).
"""

from __future__ import annotations

import random
import statistics
import time

from isekai._core.balancer import KeyedExchange
from isekai._core.target import Target
from isekai.upstream.balancer import make_balancer

LOOPS = 200_000
REPEATS = 15
SIZES = (3, 10, 100)
CASES = (
    ("round_robin", {}),
    ("least_conn", {}),
    ("p2c", {}),
    ("ewma", {}),
    ("random", {}),
    ("consistent_hash", {"algorithm": "ring"}),
    ("consistent_hash", {"algorithm": "maglev"}),
)


def label(name: str, options: dict) -> str:
    return f"{name} ({options['algorithm']})" if options else name


def ns_per_pick(name: str, options: dict, size: int) -> tuple[float, float]:
    """(median, best) ns per pick."""
    rng = random.Random(size)
    targets = [
        Target("bench", f"10.0.{i // 250}.{i % 250}:8080", None, 1 + i % 3) for i in range(size)
    ]
    for t in targets:
        t.ewma = rng.uniform(0.005, 0.050)
    balancer = make_balancer(name, targets, **options)
    balancer.seed(7)
    if name == "consistent_hash":
        exchanges = [KeyedExchange(f"203.0.113.{i}".encode()) for i in range(256)]
    else:
        exchanges = [None]
    hold = 2 * size
    balancer.pick_loop(exchanges, LOOPS // 10, hold)  # warm up
    runs = []
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        misses = balancer.pick_loop(exchanges, LOOPS, hold)
        runs.append((time.perf_counter_ns() - start) / LOOPS)
        assert misses == 0
    return statistics.median(runs), min(runs)


def results() -> list[tuple[str, int, float, float]]:
    """(balancer, targets, median ns per pick, best ns per pick)."""
    return [
        (label(name, options), size, *ns_per_pick(name, options, size))
        for name, options in CASES
        for size in SIZES
    ]


def main() -> None:
    rows = results()
    print(f"balancer pick, ns: median (best) of {REPEATS} x {LOOPS:,} picks in a C loop\n")
    print("| balancer | " + " | ".join(f"{s} targets" for s in SIZES) + " |")
    print("|---|" + "--:|" * len(SIZES))
    by_name: dict[str, dict[int, tuple[float, float]]] = {}
    for name, size, median, best in rows:
        by_name.setdefault(name, {})[size] = (median, best)
    for name, cells in by_name.items():
        text = " | ".join(f"{cells[s][0]:.0f} ({cells[s][1]:.0f})" for s in SIZES)
        print(f"| {name} | {text} |")


if __name__ == "__main__":
    main()
