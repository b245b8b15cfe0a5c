"""Active health checks (`isekai.upstream.health`) against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field, replace

import pytest

from isekai.upstream.health import (
    USER_AGENT,
    HealthChecker,
    parse_status_line,
    probe_request,
    status_ok,
)

WAIT = 5.0  # seconds any awaited condition may take at most


@dataclass(frozen=True)
class Health:  # the shape of config's HealthCheck
    path: str = "/healthz"
    interval: float = 0.02
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_status: tuple[int, ...] = ()
    host: str | None = None


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class Upstream:
    targets: tuple[Target, ...]
    health: Health | None = None
    name: str = ""


@dataclass
class Server:
    """A health endpoint: answers ``status``, or hangs when ``hang`` is set."""

    status: int = 200
    hang: bool = False
    raw: bytes | None = None  # sent instead of a status line when set
    requests: list[bytes] = field(default_factory=list)
    port: int = 0
    server: asyncio.base_events.Server | None = None

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.hang:
                await asyncio.sleep(3600)
            if self.raw is not None:
                writer.write(self.raw)
            else:
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.status)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def target(self) -> Target:
        return Target("127.0.0.1", self.port)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


def refused_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


class Verdicts(list):
    """on_verdict: records (upstream, target, healthy) and the checker's rows at that moment."""

    checker: HealthChecker | None = None

    def __call__(self, upstream: str, target: str, healthy: bool) -> None:
        rows = self.checker.rows() if self.checker is not None else []
        row = next((r for r in rows if r["upstream"] == upstream and r["target"] == target), None)
        self.append((upstream, target, healthy, row))

    def plain(self) -> list[tuple[str, str, bool]]:
        return [entry[:3] for entry in self]


def make_checker() -> tuple[HealthChecker, Verdicts]:
    verdicts = Verdicts()
    checker = HealthChecker(asyncio.get_running_loop(), verdicts)
    verdicts.checker = checker
    return checker, verdicts


async def until(predicate, timeout: float = WAIT) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


# -- pure helpers -----------------------------------------------------------------------------


def test_probe_request_is_a_get_with_host_agent_and_close():
    assert probe_request("/healthz?full=1", "example.test:8080") == (
        b"GET /healthz?full=1 HTTP/1.1\r\nHost: example.test:8080\r\n"
        b"User-Agent: isekai-health-check\r\nConnection: close\r\n\r\n"
    )


def test_status_ok_takes_2xx_3xx_by_default_else_the_listed_statuses():
    assert status_ok(200, ()) and status_ok(204, []) and status_ok(399, ())
    assert not status_ok(199, ()) and not status_ok(400, ()) and not status_ok(503, ())
    assert status_ok(503, (503,)) and not status_ok(200, (204, 503))


def test_parse_status_line_reads_the_code_or_refuses():
    assert parse_status_line(b"HTTP/1.1 204 No Content\r\nx: y\r\n") == 204
    assert parse_status_line(b"HTTP/1.0 500\r\n") == 500
    for bad in (b"SSH-2.0-OpenSSH\r\n", b"HTTP/1.1 2000 X\r\n", b"HTTP/1.1 abc X\r\n", b"\r\n"):
        with pytest.raises(ValueError):
            parse_status_line(bad)


# -- probing ----------------------------------------------------------------------------------


def test_health_checker_first_result_decides_at_once():
    async def main():
        good, bad = await Server(200).start(), await Server(500).start()
        checker, verdicts = make_checker()
        checker.update(
            {
                "good": Upstream((good.target(),), Health(interval=5)),
                "bad": Upstream((bad.target(),), Health(interval=5)),
            }
        )
        assert await until(lambda: len(verdicts) == 2)
        got = {entry[0]: entry for entry in verdicts}
        assert got["good"][1:3] == (f"127.0.0.1:{good.port}", True)
        assert got["bad"][1:3] == (f"127.0.0.1:{bad.port}", False)
        assert got["good"][3]["checks"] == 1 and got["bad"][3]["failures"] == 1
        assert got["bad"][3]["last_status"] == 500 and got["bad"][3]["last_error"] == "status 500"
        checker.close()
        await good.close()
        await bad.close()

    run(main())


def test_health_checker_sends_the_configured_request():
    async def main():
        server = await Server(200).start()
        checker, verdicts = make_checker()
        checker.update({"app": Upstream((server.target(),), Health(path="/ready?deep=1"))})
        assert await until(lambda: server.requests)
        head = server.requests[0].decode()
        assert head.startswith("GET /ready?deep=1 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head
        assert f"\r\nUser-Agent: {USER_AGENT}\r\n" in head and "\r\nConnection: close\r\n" in head
        checker.update({"app": Upstream((server.target(),), Health(host="app.internal"))})
        seen = len(server.requests)
        assert await until(lambda: len(server.requests) > seen + 1)
        assert b"\r\nHost: app.internal\r\n" in server.requests[-1]
        checker.close()
        await server.close()

    run(main())


def test_health_checker_thresholds_turn_a_verdict_around():
    async def main():
        server = await Server(200).start()
        checker, verdicts = make_checker()
        key = f"127.0.0.1:{server.port}"
        checker.update({"app": Upstream((server.target(),), Health(interval=0.01))})
        assert await until(lambda: verdicts.plain() == [("app", key, True)])
        assert await until(lambda: checker.rows()[0]["consecutive_successes"] >= 3)
        assert len(verdicts) == 1  # successes on a healthy target change nothing
        server.status = 503
        assert await until(lambda: len(verdicts) == 2)
        assert verdicts[1][:3] == ("app", key, False)
        row = verdicts[1][3]
        assert row["consecutive_failures"] == 3 and row["consecutive_successes"] == 0
        assert row["last_status"] == 503 and row["healthy"] is False
        server.status = 200
        assert await until(lambda: len(verdicts) == 3)
        assert verdicts[2][:3] == ("app", key, True)
        assert verdicts[2][3]["consecutive_successes"] == 2
        checker.close()
        await server.close()

    run(main())


def test_health_checker_a_single_failure_below_the_threshold_keeps_the_verdict():
    async def main():
        server = await Server(200).start()
        checker, verdicts = make_checker()
        health = Health(interval=0.01, unhealthy_threshold=1000)
        checker.update({"app": Upstream((server.target(),), health)})
        assert await until(lambda: len(verdicts) == 1)
        server.status = 500
        assert await until(lambda: checker.rows()[0]["consecutive_failures"] >= 3)
        assert verdicts.plain() == [("app", f"127.0.0.1:{server.port}", True)]
        assert checker.rows()[0]["healthy"] is True
        checker.close()
        await server.close()

    run(main())


def test_health_checker_hanging_target_times_out():
    async def main():
        server = await Server(hang=True).start()
        checker, verdicts = make_checker()
        checker.update({"app": Upstream((server.target(),), Health(timeout=0.1))})
        assert await until(lambda: len(verdicts) == 1)
        assert verdicts[0][2] is False
        assert verdicts[0][3]["last_error"] == "timeout" and verdicts[0][3]["last_status"] is None
        checker.close()
        await server.close()

    run(main())


def test_health_checker_refused_connection_is_unhealthy():
    async def main():
        port = refused_port()
        checker, verdicts = make_checker()
        checker.update({"app": Upstream((Target("127.0.0.1", port),), Health())})
        assert await until(lambda: len(verdicts) == 1)
        assert verdicts[0][:3] == ("app", f"127.0.0.1:{port}", False)
        assert verdicts[0][3]["last_error"] == "connection refused"
        checker.close()

    run(main())


def test_health_checker_garbage_or_early_close_is_a_failure():
    async def main():
        garbage = await Server(raw=b"SSH-2.0-something\r\n").start()
        silent = await Server(raw=b"").start()
        checker, verdicts = make_checker()
        checker.update(
            {
                "garbage": Upstream((garbage.target(),), Health()),
                "silent": Upstream((silent.target(),), Health()),
            }
        )
        assert await until(lambda: len(verdicts) == 2)
        errors = {entry[0]: entry[3]["last_error"] for entry in verdicts}
        assert all(entry[2] is False for entry in verdicts)
        assert "not an HTTP response" in errors["garbage"]
        assert "closed before a status line" in errors["silent"]
        checker.close()
        await garbage.close()
        await silent.close()

    run(main())


def test_health_checker_expected_status_overrides_the_default():
    async def main():
        server = await Server(503).start()
        checker, verdicts = make_checker()
        checker.update({"app": Upstream((server.target(),), Health(expected_status=(503,)))})
        assert await until(lambda: len(verdicts) == 1)
        assert verdicts[0][2] is True
        checker.close()
        await server.close()

    run(main())


# -- configuration changes --------------------------------------------------------------------


def test_health_checker_keeps_state_of_unchanged_targets_and_restarts_changed_ones():
    async def main():
        one, two = await Server(200).start(), await Server(200).start()
        checker, verdicts = make_checker()
        health = Health(interval=0.01)
        checker.update({"app": Upstream((one.target(),), health)})
        assert await until(lambda: checker.rows() and checker.rows()[0]["checks"] >= 3)
        task = checker._probes[("app", f"127.0.0.1:{one.port}")].task
        # a new upstream object, equal health: the probe of `one` carries on
        checker.update({"app": Upstream((one.target(), two.target()), Health(interval=0.01))})
        assert checker._probes[("app", f"127.0.0.1:{one.port}")].task is task
        assert await until(lambda: len(verdicts) == 2)
        assert {entry[1] for entry in verdicts} == {f"127.0.0.1:{p}" for p in (one.port, two.port)}
        # changed settings: the task restarts with them, the verdict and counts stay
        checks = checker.rows()[0]["checks"]
        checker.update({"app": Upstream((one.target(), two.target()), replace(health, path="/x"))})
        assert checker._probes[("app", f"127.0.0.1:{one.port}")].task is not task
        assert checker.rows()[0]["checks"] >= checks
        assert await until(lambda: one.requests[-1].startswith(b"GET /x "))
        assert len(verdicts) == 2  # no new verdict: both were healthy and still are
        assert task.done()
        checker.close()
        await one.close()
        await two.close()

    run(main())


def test_health_checker_stopping_a_check_gives_back_a_healthy_verdict():
    async def main():
        bad, other = await Server(500).start(), await Server(500).start()
        checker, verdicts = make_checker()
        bad_key, other_key = f"127.0.0.1:{bad.port}", f"127.0.0.1:{other.port}"
        checker.update(
            {
                "app": Upstream((bad.target(),), Health()),
                "api": Upstream((other.target(),), Health()),
            }
        )
        assert await until(lambda: len(verdicts) == 2)
        checker.update(
            {"app": Upstream((bad.target(),), None), "api": Upstream((other.target(),), None)}
        )
        # both lost their health settings: counted healthy again
        assert sorted(verdicts.plain()[2:]) == [("api", other_key, True), ("app", bad_key, True)]
        assert checker.rows() == []
        requests = len(bad.requests) + len(other.requests)
        await asyncio.sleep(0.1)
        assert len(bad.requests) + len(other.requests) == requests  # no probes any more
        checker.close()
        await bad.close()
        await other.close()

    run(main())


def test_health_checker_removed_upstream_and_target_stop_being_probed():
    async def main():
        one, two = await Server(500).start(), await Server(200).start()
        checker, verdicts = make_checker()
        checker.update(
            {
                "app": Upstream((one.target(), two.target()), Health()),
                "gone": Upstream((two.target(),), Health()),
            }
        )
        assert await until(lambda: len(verdicts) == 3)
        checker.update({"app": Upstream((two.target(),), Health())})
        assert ("app", f"127.0.0.1:{one.port}", True) in verdicts.plain()[3:]
        assert [(row["upstream"], row["target"]) for row in checker.rows()] == [
            ("app", f"127.0.0.1:{two.port}")
        ]
        checker.close()
        await one.close()
        await two.close()

    run(main())


def test_health_checker_close_cancels_every_probe():
    async def main():
        server = await Server(hang=True).start()
        checker, verdicts = make_checker()
        checker.update({"app": Upstream((server.target(),), Health(timeout=30))})
        assert await until(lambda: server.requests)
        task = checker._probes[("app", f"127.0.0.1:{server.port}")].task
        checker.close()
        assert await until(task.done)
        assert verdicts == [] and checker.rows() == []
        checker.update({"app": Upstream((server.target(),), Health())})  # closed: ignored
        assert checker.rows() == []
        await server.close()

    run(main())


def test_health_checker_rows_have_the_contract_fields():
    async def main():
        server = await Server(200).start()
        checker, verdicts = make_checker()
        checker.update({"app": Upstream((server.target(),), Health(interval=10))})
        row = checker.rows()[0]
        assert row["checks"] == 0 and row["last_check_age"] is None and row["healthy"] is True
        assert await until(lambda: checker.rows()[0]["checks"] == 1)
        row = checker.rows()[0]
        assert set(row) == {
            "upstream",
            "target",
            "healthy",
            "checks",
            "failures",
            "consecutive_successes",
            "consecutive_failures",
            "last_status",
            "last_error",
            "last_check_age",
        }
        assert row["last_status"] == 200 and row["last_error"] is None
        assert 0 <= row["last_check_age"] < WAIT
        checker.close()
        await server.close()

    run(main())


def test_health_checker_inherited_unhealthy_targets_it_does_not_check_become_healthy():
    async def main():
        server = await Server(500).start()
        checked = f"127.0.0.1:{server.port}"
        verdicts = Verdicts()
        inherited = [("app", checked), ("app", "127.0.0.1:1"), ("gone", "127.0.0.1:2")]
        checker = HealthChecker(asyncio.get_running_loop(), verdicts, inherited)
        checker.update({"app": Upstream((server.target(), Target("127.0.0.1", 1)), None)})
        # no health on "app" now: nothing is checked, every inherited verdict is lifted
        assert sorted(verdicts.plain()) == sorted((u, t, True) for u, t in inherited)
        checker.close()

        verdicts = Verdicts()
        checker = HealthChecker(asyncio.get_running_loop(), verdicts, inherited)
        checker.update({"app": Upstream((server.target(),), Health())})
        # checked targets are decided by their probes; the others are lifted at once
        assert sorted(verdicts.plain()) == [
            ("app", "127.0.0.1:1", True),
            ("gone", "127.0.0.1:2", True),
        ]
        assert await until(lambda: len(verdicts) == 3)
        assert verdicts.plain()[2] == ("app", checked, False)
        checker.update({"app": Upstream((server.target(),), Health())})  # inherited only once
        assert len(verdicts) == 3
        checker.close()
        await server.close()

    run(main())
