"""Three parts of the policy contract the credential families stand on, through real sockets (a
Worker in this process and a real upstream): a policy that reads the whole request body
(`body_limit`, `req.body`), a synchronous request phase that defers one request to the slow
path by returning an awaitable, and identity headers no client can send (`stripped_headers`).
"""

from __future__ import annotations

import asyncio
import time

from isekai.policy import Response
from tests.integration.test_policy_pipeline import attach, get, policy_counts, worker  # noqa: F401
from tests.support.client import connect, json_body, read_response, read_responses
from tests.support.worker import ThreadedWorker, app_config


class ReadsBody:
    """Reads the body: answers 422 unless it holds `expected` (echoes its length upstream)."""

    def __init__(self, limit, expected=None):
        self.body_limit = limit
        self.expected = expected
        self.seen = []

    def on_request(self, req):
        body = req.body
        self.seen.append(body)
        if self.expected is not None and body != self.expected:
            return Response.json(422, {"error": "unexpected body"})
        req.set_header("x-body-length", str(len(body)))
        return None


class SometimesDefers:
    """Answers inline when the request carries `x-cached`, else defers to a coroutine."""

    def __init__(self):
        self.inline = 0
        self.deferred = 0

    def on_request(self, req):
        if req.header("x-cached") is not None:
            self.inline += 1
            return None
        return self._lookup(req)

    async def _lookup(self, req):
        await asyncio.sleep(0.05)
        self.deferred += 1
        if req.header("x-deny") is not None:
            return Response.json(401, {"error": "looked up: no"})
        req.set_header("x-looked-up", "1")
        return None


def test_body_policy_sees_whole_body_then_it_is_proxied(worker, upstream):  # noqa: F811
    policy = ReadsBody(1_000_000)
    attach(worker, b"/e/x", policy)
    body = b"0123456789" * 30_000  # more than the pending-body pause threshold
    status, _, answer = get(worker.port, "/e/x", method=b"POST", body=body)
    assert status == 200
    assert policy.seen == [body]
    assert json_body(answer)["body_length"] == len(body)
    assert dict(upstream.requests[-1]["headers"])["x-body-length"] == str(len(body))


def test_body_policy_chunked_body_is_decoded(worker, upstream):  # noqa: F811
    policy = ReadsBody(1000, expected=b"hello world")
    attach(worker, b"/e/x", policy)
    with connect(worker.port) as sock:
        sock.sendall(
            b"POST /e/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        time.sleep(0.1)  # the rest arrives later: the chain waits for it
        sock.sendall(b"6\r\n world\r\n0\r\n\r\n")
        status, _, answer, _ = read_response(sock, method="POST")
    assert status == 200
    assert policy.seen == [b"hello world"]
    assert json_body(answer)["body_length"] == 11


def test_body_policy_without_body_sees_empty_bytes(worker, upstream):  # noqa: F811
    policy = ReadsBody(1000)
    attach(worker, b"/e/x", policy)
    status, _, _ = get(worker.port, "/e/x")
    assert status == 200 and policy.seen == [b""]


def test_body_policy_refuses_a_body_past_its_limit(worker, upstream):  # noqa: F811
    policy = ReadsBody(100)
    attach(worker, b"/e/x", policy)
    before = len(upstream.requests)
    status, _, answer = get(worker.port, "/e/x", method=b"POST", body=b"x" * 101)
    assert status == 413 and "too large" in json_body(answer)["error"]
    with connect(worker.port) as sock:  # chunked: refused once the limit is passed
        sock.sendall(
            b"POST /e/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"64\r\n" + b"y" * 100 + b"\r\n" + b"1\r\nz\r\n0\r\n\r\n"
        )
        status, _, _, _ = read_response(sock, method="POST")
    assert status == 413
    assert policy.seen == [] and len(upstream.requests) == before


def test_body_policy_answers_expect_continue(worker, upstream):  # noqa: F811
    policy = ReadsBody(1000, expected=b"abc")
    attach(worker, b"/e/x", policy)
    with connect(worker.port) as sock:
        sock.sendall(
            b"POST /e/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = sock.recv(100)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"abc")
        status, _, _, _ = read_response(sock, method="POST")
    assert status == 200 and policy.seen == [b"abc"]


def test_body_policy_then_pipelined_requests_answer_in_order(worker, upstream):  # noqa: F811
    policy = ReadsBody(1000)
    attach(worker, b"/e/x", policy)
    with connect(worker.port) as sock:
        sock.sendall(
            b"POST /e/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /e/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nde\r\n0\r\n\r\n"
            b"GET /g/1 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        answers = read_responses(sock, 3)
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert policy.seen == [b"abc", b"de"]


def test_sync_policy_defers_only_the_requests_that_need_io(worker, upstream):  # noqa: F811
    policy = SometimesDefers()
    attach(worker, b"/e/x", policy)
    slow_path = worker.worker.slow_path
    tasks_before = slow_path.started
    status, _, _ = get(worker.port, "/e/x", headers=b"x-cached: 1\r\n")
    assert status == 200 and policy.inline == 1
    assert slow_path.started == tasks_before  # answered inline: no Task
    status, _, _ = get(worker.port, "/e/x", method=b"POST", body=b"kept while deferred")
    assert status == 200 and policy.deferred == 1
    assert slow_path.started == tasks_before + 1
    seen = upstream.requests[-1]
    assert dict(seen["headers"])["x-looked-up"] == "1"
    status, _, answer = get(worker.port, "/e/x", headers=b"x-deny: 1\r\n")
    assert status == 401 and json_body(answer)["error"] == "looked up: no"
    assert policy_counts(worker, "p0")["answers"] == 1


def test_deferred_lookup_past_the_deadline_is_503(worker, upstream):  # noqa: F811
    policy = SometimesDefers()
    core = attach(worker, b"/e/x", policy)[0]
    core.deadline = 0.01
    status, _, answer = get(worker.port, "/e/x")
    assert status == 503 and "did not finish in time" in json_body(answer)["error"]


def test_identity_headers_from_clients_never_reach_the_upstream(upstream):
    config = app_config(
        upstream.port,
        routes="""
  - {name: open, match: {path: "/e/*"}, upstream: app}
""",
    )
    with ThreadedWorker(config) as tw:
        claimed = b"X-Consumer-ID: admin\r\nx-consumer-id: root\r\nX-Other: 1\r\n"
        status, _, _ = get(tw.port, "/e/x", headers=claimed)
    assert status == 200
    sent = [name.lower() for name, _ in upstream.requests[-1]["headers"]]
    assert "x-consumer-id" not in sent and "x-other" in sent


def test_listener_body_policy_reads_the_body_of_unrouted_requests(worker):  # noqa: F811
    from tests.integration.test_policy_pipeline import attach_listener

    policy = ReadsBody(1000)
    attach_listener(worker, policy)
    status, _, _ = get(worker.port, "/nowhere", method=b"POST", body=b"abc")
    assert status == 404 and policy.seen == [b"abc"]


def read_until_closed(sock):
    """Every byte the gateway sends until it closes the connection (bounded by the timeout)."""
    data = b""
    for _ in range(1000):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def test_body_policy_413_is_the_only_answer_on_its_connection(worker, upstream):  # noqa: F811
    policy = ReadsBody(10)
    attach(worker, b"/e/x", policy)
    with connect(worker.port, timeout=2) as sock:
        # several chunks past the limit arrive in one read: one 413, then the connection ends
        sock.sendall(
            b"POST /e/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"8\r\n" + b"a" * 8 + b"\r\n" for _ in range(6))
            + b"0\r\n\r\n"
        )
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert data.count(b"HTTP/1.1 ") == 1, data
    assert policy.seen == []
