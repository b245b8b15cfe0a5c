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

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions_policies  # noqa: E402  (measure, driver, main)
import run as bench_run  # noqa: E402  (bench/run.py: with_policies)

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
    return bench_run.with_policies(conf, METRICS_YAML, "[custom]")


def main(argv=None) -> int:
    return instructions_policies.main(
        argv,
        __doc__,
        "metrics",
        label="isekai + metrics (1 counter, 1 histogram)",
        transform=with_metrics,
        requests=instructions_policies.driver({"X-Api-Version": "v2"}),
    )


if __name__ == "__main__":
    sys.exit(main())
