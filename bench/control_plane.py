"""Control-plane cost: how long one admin API change takes to apply with N routes stored, and
how long the data plane stalls meanwhile.

A gateway (``isekai run``, SQLite store, admin API on 127.0.0.1) starts on a store seeded with
``--routes`` API routes. A prober thread sends ``GET /ping`` over one keep-alive connection
every ``--probe-interval`` and records each latency. Then ``--changes`` changes are made one at
a time, cycling create / replace / delete; each is timed from the request until the data plane
answers accordingly ("applied"). The report compares the prober's worst latency while changes
were applied with its worst before any change.

    python bench/control_plane.py --routes 10000 --workers 1 --changes 9
    python bench/control_plane.py --routes 1500 --workers 2

Traffic stays on 127.0.0.1; every loop is bounded in count and time. Exits 1 when the gateway
does not start or a change fails.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "bench", "control-plane-secret"
CONFIG = """\
workers: {workers}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "control-plane-bench-secret-control-plane-bench"}}
store: {{url: "sqlite:///{store}"}}
upstreams:
  app: {{targets: ["127.0.0.1:9"]}}
routes:
  - {{name: ping, match: {{path: /ping}}, respond: {{body: pong}}}}
"""


def route_doc(i: int) -> dict:
    return {"name": f"r{i}", "match": {"path": f"/r{i}/{{id}}"}, "upstream": "app"}


async def seed(url: str, count: int) -> None:
    sys.path.insert(0, str(REPO))
    from isekai.store import open_store

    async with open_store(url) as store:
        for i in range(count):
            await store.create_item("route", f"r{i}", route_doc(i))


class Gateway:
    def __init__(self, config: Path, timeout: float) -> None:
        env = dict(os.environ, ISEKAI_ADMIN_USERNAME=USER, ISEKAI_ADMIN_PASSWORD=PASSWORD)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isekai", "run", "-c", str(config)],
            cwd=config.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.port = self.admin = None
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.port is None or self.admin is None):
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        while time.monotonic() < deadline and self.port is not None and not self._serving():
            time.sleep(0.05)  # with workers, the master logs the port before they listen
        if self.port is None or self.admin is None or not self._serving():
            self.stop()
            raise SystemExit("the gateway did not start:\n" + "".join(self.lines[-30:]))

    def _serving(self) -> bool:
        try:
            return served(self.port, "/ping") == 200
        except OSError:
            return False

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"listener public on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
            found = re.search(r"admin API on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.admin = int(found.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Admin:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = None
        status, body = self.call(
            "POST", "/api/auth/login", {"username": USER, "password": PASSWORD}
        )
        if status != 200:
            raise SystemExit(f"login failed: {status} {body}")
        self.token = body["data"]["token"]

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")


class Prober(threading.Thread):
    """GET /ping on one keep-alive connection every ``interval`` s; (time, latency) pairs."""

    def __init__(self, port: int, interval: float, limit: float) -> None:
        super().__init__(daemon=True)
        self.port, self.interval, self.limit = port, interval, limit
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        ends = time.monotonic() + self.limit
        while not self.stop.is_set() and time.monotonic() < ends:
            start = time.monotonic()
            conn.request("GET", "/ping")
            conn.getresponse().read()
            self.samples.append((start, time.monotonic() - start))
            self.stop.wait(self.interval)
        conn.close()

    def worst(self, since: float, until: float) -> float:
        window = [lat for at, lat in self.samples if since <= at <= until]
        return max(window) if window else float("nan")


def served(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def change(admin: Admin, port: int, step: int, base: int) -> tuple[float, float]:
    """One change; (seconds until the API answered, seconds until the data plane serves it)."""
    name = f"bench{step // 3}"
    path = f"/bench{step // 3}/x"
    doc = {"name": name, "match": {"path": f"/bench{step // 3}/{{id}}"}, "respond": {"body": "v"}}
    start = time.monotonic()
    if step % 3 == 0:
        status, body = admin.call("POST", "/api/routes", doc)
        want, expect = 201, 200
    elif step % 3 == 1:
        status, body = admin.call("PUT", f"/api/routes/{name}", {**doc, "respond": {"status": 202}})
        want, expect = 200, 202
    else:
        status, body = admin.call("DELETE", f"/api/routes/{name}")
        want, expect = 200, 404
    answered = time.monotonic() - start
    if status != want:
        raise SystemExit(f"change {step} failed: {status} {body}")
    deadline = start + 60
    while served(port, path) != expect:
        if time.monotonic() > deadline:
            raise SystemExit(f"change {step} did not reach the data plane within 60 s")
        time.sleep(0.002)
    return answered, time.monotonic() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", type=int, default=10_000, help="stored API routes")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--changes", type=int, default=9, help="create/replace/delete cycles x3")
    parser.add_argument("--probe-interval", type=float, default=0.002, help="seconds")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--json", metavar="FILE", help="also write the numbers here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="isekai-cp-bench-") as work:
        store = Path(work) / "store.db"
        started = time.monotonic()
        asyncio.run(seed(f"sqlite:///{store}", args.routes))
        seeded = time.monotonic() - started
        config = Path(work) / "gateway.yaml"
        config.write_text(CONFIG.format(workers=args.workers, store=store))
        started = time.monotonic()
        gw = Gateway(config, args.startup_timeout)
        startup = time.monotonic() - started
        try:
            admin = Admin(gw.admin)
            prober = Prober(gw.port, args.probe_interval, limit=600)
            prober.start()
            time.sleep(1.0)
            quiet = (time.monotonic() - 1.0, time.monotonic())
            answered, applied = [], []
            begin = time.monotonic()
            for step in range(args.changes):
                a, b = change(admin, gw.port, step, args.routes)
                answered.append(a)
                applied.append(b)
            end = time.monotonic()
            time.sleep(0.2)
            prober.stop.set()
            prober.join(10)
        finally:
            gw.stop()
    result = {
        "routes": args.routes,
        "workers": args.workers,
        "changes": args.changes,
        "seed_s": round(seeded, 2),
        "startup_s": round(startup, 2),
        "api_ms_median": round(statistics.median(answered) * 1000, 1),
        "api_ms_max": round(max(answered) * 1000, 1),
        "applied_ms_median": round(statistics.median(applied) * 1000, 1),
        "applied_ms_max": round(max(applied) * 1000, 1),
        "ping_worst_ms_quiet": round(prober.worst(*quiet) * 1000, 2),
        "ping_worst_ms_during_changes": round(prober.worst(begin, end) * 1000, 2),
        "ping_samples": len(prober.samples),
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
