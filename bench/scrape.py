"""How long a Prometheus scrape of a big gateway takes, end to end.

    python bench/scrape.py                       # 10,000 routes, 2 workers, 7 scrapes
    python bench/scrape.py --routes 1000 --workers 1

Starts a real gateway (``isekai run``) with ``--routes`` fixed-response routes, ``--workers``
workers and the metrics listener, sends one request to every route (so every route has a
series of each kind: the worst case for the scrape; ``max_label_values`` is raised to the
route count so none is folded into ``_other``, unless ``--cap`` says otherwise), then times
``GET /metrics`` ``--scrapes`` times and prints the median, the spread, the body size and the
number of samples. The time
covers everything a scrape does: the master asking each worker, the workers' exports, the
relay, the sum and the exposition text.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listener public on http://127\.0\.0\.1:(\d+)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(routes: int, workers: int, metrics_port: int, cap: int) -> str:
    lines = [
        f"workers: {workers}",
        'listeners: [{name: public, bind: "127.0.0.1:0"}]',
        "admin: {enabled: false}",
        "observability:",
        f'  metrics: {{bind: "127.0.0.1:{metrics_port}", max_label_values: {cap}}}',
        "routes:",
    ]
    lines += [
        f"  - {{name: r{i}, match: {{path: /r{i}}}, respond: {{body: x}}}}" for i in range(routes)
    ]
    return "\n".join(lines) + "\n"


def start(path: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "isekai", "run", "-c", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=str(path.parent),
    )
    deadline = time.monotonic() + timeout
    port = None
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        found = LISTENING.search(line)
        if found:
            port = int(found.group(1))
        if "isekai serving" in line and port:
            return proc, port
    proc.kill()
    raise RuntimeError("the gateway did not start")


def traffic(port: int, routes: int) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for i in range(routes):
        if i % 50 == 0:  # new connections now and then, so that every worker takes some
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", f"/r{i}")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/r{i}: {response.status}")
    conn.close()


def scrape(port: int) -> tuple[float, bytes]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    took = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"/metrics: {response.status}")
    return took, body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scrapes", type=int, default=7)
    parser.add_argument(
        "--cap",
        type=int,
        default=None,
        help="observability.metrics.max_label_values (default: --routes, nothing folded)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.yaml"
        metrics_port = free_port()
        cap = args.cap or args.routes
        path.write_text(config(args.routes, args.workers, metrics_port, cap))
        proc, port = start(path)
        try:
            traffic(port, args.routes)
            scrape(metrics_port)  # warm up
            times = []
            body = b""
            for _ in range(args.scrapes):
                took, body = scrape(metrics_port)
                times.append(took)
        finally:
            proc.terminate()
            proc.wait(30)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    print(
        f"scrape of {args.routes:,} routes, {args.workers} workers, label cap {cap:,}: median "
        f"{statistics.median(times) * 1000:.0f} ms (min {min(times) * 1000:.0f}, max "
        f"{max(times) * 1000:.0f}; {args.scrapes} scrapes), {len(body) / 1e6:.1f} MB, "
        f"{samples:,} samples"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
