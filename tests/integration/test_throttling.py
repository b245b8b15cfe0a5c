"""Throttling through a real worker in front of a real upstream that holds requests until the
test releases them: concurrency_limit slots, its queue (order by priority, timeout, 503 when
full) and load shedding on event-loop lag (a test family that blocks the loop)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import aiohttp
import pytest

from isekai.config.loader import load_config_text
from isekai.config.meta import setting
from isekai.config.policies import unregister_family
from isekai.observability.metrics import Gathered, render
from isekai.policy import PolicyFamily, register
from tests.support.client import connect, read_response, read_responses
from tests.support.gateway import wait_for
from tests.support.upstream import ServerThread
from tests.support.worker import ThreadedWorker
from tests.support.ws_upstream import WebSocketUpstream


class HoldingUpstream(ServerThread):
    """Answers ``/held/...`` only once `release` is called (in arrival order: `arrived`);
    anything else at once. One request per connection."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: list[str] = []
        self._gate: asyncio.Event | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._gate is None:
            self._gate = asyncio.Event()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        path = head.split(b" ", 2)[1].decode()
        self.arrived.append(path)
        if path.startswith("/held"):
            await self._gate.wait()
        body = path.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    def release(self) -> None:
        def open_gate() -> None:
            if self._gate is None:
                self._gate = asyncio.Event()
            self._gate.set()

        self._loop.call_soon_threadsafe(open_gate)


def config(upstream_port: int, limits: str = "", extra_routes: str = "") -> str:
    return f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
{limits}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
policies:
  inflight: {{type: concurrency_limit, max: 2, queue: 2, queue_timeout: 5s, retry_after: 2s,
             priority: {{header: X-Priority}}}}
  brief: {{type: concurrency_limit, max: 1, queue: 1, queue_timeout: 200ms}}
routes:
  - {{name: held, match: {{path: "/held/*"}}, upstream: app, policies: [inflight]}}
  - {{name: brief, match: {{path: "/brief/*"}}, upstream: app, strip_prefix: /brief,
      policies: [brief]}}
  - {{name: free, match: {{path: "/free/*"}}, upstream: app}}
{extra_routes}"""


def send(port: int, path: str, headers: str = "") -> socket.socket:
    sock = connect(port)
    sock.sendall(f"GET {path} HTTP/1.1\r\nhost: gw\r\n{headers}\r\n".encode())
    return sock


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    try:
        status, headers, body, _ = read_response(sock)
    finally:
        sock.close()
    return status, {k.lower(): v for k, v in dict(headers).items()}, body


def throttle(tw: ThreadedWorker) -> dict:
    return tw.call(tw.worker.stats)["extra"]["throttle"]


def test_throttling_concurrency_limit_queues_then_refuses():
    with HoldingUpstream() as up, ThreadedWorker(config(up.port)) as tw:
        first = [send(tw.port, f"/held/{i}") for i in range(2)]
        assert wait_for(lambda: len(up.arrived) == 2)
        queued = []
        for i in (2, 3):
            queued.append(send(tw.port, f"/held/{i}"))
            assert wait_for(lambda i=i: throttle(tw)["policies"]["inflight"]["queued"] == i - 1)
        row = throttle(tw)["policies"]["inflight"]
        assert (row["in_flight"], row["queued"], row["limit"]) == (2, 2, 2)
        # the queue is full: the next ones are refused at once, not held
        for i in (4, 5):
            status, headers, body = answer(send(tw.port, f"/held/{i}"))
            assert status == 503 and headers["retry-after"] == "2"
            error = json.loads(body)
            assert error["policy"] == "concurrency_limit" and error["request_id"]
        assert len(up.arrived) == 2
        up.release()
        results = [answer(sock) for sock in first + queued]
        assert [(status, body) for status, _, body in results] == [
            (200, f"/held/{i}".encode()) for i in range(4)
        ]
        assert sorted(up.arrived) == [f"/held/{i}" for i in range(4)]
        assert wait_for(lambda: throttle(tw)["policies"]["inflight"]["in_flight"] == 0)
        rejected = throttle(tw)["policies"]["inflight"]["rejected"]
        assert rejected == {"queue_full": 2, "queue_timeout": 0, "shed": 0}


def test_throttling_queue_timeout_answers_503():
    with HoldingUpstream() as up, ThreadedWorker(config(up.port)) as tw:
        holder = send(tw.port, "/brief/held/1")
        assert wait_for(lambda: len(up.arrived) == 1)
        status, headers, _ = answer(send(tw.port, "/brief/held/2"))  # waits 200 ms, then 503
        assert status == 503 and headers["retry-after"] == "1"
        assert throttle(tw)["policies"]["brief"]["rejected"]["queue_timeout"] == 1
        up.release()
        assert answer(holder)[0] == 200
        assert up.arrived == ["/held/1"]


def test_throttling_high_priority_queued_last_is_served_first():
    with HoldingUpstream() as up, ThreadedWorker(config(up.port)) as tw:
        first = [send(tw.port, f"/held/run{i}") for i in range(2)]
        assert wait_for(lambda: len(up.arrived) == 2)
        low = send(tw.port, "/held/low", "X-Priority: 1\r\n")
        assert wait_for(lambda: throttle(tw)["policies"]["inflight"]["queued"] == 1)
        high = send(tw.port, "/held/high", "X-Priority: 90\r\n")
        assert wait_for(lambda: throttle(tw)["policies"]["inflight"]["queued"] == 2)
        up.release()
        for sock in (*first, low, high):
            assert answer(sock)[0] == 200
        assert up.arrived[2:] == ["/held/high", "/held/low"]


def test_throttling_per_upstream_counts_the_routes_of_one_upstream_together():
    with HoldingUpstream() as up:
        text = f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{up.port}"]}}
policies:
  one: {{type: concurrency_limit, max: 1, per: upstream}}
routes:
  - {{name: a, match: {{path: "/a/*"}}, upstream: app, strip_prefix: /a, policies: [one]}}
  - {{name: b, match: {{path: "/b/*"}}, upstream: app, strip_prefix: /b, policies: [one]}}
  - {{name: direct, match: {{path: /direct}}, respond: {{body: here}}, policies: [one]}}
"""
        with ThreadedWorker(text) as tw:
            held = send(tw.port, "/a/held/1")
            assert wait_for(lambda: len(up.arrived) == 1)
            status, headers, _ = answer(send(tw.port, "/b/held/2"))  # the same upstream
            assert status == 503 and headers["retry-after"] == "1"
            assert answer(send(tw.port, "/direct"))[0] == 200  # no upstream: its own counter
            up.release()
            assert answer(held)[0] == 200
            assert wait_for(lambda: throttle(tw)["policies"]["one"]["in_flight"] == 0)
            assert answer(send(tw.port, "/b/free"))[0] == 200
            assert up.arrived == ["/held/1", "/free"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reset(sock: socket.socket) -> None:
    """The client leaves at once (RST): a FIN alone is a half-close whose answer is awaited."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass(frozen=True, slots=True)
class RaiseConfig:
    family: ClassVar[str] = "test_raise"


class Raise:
    """A later policy that fails (500)."""

    def __init__(self, config: RaiseConfig) -> None:
        pass

    def on_request(self, req):
        raise RuntimeError("a policy bug")


@pytest.fixture
def raising_family():
    register(PolicyFamily("test_raise", RaiseConfig, Raise))
    yield
    unregister_family("test_raise")


def test_throttling_slots_never_leak(raising_family):
    # one counter for every route: a slot left behind would show in `in_flight` and hold
    # up the next request
    with HoldingUpstream() as up:
        text = f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{up.port}"]}}
  dead: {{targets: ["127.0.0.1:{free_port()}"]}}
policies:
  gate: {{type: concurrency_limit, max: 1, queue: 2, queue_timeout: 5s, per: policy}}
routes:
  - {{name: held, match: {{path: "/held/*"}}, upstream: app, policies: [gate]}}
  - {{name: deny, match: {{path: /deny}}, upstream: app,
      policies: [gate, {{type: fault, abort: {{status: 418}}}}]}}
  - {{name: dead, match: {{path: /dead}}, upstream: dead, policies: [gate]}}
  - {{name: bug, match: {{path: /bug}}, upstream: app, policies: [gate, {{type: test_raise}}]}}
"""
        with ThreadedWorker(text) as tw:

            def row() -> dict:
                return throttle(tw)["policies"]["gate"]

            first = send(tw.port, "/held/a")
            assert wait_for(lambda: len(up.arrived) == 1)
            gone = send(tw.port, "/held/b")
            assert wait_for(lambda: row()["queued"] == 1)
            waiting = send(tw.port, "/held/c")
            assert wait_for(lambda: row()["queued"] == 2)
            reset(gone)  # the client leaves while queued
            assert wait_for(lambda: row()["queued"] == 1)
            reset(first)  # the client leaves while its request is upstream
            assert wait_for(lambda: up.arrived == ["/held/a", "/held/c"])
            assert (row()["in_flight"], row()["queued"]) == (1, 0)
            up.release()
            assert answer(waiting)[:1] == (200,)
            assert wait_for(lambda: row()["in_flight"] == 0)
            assert answer(send(tw.port, "/deny"))[0] == 418  # a later policy answers
            assert answer(send(tw.port, "/dead"))[0] == 502  # the upstream fails
            assert answer(send(tw.port, "/bug"))[0] == 500  # a later policy raises
            assert row()["in_flight"] == 0
            sock = connect(tw.port)  # pipelined: each takes the one slot in turn
            sock.sendall(
                b"GET /held/p1 HTTP/1.1\r\nhost: gw\r\n\r\n"
                b"GET /deny HTTP/1.1\r\nhost: gw\r\n\r\n"
                b"GET /held/p2 HTTP/1.1\r\nhost: gw\r\n\r\n"
            )
            statuses = [status for status, _, _ in read_responses(sock, 3)]
            sock.close()
            assert statuses == [200, 418, 200]
            assert wait_for(lambda: row()["in_flight"] == 0)
            assert row()["queued"] == 0
            assert row()["rejected"] == {"queue_full": 0, "queue_timeout": 0, "shed": 0}


def test_throttling_reload_lets_the_old_instance_drain():
    def text(port: int, limit: int) -> str:
        return f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{port}"]}}
policies:
  gate: {{type: concurrency_limit, max: {limit}, queue: 4, queue_timeout: 5s}}
routes:
  - {{name: held, match: {{path: "/held/*"}}, upstream: app, policies: [gate]}}
"""

    with HoldingUpstream() as up, ThreadedWorker(text(up.port, 1)) as tw:
        old = [send(tw.port, "/held/a")]
        assert wait_for(lambda: len(up.arrived) == 1)
        old.append(send(tw.port, "/held/b"))
        assert wait_for(lambda: throttle(tw)["policies"]["gate"]["queued"] == 1)
        tw.call(tw.worker.swap, load_config_text(text(up.port, 2)))
        new = [send(tw.port, f"/held/{name}") for name in ("c", "d")]  # the new instance's
        assert wait_for(lambda: sorted(up.arrived) == ["/held/a", "/held/c", "/held/d"])
        assert throttle(tw)["policies"]["gate"]["in_flight"] == 2
        up.release()
        assert [answer(sock)[0] for sock in old + new] == [200] * 4  # b: the old one's queue
        assert sorted(up.arrived) == [f"/held/{name}" for name in "abcd"]
        assert wait_for(lambda: throttle(tw)["policies"]["gate"]["in_flight"] == 0)


def test_throttling_websocket_holds_its_slot_until_the_upgrade():
    async def talk(port: int, count: int) -> list:
        async with aiohttp.ClientSession() as session:
            sockets = [
                await session.ws_connect(f"http://127.0.0.1:{port}/ws") for _ in range(count)
            ]
            replies = []
            for i, ws in enumerate(sockets):
                await ws.send_str(f"m{i}")
                replies.append((await asyncio.wait_for(ws.receive(), 5)).data)
            for ws in sockets:
                await ws.close()
            return replies

    with WebSocketUpstream() as up:
        text = f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  ws: {{targets: ["127.0.0.1:{up.port}"]}}
policies:
  gate: {{type: concurrency_limit, max: 1}}
routes:
  - {{name: ws, match: {{path: /ws}}, upstream: ws, websocket: true, policies: [gate]}}
"""
        with ThreadedWorker(text) as tw:
            # two tunnels open at once with max 1 and no queue: an open tunnel holds no slot
            assert asyncio.run(talk(tw.port, 2)) == ["m0", "m1"]
            row = throttle(tw)["policies"]["gate"]
            assert row["in_flight"] == 0 and row["rejected"]["queue_full"] == 0


@dataclass(frozen=True, slots=True)
class BlockConfig:
    family: ClassVar[str] = "test_block_loop"
    seconds: float = setting("number", "How long each stretch blocks the loop.", default=0.3)
    rounds: int = setting("int", "How many stretches, one loop iteration apart.", default=4)


class BlockLoop:
    """Keeps the worker's loop busy (as CPU-bound work would): `rounds` stretches of
    `seconds`, each a callback of its own, so the loop turns (and its timers fire late)
    in between."""

    def __init__(self, config: BlockConfig) -> None:
        self.seconds = config.seconds
        self.rounds = config.rounds
        self.blocking = threading.Event()
        self.done = threading.Event()

    def on_request(self, req):
        asyncio.get_running_loop().call_soon(self._burn, self.rounds)
        return None

    def _burn(self, left: int) -> None:
        self.blocking.set()
        time.sleep(self.seconds)
        if left > 1:
            asyncio.get_running_loop().call_soon(self._burn, left - 1)
        else:
            self.done.set()


@pytest.fixture
def blocking_family():
    register(PolicyFamily("test_block_loop", BlockConfig, BlockLoop))
    yield
    unregister_family("test_block_loop")


def test_throttling_load_shedding_on_loop_lag(blocking_family):
    with HoldingUpstream() as up:
        text = config(
            up.port,
            limits="limits: {max_loop_lag: 100ms, shed_retry_after: 3s}",
            extra_routes="  - {name: block, match: {path: /block}, respond: {body: done},\n"
            "      policies: [{type: test_block_loop, seconds: 0.3, rounds: 4}]}",
        )
        with ThreadedWorker(text) as tw:
            # keep-alive connections that served a request before the loop is busy
            ready = [connect(tw.port) for _ in range(3)]
            for sock in ready:
                sock.sendall(b"GET /free/warm HTTP/1.1\r\nhost: gw\r\n\r\n")
                assert read_response(sock)[0] == 200
            assert not tw.worker.state.shedding
            assert answer(send(tw.port, "/block"))[0] == 200  # the busy stretches follow
            policy = next(
                p.target
                for p in tw.call(tw.worker.policies.instances).values()
                if p.type_name == "test_block_loop"
            )
            assert policy.blocking.wait(5)
            assert wait_for(lambda: tw.worker.state.shedding, timeout=5)
            for sock in ready:
                sock.sendall(b"GET /free/late HTTP/1.1\r\nhost: gw\r\n\r\n")
            shed = [answer(sock) for sock in ready]
            assert [status for status, _, _ in shed] == [503, 503, 503]
            assert all(headers["retry-after"] == "3" for _, headers, _ in shed)
            assert all(b"overloaded" in body for _, _, body in shed)
            assert "/free/late" not in up.arrived
            # on time again: new requests are served
            assert policy.done.wait(5)
            assert wait_for(lambda: answer(send(tw.port, "/free/again"))[0] == 200, timeout=5)
            assert not tw.worker.state.shedding
            stats = tw.call(tw.worker.stats)
            shed_count = stats["extra"]["throttle"]["load_shed"]
            assert shed_count >= 3
            exposition = render(Gathered([stats]), 100).decode()
            assert f"isekai_load_shed_total {shed_count}\n" in exposition
            assert "isekai_event_loop_lag_seconds " in exposition
            assert 'isekai_concurrency_limit{policy="inflight"} 2\n' in exposition
