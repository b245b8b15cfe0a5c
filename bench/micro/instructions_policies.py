"""Instructions per proxied request with the hot policy families on the route, next to none.

    python bench/micro/instructions_policies.py [--n1 500 --n2 2500]

The same callgrind measurement as instructions.py (Isekai, `workers: 1`, sequential keep-alive
GETs of ~100 B), twice: the plain config of small_get, then the same route with the
small_get_policies chain of bench/run.py (ip_filter allow list, cors with an allowed Origin,
headers set with a `${client_ip}` placeholder plus a response field). Every request carries
`Origin: https://app.example.com`, so the CORS response phase does its work. The difference
is what the three policies cost per request, in user-space instructions.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions  # noqa: E402
import run as bench_run  # noqa: E402  (bench/run.py: POLICIES_YAML, with_policies)
from harness import targets as T  # noqa: E402

ORIGIN = "https://app.example.com"


def drive(port: int, path: str, count: int, expect_len: int) -> int:
    """instructions.drive, with an Origin on every request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    closes = 0
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": "bench.local", "Origin": ORIGIN})
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or len(body) != expect_len:
                raise RuntimeError(f"unexpected answer {resp.status} with {len(body)} B")
            if resp.will_close:
                conn.close()
                closes += 1
    finally:
        conn.close()
    return closes


def measure(n1: int, n2: int) -> list[dict]:
    plain_conf, plain_drive = T.isekai_conf, instructions.drive
    instructions.drive = drive
    try:
        return instructions.run_variants(
            (
                ("isekai (small_get)", plain_conf),
                (
                    "isekai + ip_filter, cors, headers",
                    lambda *a, **k: bench_run.with_policies(plain_conf(*a, **k)),
                ),
            ),
            n1,
            n2,
        )
    finally:
        instructions.drive = plain_drive


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n1", type=int, default=500)
    p.add_argument("--n2", type=int, default=2500)
    args = p.parse_args(argv)
    rows = measure(args.n1, args.n2)
    print(instructions.table(rows))
    plain, policies = rows[0]["instructions_per_request"], rows[1]["instructions_per_request"]
    print(f"\npolicies add {policies - plain:,} instructions/request ({policies / plain - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
