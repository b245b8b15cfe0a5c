"""Active health checks: one probe loop per (upstream, target) of the upstreams with ``health``.

A `HealthChecker` runs in ONE process of the gateway (the single-process gateway's worker, or the
worker the master elected, see `isekai.master`): probes are sent once per host, not once per
worker, and the verdicts travel to the other workers over the control channel.

A probe opens a connection to the target, sends ``GET {path}`` with ``Connection: close`` and
reads the status line; ``health.timeout`` bounds the whole exchange. It succeeds when the status
is in ``expected_status`` (any 2xx or 3xx when that list is empty); a refused connection, a
timeout, a reset or a response that is not HTTP is a failure. The first result of a target
decides its verdict at once; after that, ``healthy_threshold`` consecutive successes make an
unhealthy target healthy and ``unhealthy_threshold`` consecutive failures make a healthy one
unhealthy. Every verdict (the first and each change) goes to ``on_verdict(upstream, target,
healthy)`` and is logged once. A target no longer checked (its upstream lost ``health``, it left
its upstream, or the upstream was removed) gets a last verdict of healthy if its last one was
unhealthy: without a check nothing keeps it out of rotation. A checker that takes over from one
that died is given the targets held unhealthy so far: those it does not check get a healthy
verdict, its probes decide the others.

Probes of one target start ``interval`` apart, give or take `JITTER`, so targets drift apart
instead of being probed in lockstep.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from isekai.upstream.clusters import address_of

__all__ = ["HealthChecker", "USER_AGENT", "probe_request", "status_ok"]

log = logging.getLogger("isekai.health")

USER_AGENT = "isekai-health-check"
JITTER = 0.1  # each interval is drawn from interval * (1 ± JITTER)
MAX_STATUS_LINE = 8192  # bytes read at most while looking for the status line

Verdict = Callable[[str, str, bool], None]


def probe_request(path: str, host: str) -> bytes:
    """The request a probe sends."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {USER_AGENT}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")


def status_ok(status: int, expected: tuple[int, ...] | list[int]) -> bool:
    """Whether ``status`` passes: in ``expected``, or 200..399 when ``expected`` is empty."""
    if expected:
        return status in expected
    return 200 <= status < 400


def parse_status_line(data: bytes) -> int:
    """The status code of ``HTTP/1.x SSS reason``; ValueError if it is not one."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise ValueError("not an HTTP response")
    if not parts[1].isdigit():
        raise ValueError("not an HTTP response")
    return int(parts[1])


async def _exchange(host: str, port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        data = b""
        while b"\n" not in data:
            if len(data) >= MAX_STATUS_LINE:
                raise ValueError("status line too long")
            chunk = await reader.read(MAX_STATUS_LINE - len(data))
            if not chunk:
                raise ConnectionError("closed before a status line")
            data += chunk
        return parse_status_line(data)
    finally:
        writer.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Probe:
    """What is known of one (upstream, target)."""

    __slots__ = (
        "upstream",
        "address",
        "host",
        "port",
        "health",
        "task",
        "healthy",
        "checks",
        "failures",
        "consecutive_successes",
        "consecutive_failures",
        "last_status",
        "last_error",
        "last_check",
    )

    def __init__(self, upstream: str, host: str, port: int, health: Any) -> None:
        self.upstream = upstream
        self.address = address_of(host, port)
        self.host = host
        self.port = port
        self.health = health
        self.task: asyncio.Task | None = None
        self.healthy: bool | None = None  # no result yet
        self.checks = 0
        self.failures = 0
        self.consecutive_successes = 0
        self.consecutive_failures = 0
        self.last_status: int | None = None
        self.last_error: str | None = None
        self.last_check: float | None = None  # time.monotonic()

    def row(self, now: float) -> dict[str, Any]:
        return {
            "upstream": self.upstream,
            "target": self.address,
            "healthy": self.healthy is not False,  # until the first result: as if healthy
            "checks": self.checks,
            "failures": self.failures,
            "consecutive_successes": self.consecutive_successes,
            "consecutive_failures": self.consecutive_failures,
            "last_status": self.last_status,
            "last_error": self.last_error,
            "last_check_age": None if self.last_check is None else round(now - self.last_check, 3),
        }


class HealthChecker:
    """Probes the targets of every upstream with ``health`` on ``loop``; see the module doc."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_verdict: Verdict,
        inherited: Iterable[tuple[str, str]] = (),
    ) -> None:
        """``inherited``: (upstream, target) pairs held unhealthy before this checker started
        (by a checker that died); the first `update` gives a healthy verdict to those it does
        not check, its probes decide the others."""
        self.loop = loop
        self.on_verdict = on_verdict
        self._inherited = set(inherited)
        self._probes: dict[tuple[str, str], _Probe] = {}
        self._seen: dict[str, object] = {}  # upstream name -> the Upstream last given
        self._random = random.Random()
        self.closed = False

    # -- configuration ------------------------------------------------------------------------

    def update(self, upstreams: Mapping[str, Any]) -> None:
        """Check the targets of ``upstreams`` that have ``health``: new ones start, removed ones
        stop, those whose health settings changed restart (keeping their verdict and counts)."""
        if self.closed:
            return
        gone = [name for name in self._seen if name not in upstreams]
        for name in gone:
            del self._seen[name]
            self._set_targets(name, None)
        for name, upstream in upstreams.items():
            if self._seen.get(name) is upstream:
                continue  # the same object: nothing changed
            self._seen[name] = upstream
            self._set_targets(name, upstream)
        if self._inherited:
            inherited, self._inherited = self._inherited, set()
            for upstream_name, address in sorted(inherited - self._probes.keys()):
                log.info(
                    "health check: upstream %s target %s not checked: counted healthy",
                    upstream_name,
                    address,
                )
                self._tell(upstream_name, address, True)

    def _set_targets(self, name: str, upstream: Any) -> None:
        health = getattr(upstream, "health", None) if upstream is not None else None
        wanted: dict[str, tuple[str, int]] = {}
        if health is not None:
            for spec in upstream.targets:
                wanted[address_of(spec.host, spec.port)] = (spec.host, spec.port)
        current = [key for key in self._probes if key[0] == name]
        for key in current:
            if key[1] not in wanted:
                self._stop(self._probes.pop(key))
        for address, (host, port) in wanted.items():
            probe = self._probes.get((name, address))
            if probe is None:
                probe = self._probes[(name, address)] = _Probe(name, host, port, health)
            elif probe.health == health and probe.task is not None:
                continue
            else:
                probe.health = health
                if probe.task is not None:
                    probe.task.cancel()
            probe.task = self.loop.create_task(self._run(probe))

    def _stop(self, probe: _Probe) -> None:
        if probe.task is not None:
            probe.task.cancel()
            probe.task = None
        if probe.healthy is False:  # nothing checks it any more: back in rotation
            log.info(
                "health check: upstream %s target %s no longer checked: counted healthy",
                probe.upstream,
                probe.address,
            )
            self._tell(probe.upstream, probe.address, True)

    def close(self) -> None:
        """Stop every probe (verdicts are left as they are)."""
        self.closed = True
        for probe in self._probes.values():
            if probe.task is not None:
                probe.task.cancel()
                probe.task = None
        self._probes.clear()
        self._seen.clear()

    # -- probing ------------------------------------------------------------------------------

    async def _run(self, probe: _Probe) -> None:
        health = probe.health
        request = probe_request(health.path, health.host or probe.address)
        while True:
            started = self.loop.time()
            ok, status, error = await self.check(probe.host, probe.port, request, health)
            if probe.health is not health:  # restarted meanwhile
                return
            self._record(probe, ok, status, error)
            interval = health.interval * self._random.uniform(1 - JITTER, 1 + JITTER)
            await asyncio.sleep(max(0.0, started + interval - self.loop.time()))

    @staticmethod
    async def check(
        host: str, port: int, request: bytes, health: Any
    ) -> tuple[bool, int | None, str | None]:
        """One probe: (passed, status or None, error or None)."""
        try:
            status = await asyncio.wait_for(_exchange(host, port, request), health.timeout)
        except Exception as exc:  # refused, reset, timeout, not HTTP...: a failed probe
            return False, None, _describe(exc)
        if status_ok(status, health.expected_status or ()):
            return True, status, None
        return False, status, f"status {status}"

    def _record(self, probe: _Probe, ok: bool, status: int | None, error: str | None) -> None:
        probe.checks += 1
        probe.last_status = status
        probe.last_error = error
        probe.last_check = time.monotonic()
        if ok:
            probe.consecutive_successes += 1
            probe.consecutive_failures = 0
        else:
            probe.failures += 1
            probe.consecutive_failures += 1
            probe.consecutive_successes = 0
        before = probe.healthy
        health = probe.health
        if before is None:
            after = ok
        elif not before and probe.consecutive_successes >= health.healthy_threshold:
            after = True
        elif before and probe.consecutive_failures >= health.unhealthy_threshold:
            after = False
        else:
            return
        if after == before:
            return
        probe.healthy = after
        why = f"status {status}" if error is None else error
        state = "healthy" if after else "unhealthy"
        if before is None:
            log.info(
                "health check: upstream %s target %s is %s (first probe: %s)",
                probe.upstream,
                probe.address,
                state,
                why,
            )
        else:
            streak = probe.consecutive_successes if after else probe.consecutive_failures
            log.warning(
                "health check: upstream %s target %s turned %s after %d %s in a row (%s)",
                probe.upstream,
                probe.address,
                state,
                streak,
                "successes" if after else "failures",
                why,
            )
        self._tell(probe.upstream, probe.address, after)

    def _tell(self, upstream: str, address: str, healthy: bool) -> None:
        try:
            self.on_verdict(upstream, address, healthy)
        except Exception:
            log.exception("applying a health verdict for %s %s failed", upstream, address)

    # -- statistics ---------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One dict per checked (upstream, target); see the worker statistics contract."""
        now = time.monotonic()
        return [probe.row(now) for probe in self._probes.values()]

    def verdicts(self) -> dict[tuple[str, str], bool]:
        """The verdicts so far, by (upstream, target)."""
        return {
            key: probe.healthy for key, probe in self._probes.items() if probe.healthy is not None
        }
