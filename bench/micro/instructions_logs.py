"""Instructions per proxied request with the request log on, next to off.

    python bench/micro/instructions_logs.py [--n1 2000 --n2 10000] [--store-url postgresql://...]

The callgrind measurement of instructions.py (Isekai, `workers: 1`, sequential keep-alive GETs
of ~100 B), twice, both with the admin API and a store (a SQLite file each, or `--store-url`):
`admin.request_logs` off, then on. Callgrind counts every thread of the process, so the
request-log writer's work (taking the records, the inserts) is in the numbers: that is the
point. Each segment ends with a pause of SETTLE seconds before its dump, so the writer has
written the segment's records (the hand-over runs every 0.5 s); both variants pause alike.
Time-driven work (the store's change
poll, timers) is in both variants and does not cancel in (I(N2) - I(N1)) / (N2 - N1): keep N
large so it stays small next to the per-request work.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions  # noqa: E402
from harness import targets as T  # noqa: E402

SETTLE = 1.5  # seconds before each dump: the writer catches up
SECRET = "bench-secret-bench-secret-bench-secret-42"
ADMIN_ENV = {"ISEKAI_ADMIN_USERNAME": "bench", "ISEKAI_ADMIN_PASSWORD": "gateway-secret-123"}


def logs_conf(store: str, request_logs: bool, plain_conf=T.isekai_conf):
    def conf(port: int, backend_port: int, workers: int, routes: int | None = None) -> str:
        plain = plain_conf(port, backend_port, workers, routes)
        admin = (
            'admin: {bind: "127.0.0.1:0", '
            f'auth: {{jwt_secret: "{SECRET}"}}, '
            f"request_logs: {{enabled: {'true' if request_logs else 'false'}}}}}\n"
            f'store: {{url: "{store}"}}'
        )
        return plain.replace("admin: {enabled: false}", admin)

    return conf


def measure(n1: int, n2: int, store_url: str | None = None) -> list[dict]:
    plain_env, plain_dump = T.isekai_env, instructions.dump

    def settled_dump(pid: int) -> None:
        time.sleep(SETTLE)
        plain_dump(pid)

    instructions.dump = settled_dump
    T.isekai_env = lambda: {**plain_env(), **ADMIN_ENV}
    try:
        with tempfile.TemporaryDirectory(prefix="isekai-cg-logs-") as work:
            off, on = (store_url or f"sqlite:///{Path(work) / name}" for name in ("0.db", "1.db"))
            return instructions.run_variants(
                (
                    ("isekai + admin, request logs off", logs_conf(off, False)),
                    ("request logs on", logs_conf(on, True)),
                ),
                n1,
                n2,
            )
    finally:
        instructions.dump, T.isekai_env = plain_dump, plain_env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n1", type=int, default=2000)
    p.add_argument("--n2", type=int, default=10000)
    p.add_argument("--store-url", help="store.url (default: a SQLite file per variant)")
    args = p.parse_args(argv)
    rows = measure(args.n1, args.n2, args.store_url)
    print(instructions.table(rows))
    off, on = rows[0]["instructions_per_request"], rows[1]["instructions_per_request"]
    print(f"\nrequest logs on: {on / off:.2f}x the instructions per request of logs off")
    return 0


if __name__ == "__main__":
    sys.exit(main())
