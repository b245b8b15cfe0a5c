"""Micro-benchmark: Router.match on a small and a 10,000-route API table.

Run after building the extension:  PYTHONPATH=. python bench/micro/bench_router.py
Prints ns per match() call (Python call overhead included; the "loop" row is the cost of the
same loop calling a trivial builtin, to subtract by eye). Best of REPEATS runs of LOOPS calls.
"""

from __future__ import annotations

import random
import time

from isekai._core.router import Router
from isekai.config.units import parse_path_pattern

LOOPS = 200_000
REPEATS = 5

WORDS = [
    "user",
    "order",
    "invoice",
    "payment",
    "product",
    "cart",
    "shipment",
    "review",
    "coupon",
    "account",
    "session",
    "ticket",
    "message",
    "report",
    "device",
    "tenant",
    "plan",
    "quota",
    "webhook",
    "event",
    "file",
    "folder",
    "team",
    "role",
    "policy",
]
SUBS = ["items", "history", "owners", "events"]


def resources(count: int) -> list[str]:
    out = []
    for a in WORDS:
        for b in WORDS:
            out.append(f"{a}-{b}s" if a != b else f"{a}s")
    return out[:count]


def big_table() -> tuple[Router, list[tuple[str, tuple[str, ...], str]]]:
    """10,000 routes: 2 versions x 500 resources x 10 routes."""
    routes = []
    for version in ("v1", "v2"):
        for res in resources(500):
            base = f"/api/{version}/{res}"
            routes += [
                (("GET",), base),
                (("POST",), base),
                (("GET",), base + "/{id}"),
                (("PUT",), base + "/{id}"),
                (("DELETE",), base + "/{id}"),
            ]
            routes += [(("GET",), base + "/{id}/" + sub) for sub in SUBS]
            routes.append((("GET",), base + "/{id}/files/*"))
    r = Router()
    for i, (methods, pattern) in enumerate(routes):
        r.add(None, methods, parse_path_pattern(pattern), f"route-{i}")
    assert len(r) == 10_000, len(r)
    return r, routes


def small_table() -> Router:
    r = Router()
    for i, (methods, pattern) in enumerate(
        [
            (("GET",), "/health"),
            (("GET",), "/api/v1/users"),
            (("POST",), "/api/v1/users"),
            (("GET",), "/api/v1/users/{id}"),
            (("PUT", "PATCH"), "/api/v1/users/{id}"),
            (("DELETE",), "/api/v1/users/{id}"),
            (("GET",), "/api/v1/users/{id}/orders"),
            (("GET",), "/api/v1/orders/{id}"),
            (None, "/static/*"),
            (("GET",), "/api/v1/users/me"),
        ]
    ):
        r.add(None, methods, parse_path_pattern(pattern), f"route-{i}")
    assert len(r) == 10
    return r


def timeit(fn, args_list) -> float:
    n = len(args_list)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter_ns()
        for i in range(LOOPS):
            fn(*args_list[i % n])
        best = min(best, (time.perf_counter_ns() - start) / LOOPS)
    return best


def results() -> list[tuple[str, str, float]]:
    """(table, case, ns per match()) for every case, the no-op loop first."""
    rng = random.Random(7)
    loop = lambda *a: None  # noqa: E731
    rows = [("-", "loop + call overhead (no-op)", timeit(loop, [(b"", b"GET", b"/")]))]

    small = small_table()
    for label, args in (
        ("static hit /health", [(b"api.example.com", b"GET", b"/health")]),
        (
            "param hit /api/v1/users/{id}",
            [(b"api.example.com", b"GET", b"/api/v1/users/%d" % i) for i in range(64)],
        ),
        ("static over param /users/me", [(b"h", b"GET", b"/api/v1/users/me")]),
        ("wildcard /static/*", [(b"h", b"GET", b"/static/css/site.css")]),
        ("404", [(b"h", b"GET", b"/api/v2/nothing")]),
        ("405", [(b"h", b"POST", b"/api/v1/orders/1")]),
    ):
        rows.append(("10 routes", label, timeit(small.match, args)))

    big, routes = big_table()
    res = resources(500)
    collection = [
        (b"h", b"GET", f"/api/v{rng.choice('12')}/{rng.choice(res)}".encode()) for _ in range(256)
    ]
    item = [
        (
            b"h",
            b"GET",
            f"/api/v{rng.choice('12')}/{rng.choice(res)}/{rng.randrange(10**6)}".encode(),
        )
        for _ in range(256)
    ]
    sub = [
        (
            b"h",
            b"GET",
            f"/api/v1/{rng.choice(res)}/{rng.randrange(10**6)}/{rng.choice(SUBS)}".encode(),
        )
        for _ in range(256)
    ]
    files = [
        (b"h", b"GET", f"/api/v2/{rng.choice(res)}/42/files/a/b/c.txt".encode()) for _ in range(256)
    ]
    miss = [(b"h", b"GET", f"/api/v1/{rng.choice(res)}x/1".encode()) for _ in range(256)]
    wrong = [(b"h", b"PATCH", f"/api/v1/{rng.choice(res)}/1".encode()) for _ in range(256)]
    mixed = collection[:64] + item[:64] + sub[:64] + files[:64]
    rng.shuffle(mixed)
    for label, args in (
        ("collection GET /api/vN/{res}", collection),
        ("item GET /api/vN/{res}/{id}", item),
        ("sub GET /api/v1/{res}/{id}/{sub}", sub),
        ("wildcard /api/v2/{res}/{id}/files/*", files),
        ("mixed hits (256 paths)", mixed),
        ("404 (unknown resource)", miss),
        ("405 (PATCH on item)", wrong),
    ):
        rows.append(("10,000 routes", label, timeit(big.match, args)))
    return rows


def main() -> None:
    print(f"Router.match, best of {REPEATS} x {LOOPS:,} calls")
    table = None
    for name, label, ns in results():
        if name != table and name != "-":
            print(name)
        table = name
        print(f"  {label:<34} {ns:8.0f} ns/op")


if __name__ == "__main__":
    main()
