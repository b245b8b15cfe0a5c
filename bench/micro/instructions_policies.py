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
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions  # noqa: E402
import run as bench_run  # noqa: E402  (bench/run.py: POLICIES_YAML, with_policies)
from harness import targets as T  # noqa: E402

ORIGIN = "https://app.example.com"


def driver(headers: dict[str, str]) -> Callable[[int, str, int, int], int]:
    """instructions.drive, with ``headers`` on every request."""

    def drive(port: int, path: str, count: int, expect_len: int) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        closes = 0
        try:
            for _ in range(count):
                conn.request("GET", path, headers={"Host": "bench.local", **headers})
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

    return drive


drive = driver({"Origin": ORIGIN})


def measure(
    n1: int,
    n2: int,
    label: str = "isekai + ip_filter, cors, headers",
    transform: Callable[[str], str] = bench_run.with_policies,
    requests: Callable[[int, str, int, int], int] = drive,
) -> list[dict]:
    """The plain small_get config, then the same through ``transform``; both driven by
    ``requests``."""
    plain_conf, plain_drive = T.isekai_conf, instructions.drive
    instructions.drive = requests
    try:
        return instructions.run_variants(
            (
                ("isekai (small_get)", plain_conf),
                (label, lambda *a, **k: transform(plain_conf(*a, **k))),
            ),
            n1,
            n2,
        )
    finally:
        instructions.drive = plain_drive


def main(argv=None, doc: str = __doc__, what: str = "policies", **options) -> int:
    """Parse ``--n1``/``--n2``, measure (``options`` go to `measure`), print the table and
    what ``what`` adds per request."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n1", type=int, default=500)
    p.add_argument("--n2", type=int, default=2500)
    args = p.parse_args(argv)
    rows = measure(args.n1, args.n2, **options)
    print(instructions.table(rows))
    plain, more = rows[0]["instructions_per_request"], rows[1]["instructions_per_request"]
    print(f"\n{what} add {more - plain:,} instructions/request ({more / plain - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
