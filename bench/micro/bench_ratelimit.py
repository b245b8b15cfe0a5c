"""Micro-benchmark: token-bucket take in isekai._core.ratelimit (DESIGN.md section 3).

The rate-limit module is not built yet: until it is, this prints "ratelimit: not built yet" and
measures nothing. When it lands, time one `take` on a hot key and on a table of 100,000 keys here,
the same way bench_router.py times Router.match.
"""

from __future__ import annotations

import importlib


def results() -> list[tuple[str, float]] | None:
    """None while isekai._core.ratelimit does not exist; otherwise (case, ns/op) rows."""
    try:
        importlib.import_module("isekai._core.ratelimit")
    except ImportError:
        return None
    return []  # the module exists but its API is not settled: add cases here


def main() -> None:
    rows = results()
    if rows is None:
        print("ratelimit: not built yet")
    elif not rows:
        print("ratelimit: module present, no benchmark cases written yet")
    for label, ns in rows or ():
        print(f"  {label:<34} {ns:8.0f} ns/op")


if __name__ == "__main__":
    main()
