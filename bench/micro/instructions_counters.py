"""Instructions per proxied request with the built-in metrics on (the default) and off.

    python bench/micro/instructions_counters.py [--n1 500 --n2 2500]

The same callgrind measurement as instructions.py (Isekai, `workers: 1`, sequential keep-alive
GETs of ~100 B), twice: the plain config of small_get, where `_core` counts every request
(route, method, status class, bytes, latency histogram, upstream latency), then the same with
`observability.metrics.enabled: false`, where those recorders return at once. The difference
is what the C counters cost per request.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions_policies  # noqa: E402  (measure, driver, main)


def metrics_off(conf: str) -> str:
    """An Isekai config from `harness.targets.isekai_conf` with the built-in metrics off."""
    return conf + "observability: {metrics: {enabled: false}}\n"


def main(argv=None) -> int:
    return instructions_policies.main(
        argv, __doc__, "metrics off", label="isekai, metrics off", transform=metrics_off
    )


if __name__ == "__main__":
    sys.exit(main())
