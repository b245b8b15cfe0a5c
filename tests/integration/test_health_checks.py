"""Active health checks in a real gateway: run once per host (by one elected worker, not by every
worker), their verdicts reach every worker, and another worker takes over when the checker dies."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import signal
import time

import psutil
import pytest

from isekai.config.loader import load_config_text
from isekai.process.channel import decode_stats, encode_stats
from tests.integration.test_control_plane import ADMIN_ENV, Admin
from tests.integration.test_control_plane import gateway_yaml as control_plane_yaml
from tests.support.gateway import Gateway, connection_owners, wait_for
from tests.support.upstream import ServerThread
from tests.support.worker import ThreadedWorker, get

ELECTED = r"isekai\.master\[\d+\]: worker (\d+) runs the active health checks"
INTERVAL = 0.2  # seconds between two probes of one target, as configured below


class HealthUpstream(ServerThread):
    """A keep-alive HTTP/1.1 upstream on 127.0.0.1 in a thread of its own: ``GET /healthz``
    answers ``health_status`` and is counted in ``probes``; any other request answers 200 with
    the upstream's name and is counted in ``requests``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.health_status = 200
        self.probes = 0
        self.probe_agents: set[str] = set()
        self.requests = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                )
                length = int(headers.get("content-length", "0"))
                if length:
                    await reader.readexactly(length)
                if target == "/healthz":
                    self.probes += 1
                    self.probe_agents.add(headers.get("user-agent", ""))
                    status, body = self.health_status, b""
                else:
                    self.requests += 1
                    status, body = 200, self.name.encode()
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-length: %d\r\n%s\r\n%s"
                    % (status, len(body), b"connection: close\r\n" if close else b"", body)
                )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, IndexError):
            return
        finally:
            writer.close()


@pytest.fixture
def upstreams():
    with HealthUpstream("a") as a, HealthUpstream("b") as b:
        yield a, b


def gateway_yaml(targets: list[HealthUpstream], workers: int = 2, **health: object) -> str:
    settings = {
        "path": "/healthz",
        "interval": "200ms",
        "timeout": "150ms",
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    }
    settings.update(health)
    return f"""
        workers: {workers}
        shutdown_timeout: 5s
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app:
            targets: {json.dumps([t.address for t in targets])}
            health: {json.dumps(settings)}
        routes:
          - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
        """


def elected_pid(gw, since: int = 0, timeout: float = 10.0) -> int:
    found = gw.wait_for_log(ELECTED, timeout=timeout, since=since)
    assert found, gw.output()
    return int(found.group(1))


def fetch(gw, workers: list[int], count: int) -> list[tuple[int, bytes, int | None]]:
    """``count`` GETs, each on a fresh connection: (status, body, pid of the worker that
    answered it)."""
    results = []
    for _ in range(count):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        try:
            conn.request("GET", "/app/work")
            resp = conn.getresponse()
            body = resp.read()
            local = conn.sock.getsockname()[1]
            owner = connection_owners(workers, gw.port).get(local)
            results.append((resp.status, body, owner, resp.getheader("content-type")))
        finally:
            conn.close()
    return results


def verdict_logged(gw, target: HealthUpstream, state: str, since: int, upstream="app") -> bool:
    address = re.escape(target.address)
    pattern = rf"health check: upstream {upstream} target {address} (is|turned) {state}"
    return gw.wait_for_log(pattern, timeout=10, since=since) is not None


def test_health_checks_probe_once_per_host_not_once_per_worker(start_gateway, upstreams):
    a, _ = upstreams
    gw = start_gateway(gateway_yaml([a]))
    assert wait_for(lambda: len(gw.workers()) == 2, timeout=5)
    checker = elected_pid(gw)
    assert checker in gw.workers()
    assert wait_for(lambda: a.probes >= 2, timeout=5)
    before, started = a.probes, time.monotonic()
    time.sleep(3.0)
    probes, took = a.probes - before, time.monotonic() - started
    expected = took / INTERVAL  # one checker; two would send twice as many
    assert 0.5 * expected < probes < 1.5 * expected, (probes, expected)
    assert a.probe_agents == {"isekai-health-check"}
    assert len(re.findall(ELECTED, gw.output())) == 1  # elected once, not per worker


def test_health_checks_unhealthy_target_leaves_every_worker_and_comes_back(
    start_gateway, upstreams
):
    a, b = upstreams
    gw = start_gateway(gateway_yaml([a, b]))
    workers = gw.workers()
    assert len(workers) == 2
    elected_pid(gw)
    results = fetch(gw, workers, 40)
    assert all(status == 200 for status, *_ in results), results
    assert {body for _, body, *_ in results} == {b"a", b"b"}

    mark = gw.mark()
    b.health_status = 503
    assert verdict_logged(gw, b, "unhealthy", mark), gw.output()
    # each worker applies the verdict (the cluster logs it once per worker)
    relayed = rf"\[(\d+)\]: upstream app target {re.escape(b.address)}: health check says unhealthy"
    assert wait_for(lambda: len(set(re.findall(relayed, "".join(gw.log[mark:])))) == 2, 5)
    served_b = b.requests
    results = fetch(gw, workers, 40)
    assert all(status == 200 and body == b"a" for status, body, *_ in results), results
    assert {owner for *_, owner, _ in results} == set(workers)  # both workers served
    assert b.requests == served_b

    mark = gw.mark()
    b.health_status = 200
    assert verdict_logged(gw, b, "healthy", mark), gw.output()
    back = rf"\[(\d+)\]: upstream app target {re.escape(b.address)}: health check says healthy"
    assert wait_for(lambda: len(set(re.findall(back, "".join(gw.log[mark:])))) == 2, 5)
    results = fetch(gw, workers, 40)
    assert all(status == 200 for status, *_ in results), results
    assert b.requests > served_b


def test_health_checks_another_worker_takes_over_when_the_checker_dies(start_gateway, upstreams):
    a, _ = upstreams
    gw = start_gateway(gateway_yaml([a]))
    assert wait_for(lambda: len(gw.workers()) == 2, timeout=5)
    checker = elected_pid(gw)
    survivor = next(pid for pid in gw.workers() if pid != checker)
    mark = gw.mark()
    os.kill(checker, signal.SIGKILL)
    assert wait_for(lambda: not psutil.pid_exists(checker), timeout=5)
    successor = elected_pid(gw, since=mark)
    assert successor == survivor  # the ready one, at once (not the replacement still starting)
    assert wait_for(lambda: len(gw.workers()) == 2 and checker not in gw.workers(), timeout=5)
    assert gw.wait_for_log(rf"worker {checker} killed by SIGKILL", since=mark)
    # probes go on: from the successor only
    assert wait_for(lambda: a.probes >= 1, timeout=5)
    before = a.probes
    assert wait_for(lambda: a.probes >= before + 5, timeout=5)
    assert len(re.findall(ELECTED, "".join(gw.log[mark:]))) == 1


def test_health_checks_a_replacement_worker_gets_the_verdicts_so_far(start_gateway, upstreams):
    a, b = upstreams
    b.health_status = 503
    gw = start_gateway(gateway_yaml([a, b]))
    assert wait_for(lambda: len(gw.workers()) == 2, timeout=5)
    checker = elected_pid(gw)
    assert verdict_logged(gw, b, "unhealthy", 0), gw.output()
    other = next(pid for pid in gw.workers() if pid != checker)
    os.kill(other, signal.SIGKILL)
    assert wait_for(lambda: other not in gw.workers() and len(gw.workers()) == 2, timeout=10)
    workers = gw.workers()
    replacement = next(pid for pid in workers if pid != checker)
    assert gw.wait_for_log(rf"worker {replacement} up", timeout=10), gw.output()
    # the checker's verdict does not change, so it is not sent again: the replacement has it
    # from the master's set
    served_b = b.requests
    results = fetch(gw, workers, 40)
    assert all(status == 200 and body == b"a" for status, body, *_ in results), results
    assert replacement in {owner for *_, owner, _ in results}
    assert b.requests == served_b


def test_health_checks_no_healthy_target_answers_503_json(start_gateway, upstreams):
    a, b = upstreams
    a.health_status = b.health_status = 500
    gw = start_gateway(gateway_yaml([a, b]))
    workers = gw.workers()
    assert verdict_logged(gw, a, "unhealthy", 0) and verdict_logged(gw, b, "unhealthy", 0)
    relayed = r"\[(\d+)\]: upstream app target \S+: health check says unhealthy"
    assert wait_for(lambda: len(re.findall(relayed, gw.output())) >= 4, 5), gw.output()
    results = fetch(gw, workers, 20)
    for status, body, _, content_type in results:
        assert status == 503, results
        assert content_type.startswith("application/json")
        json.loads(body)
    assert {owner for *_, owner, _ in results} == set(workers)
    assert a.requests == b.requests == 0


def test_health_checks_single_process_gateway_checks_for_itself(start_gateway, upstreams):
    a, b = upstreams
    b.health_status = 503
    gw = start_gateway(gateway_yaml([a, b], workers=1))
    assert gw.workers() == []  # one process
    assert verdict_logged(gw, b, "unhealthy", 0), gw.output()
    assert verdict_logged(gw, a, "healthy", 0), gw.output()
    results = fetch(gw, [gw.pid], 10)
    assert all(status == 200 and body == b"a" for status, body, *_ in results), results
    assert b.requests == 0
    before = a.probes
    assert wait_for(lambda: a.probes >= before + 3, timeout=5)


def worker_yaml(a: HealthUpstream, b: HealthUpstream, health: str) -> str:
    return f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app:
    targets: ["{a.address}", "{b.address}"]
    {health}
routes:
  - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
"""


def test_health_checks_worker_stats_and_config_changes(upstreams):
    a, b = upstreams
    b.health_status = 503
    health = "health: {path: /healthz, interval: 100ms, timeout: 90ms, unhealthy_threshold: 1}"
    with ThreadedWorker(worker_yaml(a, b, health)) as tw:
        worker = tw.worker
        tw.call(worker.run_health_checks)

        def rows() -> dict[str, dict]:
            stats = decode_stats(encode_stats(tw.call(worker.stats)))  # as the admin gets them
            return {row["target"]: row for row in stats["extra"].get("health_checks", [])}

        def target_healthy() -> dict[str, bool]:
            return {row["target"]: row["healthy"] for row in tw.call(worker.stats)["targets"]}

        assert wait_for(lambda: len(rows()) == 2 and all(r["checks"] for r in rows().values()))
        assert wait_for(lambda: target_healthy() == {a.address: True, b.address: False})
        got = rows()
        assert got[b.address]["healthy"] is False and got[b.address]["last_status"] == 503
        assert got[a.address]["healthy"] is True and got[a.address]["last_error"] is None
        assert all(get(tw.port, "/app/x") == (200, b"a") for _ in range(6))
        assert b.requests == 0

        # a reload without health: nothing probes b any more, so it is back in rotation
        probes = b.probes
        tw.call(worker.swap, load_config_text(worker_yaml(a, b, "")))
        assert rows() == {} and target_healthy() == {a.address: True, b.address: True}
        bodies = {get(tw.port, "/app/x")[1] for _ in range(6)}
        assert bodies == {b"a", b"b"}
        time.sleep(0.3)
        assert b.probes == probes

        # health back, on another path: probed again (b's /other is counted as a request)
        other = health.replace("/healthz", "/other")
        tw.call(worker.swap, load_config_text(worker_yaml(a, b, other)))
        served = b.requests
        assert wait_for(lambda: b.requests > served + 1)
        assert wait_for(lambda: rows().get(a.address, {}).get("checks", 0) >= 1)
        tw.call(worker.stop_health_checks)
        assert "health_checks" not in tw.call(worker.stats)["extra"]


@pytest.mark.parametrize("workers", [1, 2])
def test_health_checks_follow_admin_api_changes(tmp_path, upstreams, workers):
    a, b = upstreams
    path = tmp_path / "gateway.yaml"
    path.write_text(control_plane_yaml(a.port, f"sqlite:///{tmp_path}/s.db", workers))
    gw = Gateway(path, env=ADMIN_ENV, startup_timeout=30)
    try:
        admin = Admin(gw)
        b.health_status = 503
        health = {"path": "/healthz", "interval": "100ms", "timeout": "90ms"}
        status, body = admin.call(
            "POST", "/api/upstreams", {"name": "checked", "targets": [b.address], "health": health}
        )
        assert status == 201, body
        assert verdict_logged(gw, b, "unhealthy", 0, "checked"), gw.output()
        status, body = admin.call("DELETE", "/api/upstreams/checked")
        assert status in (200, 204), body
        assert gw.wait_for_log(rf"target {re.escape(b.address)} no longer checked", timeout=10)
        probes = b.probes
        time.sleep(0.5)
        assert b.probes == probes  # nothing probes a deleted upstream
        assert a.probes == 0  # the file's upstream has no health block
    finally:
        gw.stop()
