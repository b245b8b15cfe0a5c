"""Micro-benchmark: LimitTable.take (the local rate-limit table) on one hot key and on 100,000 keys.

Run after building the extension:  PYTHONPATH=. python bench/micro/bench_ratelimit.py
Each case runs in a private table (``LimitTable()``) and in a shared one over an anonymous mmap
(as the master makes for its workers; one process here, so no lock contention). Two ways in:
``count_allowed``, one C loop calling the cdef ``take`` (what the rate_limit policy pays per
request: SipHash of the key, bucket lock, decision, CLOCK_MONOTONIC read), and ``take_py`` from
Python (call overhead and the result tuple included). Token bucket, 1000/s, burst 1000. Best of
REPEATS runs.
"""

from __future__ import annotations

import mmap
import time

from isekai._core.ratelimit import LimitTable

LOOPS = 200_000
REPEATS = 5
DISTINCT = 100_000
SLOTS = 131_072  # room for the 100,000 keys (a bucket of 8 may still overflow: LRU)


def table(kind: str) -> LimitTable:
    if kind == "private":
        return LimitTable(slots=SLOTS)
    return LimitTable(mmap.mmap(-1, LimitTable.bytes_for(SLOTS)), slots=SLOTS)


def time_c(t: LimitTable, keys: list[bytes]) -> float:
    rounds = max(1, LOOPS // len(keys))
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        t.count_allowed(keys, rounds, "token_bucket", 1000, 1, 1000)
        best = min(best, (time.perf_counter_ns() - start) / (rounds * len(keys)))
    return best


def time_python(t: LimitTable, keys: list[bytes]) -> float:
    n = len(keys)
    take = t.take_py
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for i in range(LOOPS):
            take(keys[i % n], "token_bucket", 1000, 1, 1000)
        best = min(best, (time.perf_counter_ns() - start) / LOOPS)
    return best


def results() -> list[tuple[str, str, float]]:
    """(table, case, ns per take)."""
    cases = (
        ("1 hot key", [b"rl:per_ip:203.0.113.7"]),
        (
            f"{DISTINCT:,} keys",
            [
                b"rl:per_ip:10.%d.%d.%d" % (i >> 16, (i >> 8) & 255, i & 255)
                for i in range(DISTINCT)
            ],
        ),
    )
    rows = []
    for kind in ("private", "shared mmap"):
        for case, keys in cases:
            t = table(kind)
            rows.append((kind, f"{case}, C loop (cdef take)", time_c(t, keys)))
            rows.append((kind, f"{case}, take_py from Python", time_python(t, keys)))
    return rows


def main() -> None:
    print(f"LimitTable take, token_bucket, best of {REPEATS} x {LOOPS:,}")
    current = None
    for kind, case, ns in results():
        if kind != current:
            print(kind)
        current = kind
        print(f"  {case:<44} {ns:8.1f} ns/take")


if __name__ == "__main__":
    main()
