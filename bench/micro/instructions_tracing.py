"""Instructions per proxied request with tracing off, and on at sampling ratios 0, 0.01 and 1.

    python bench/micro/instructions_tracing.py [--n1 500 --n2 2500] [--ratios 0,0.01,1]

The same callgrind measurement as instructions.py (Isekai, `workers: 1`, sequential keep-alive
GETs of ~100 B on a plain route), once with the plain config and once per ratio with
`observability.tracing` on. Spans go to a local OTLP/HTTP sink in this process (it answers
every export with 200), so exports succeed and their cost, in the exporter's thread, is counted
too (callgrind counts every thread of the process). The requests carry no `traceparent`: every
one starts a trace, and the ratio alone decides sampling.
"""

from __future__ import annotations

import argparse
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE), str(HERE.parent)]

import instructions  # noqa: E402
from harness import targets as T  # noqa: E402


class _Sink(BaseHTTPRequestHandler):
    """Takes an OTLP export and answers 200 with an empty ExportTraceServiceResponse."""

    exports = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def with_tracing(conf: str, ratio: float, sink_port: int) -> str:
    return conf + (
        f"observability:\n  tracing: {{enabled: true, sample_ratio: {ratio}, "
        f'endpoint: "http://127.0.0.1:{sink_port}"}}\n'
    )


def measure(n1: int, n2: int, ratios: list[float]) -> list[dict]:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    plain_conf = T.isekai_conf
    rows = []
    try:
        variants = [("tracing off", None)] + [(f"tracing, ratio {r:g}", r) for r in ratios]
        for label, ratio in variants:
            if ratio is not None:
                T.isekai_conf = lambda *a, _r=ratio, **k: with_tracing(
                    plain_conf(*a, **k), _r, sink.server_address[1]
                )
            try:
                row = instructions.run(["isekai"], n1, n2, None)[0]
            finally:
                T.isekai_conf = plain_conf
            row["target"] = label
            rows.append(row)
    finally:
        sink.shutdown()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n1", type=int, default=500)
    p.add_argument("--n2", type=int, default=2500)
    p.add_argument("--ratios", default="0,0.01,1")
    args = p.parse_args(argv)
    rows = measure(args.n1, args.n2, [float(r) for r in args.ratios.split(",") if r])
    print(instructions.table(rows))
    off = rows[0]["instructions_per_request"]
    for row in rows[1:]:
        cost = row["instructions_per_request"]
        print(f"{row['target']}: {cost - off:+,} instructions/request ({cost / off - 1:+.1%})")
    print(f"OTLP exports received: {_Sink.exports}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
