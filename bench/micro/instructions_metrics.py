"""Instructions per proxied request with a `metrics` policy (one counter + one histogram) on
the route, next to none.

    python bench/micro/instructions_metrics.py [--n1 500 --n2 2500]

The same callgrind measurement as instructions.py (Isekai, `workers: 1`, sequential keep-alive
GETs of ~100 B), twice: the plain config of small_get, then the same route with a metrics
policy counting requests by route, method, status class and an `X-Api-Version` header and
observing their duration by route in the built-in latency buckets. Every request carries
`X-Api-Version: v2`. The difference is what custom metrics cost per request, in user-space
instructions.
"""

from __future__ import annotations

import argparse
import http.client
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions  # noqa: E402
from harness import targets as T  # noqa: E402

METRICS_YAML = """\
policies:
  custom:
    type: metrics
    counters:
      - name: bench_requests_total
        labels: {route: route, method: method, status: status_class,
                 version: "header:x-api-version"}
    histograms:
      - {name: bench_request_seconds, labels: {route: route}}
"""


def with_metrics(conf: str) -> str:
    """An Isekai config from `harness.targets.isekai_conf` with the metrics policy on every
    route."""
    lines = []
    for line in conf.splitlines():
        if line.startswith("  - {name:") and line.endswith("}"):
            line = line[:-1] + ", policies: [custom]}"
        lines.append(line)
    return METRICS_YAML + "\n".join(lines) + "\n"


def drive(port: int, path: str, count: int, expect_len: int) -> int:
    """instructions.drive, with an X-Api-Version on every request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    closes = 0
    try:
        for _ in range(count):
            conn.request("GET", path, headers={"Host": "bench.local", "X-Api-Version": "v2"})
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
    rows = []
    for label, conf in (
        ("isekai (small_get)", plain_conf),
        (
            "isekai + metrics (1 counter, 1 histogram)",
            lambda *a, **k: with_metrics(plain_conf(*a, **k)),
        ),
    ):
        T.isekai_conf = conf
        try:
            row = instructions.run(["isekai"], n1, n2, None)[0]
        finally:
            T.isekai_conf = plain_conf
        row["target"] = label
        rows.append(row)
    instructions.drive = plain_drive
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n1", type=int, default=500)
    p.add_argument("--n2", type=int, default=2500)
    args = p.parse_args(argv)
    rows = measure(args.n1, args.n2)
    print(instructions.table(rows))
    plain, metrics = rows[0]["instructions_per_request"], rows[1]["instructions_per_request"]
    print(f"\nmetrics add {metrics - plain:,} instructions/request ({metrics / plain - 1:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
