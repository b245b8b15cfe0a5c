"""Instructions per proxied request with a rate_limit policy on the route, next to none.

    python bench/micro/instructions_rate_limit.py [--n1 500 --n2 2500] [--headers]

The same callgrind measurement as instructions.py (Isekai, `workers: 1`, sequential keep-alive
GETs of ~100 B), twice: the plain config of small_get, then the same route with the
small_get_rate_limit policy of bench/run.py (local table, key client_ip, a rate never
reached: every request takes from its bucket and passes). With ``--headers`` the policy also
writes the RateLimit fields on every response (small_get_rate_limit_headers). The difference
is what the policy costs per request, in user-space instructions.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions_policies  # noqa: E402
from harness import variants  # noqa: E402


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    variant = "rate_limit"
    if "--headers" in argv:
        argv.remove("--headers")
        variant = "rate_limit_headers"
    return instructions_policies.main(
        argv,
        __doc__,
        f"a rate_limit policy ({variant})",
        label=f"isekai + {variant}",
        transform=lambda conf: variants.apply(conf, variant, Path("."), "", None),
        requests=instructions_policies.driver({}),
    )


if __name__ == "__main__":
    sys.exit(main())
