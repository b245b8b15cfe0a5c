"""Run every micro-benchmark and print one table.

    python bench/micro/run.py                  # router, head parse, callgrind
    python bench/micro/run.py --no-callgrind   # the in-process ones only (~1 min)

router        Router.match ns/op on 10 and 10,000 routes (bench_router.py)
parse         DownstreamProtocol: head parse + route + direct response, ns/request (bench_parse.py)
ip set        IpSet lookups, 10 and 10,000 networks, ns/lookup (bench_iptrie.py)
rate limit    LimitTable take (cdef, C loop): 1 hot key and 100,000 keys, private table and
              shared mmap, ns/take (bench_ratelimit.py)
balancers     each balancer's pick with 3, 10 and 100 targets, ns/pick (bench_balancers.py)
policies      the same request as parse with each hot policy family on the route (bench_families.py)
instructions  callgrind instructions per proxied request: direct, nginx, HAProxy, Isekai, and
              Isekai with the small_get_policies chain (instructions.py,
              instructions_policies.py; need valgrind)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE)]  # the repo's isekai, then the bench modules

import bench_balancers  # noqa: E402
import bench_families  # noqa: E402
import bench_iptrie  # noqa: E402
import bench_parse  # noqa: E402
import bench_ratelimit  # noqa: E402
import bench_router  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--no-callgrind", action="store_true", help="skip instructions.py")
    p.add_argument("--n1", type=int, default=500, help="callgrind: first segment (500)")
    p.add_argument("--n2", type=int, default=2500, help="callgrind: second segment (2500)")
    args = p.parse_args(argv)
    rows: list[tuple[str, str, str]] = []
    started = time.monotonic()

    print("router ...", flush=True)
    for table, case, ns in bench_router.results():
        rows.append(("route match", f"{table}: {case}" if table != "-" else case, f"{ns:,.0f} ns"))

    print("head parse ...", flush=True)
    for case, ns in bench_parse.results():
        rows.append(("head parse + direct response", case, f"{ns:,.0f} ns"))

    print("ip set ...", flush=True)
    for size, case, ns in bench_iptrie.results():
        if "C loop" in case:
            rows.append(("IpSet lookup", f"{size}: {case}", f"{ns:,.0f} ns"))

    print("rate limit ...", flush=True)
    for kind, case, ns in bench_ratelimit.results():
        if "C loop" in case:
            rows.append(("rate limit take", f"{kind}: {case}", f"{ns:,.0f} ns"))

    print("balancers ...", flush=True)
    for name, size, median, _best in bench_balancers.results():
        rows.append(("balancer pick", f"{name}, {size} targets", f"{median:,.0f} ns"))

    print("policies ...", flush=True)
    for case, ns in bench_families.results():
        rows.append(("head parse + policies + direct response", case, f"{ns:,.0f} ns"))

    if not args.no_callgrind:
        import instructions

        print("callgrind ...", flush=True)
        for r in instructions.run(list(instructions.TARGETS), args.n1, args.n2, None):
            rows.append(
                (
                    "instructions/request",
                    f"{r['target']} (keep-alive GET, ~100 B; N {r['n1']} → {r['n2']})",
                    f"{r['instructions_per_request']:,}",
                )
            )
        import instructions_policies

        for r in instructions_policies.measure(args.n1, args.n2):  # with an Origin, as a browser
            rows.append(("instructions/request", r["target"], f"{r['instructions_per_request']:,}"))

    print(f"\nmicro-benchmarks ({time.monotonic() - started:.0f} s)\n")
    print("| benchmark | case | per op |")
    print("|---|---|--:|")
    for bench, case, value in rows:
        print(f"| {bench} | {case} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
