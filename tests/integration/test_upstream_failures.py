"""Upstream failures answered by the gateway: pool waits past `pool_timeout`, a waiter whose client
leaves, a balancer with no target; a Worker in this process, real upstream, real sockets."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from isekai._core.balancer import Balancer
from isekai._core.cluster import Cluster
from tests.support.client import connect, json_body, read_responses
from tests.support.worker import ThreadedWorker, app_config, get


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def one_connection_worker(upstream, pool_timeout: str) -> ThreadedWorker:
    options = f"max_connections: 1, pool_timeout: {pool_timeout}"
    return ThreadedWorker(app_config(upstream.port, options=options))


def target_status(tw: ThreadedWorker) -> dict:
    return tw.call(tw.worker.registry.status)["app"]["targets"][0]


def slow_request_in_background(port: int, ms: int) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(get(port, f"/app/slow/{ms}")))
    thread.start()
    return thread, result


def test_upstream_pool_wait_past_pool_timeout_answers_503(upstream):
    with one_connection_worker(upstream, "300ms") as tw:
        first, result = slow_request_in_background(tw.port, 2500)
        assert wait_for(lambda: target_status(tw)["busy"] == 1)
        started = time.monotonic()
        status, body = get(tw.port, "/app/echo")
        waited = time.monotonic() - started
        assert status == 503
        error = json_body(body)
        assert error["success"] is False and "pool_timeout" in error["error"]
        assert error["request_id"]
        assert 0.25 <= waited < 2.4  # answered by the deadline sweep, long before the slot frees
        first.join(10)
        assert result == [(200, b"slow")]
        app = tw.call(tw.worker.counters.snapshot)["slots"]["app"]
        assert app["upstream_errors"]["unavailable"] == 1
        assert target_status(tw)["waiting"] == 0


def test_upstream_pool_waiter_whose_client_leaves_is_dequeued(upstream):
    with one_connection_worker(upstream, "10s") as tw:
        first, result = slow_request_in_background(tw.port, 2000)
        assert wait_for(lambda: target_status(tw)["busy"] == 1)
        with connect(tw.port) as sock:
            sock.sendall(b"GET /app/echo HTTP/1.1\r\nHost: t\r\n\r\n")
            assert wait_for(lambda: target_status(tw)["waiting"] == 1)
            # a reset, not a FIN: a half-closed client is still answered (test_edge_cases)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert wait_for(lambda: target_status(tw)["waiting"] == 0, timeout=1.5)
        assert first.is_alive()  # it left the queue because its client left, not by a slot
        first.join(10)
        assert result == [(200, b"slow")]
        assert len(upstream.requests) == 1  # the departed request never reached the upstream
        assert get(tw.port, "/app/echo")[0] == 200


class NoTarget(Balancer):
    """A balancer written in Python that finds no usable target."""

    def choose(self, exchange, avoid):
        self.asked = exchange.path
        return None


@pytest.fixture
def worker(upstream):
    with ThreadedWorker(app_config(upstream.port)) as tw:
        yield tw


def test_upstream_balancer_without_target_answers_503(worker):
    def install() -> NoTarget:
        route = worker.worker.state.router.match(b"", b"GET", b"/app/x")[0]
        balancer = NoTarget(list(route.cluster.targets))
        route.cluster = Cluster("app", balancer)
        return balancer

    balancer = worker.call(install)
    with connect(worker.port) as sock:
        sock.sendall(
            b"GET /app/x HTTP/1.1\r\nHost: t\r\n\r\nGET /app/y HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        answers = read_responses(sock, 2)
    assert [status for status, _, _ in answers] == [503, 503]
    _, headers, body = answers[0]
    assert headers["content-type"] == "application/json"
    assert json_body(body)["success"] is False
    assert "connection" not in headers  # a request without a body: the connection goes on
    assert balancer.asked == b"/app/y"
    app = worker.call(worker.worker.counters.snapshot)["slots"]["app"]
    assert app["upstream_errors"]["unavailable"] == 2 and app["status"]["5xx"] == 2


def test_upstream_post_body_counted_in(worker):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", worker.port, timeout=10)
    c.request("POST", "/app/echo", body=b"x" * 1000)
    response = c.getresponse()
    assert json_body(response.read())["body_length"] == 1000  # read to the end: recorded
    assert worker.call(worker.worker.counters.snapshot)["slots"]["app"]["bytes_in"] == 1000
