"""The policy contract on the request path (DESIGN.md §6), through real sockets: a Worker in this
process, a real upstream that records what reached it, and Python policies attached to a
route's or listener's chain.

Request phase in order (sync inline, async on the slow path with the body held), answers,
response phase in reverse order on upstream and gateway-made responses, `on_complete` after
the last byte, the request context and header edits, `client_ip` after `trusted_proxies`,
CORS-style preflights on a route without OPTIONS, and failures: an exception in any phase,
a deadline, a client that leaves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import pytest

from isekai.chains import as_core
from isekai.policy import Response
from tests.support.client import connect, json_body, read_response, read_responses, request
from tests.support.worker import ThreadedWorker, app_config

ROUTES = """
  - {name: echo, match: {path: "/e/*"}, upstream: app}
  - {name: getonly, match: {path: "/g/{id}", methods: [GET]}, upstream: app}
  - {name: fixed, match: {path: "/fixed"}, respond: {body: fixed, headers: {X-Fixed: "1"}}}
"""


class Recorder:
    """Records the phases it sees in a shared list; optionally edits the request/response."""

    def __init__(self, name, log, *, set_request=None, set_response=None):
        self.name = name
        self.log = log
        self.set_request = set_request
        self.set_response = set_response

    def on_request(self, req):
        self.log.append(("request", self.name))
        req.ctx.setdefault("seen", []).append(self.name)
        if self.set_request:
            req.set_header(*self.set_request)
        return None

    def on_response(self, req, head):
        self.log.append(("response", self.name, head.status))
        if self.set_response:
            head.set_header(*self.set_response)
        head.add_header("x-chain", ",".join(req.ctx["seen"]))

    def on_complete(self, req):
        self.log.append(("complete", self.name))


class Deny:
    def __init__(self, status=403):
        self.status = status

    def on_request(self, req):
        return Response.json(self.status, {"success": False, "error": "denied"})


class Waits:
    """Async: sleeps, then continues (or answers)."""

    def __init__(self, seconds, answer=None):
        self.seconds = seconds
        self.answer = answer
        self.cancelled = 0
        self.finished = 0

    async def on_request(self, req):
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        req.set_header("x-waited", str(self.seconds))
        return self.answer


class Raises:
    def __init__(self, phase):
        self.phase = phase
        if phase == "async":

            async def on_request(req):
                await asyncio.sleep(0)
                raise RuntimeError("async policy bug")

            self.on_request = on_request

    def on_request(self, req):
        if self.phase == "request":
            raise RuntimeError("request policy bug")

    def on_response(self, req, head):
        if self.phase == "response":
            raise RuntimeError("response policy bug")

    def on_complete(self, req):
        if self.phase == "complete":
            raise RuntimeError("complete policy bug")


class Preflight:
    """Answers OPTIONS preflights (as the cors family does)."""

    def on_request(self, req):
        if req.method == b"OPTIONS" and req.header("access-control-request-method"):
            return Response(204, (("access-control-allow-origin", req.header("origin")),))
        return None


@pytest.fixture
def worker(upstream):
    with ThreadedWorker(app_config(upstream.port, routes=ROUTES)) as tw:
        yield tw


def attach(tw, path, *policies, name_prefix="p"):
    """Put `policies` on the chain of the route matching GET `path`; returns the core policies."""
    chain = tuple(as_core(p) for p in policies)
    for i, policy in enumerate(chain):
        policy.name = f"{name_prefix}{i}"
        policy.slot = tw.worker.counters.policy_slot(policy.name)
        policy.deadline = getattr(policies[i], "deadline", 10.0)

    def put():
        tw.worker.state.router.match(b"", b"GET", path)[0].chain = chain

    tw.call(put)
    return chain


def attach_listener(tw, *policies):
    chain = tuple(as_core(p) for p in policies)
    for i, policy in enumerate(chain):
        policy.name = f"l{i}"
        policy.slot = tw.worker.counters.policy_slot(policy.name)

    def put():
        tw.worker.listeners["public"].chain = chain

    tw.call(put)


def get(port, path, headers=b"", method=b"GET", body=b""):
    raw = b"%s %s HTTP/1.1\r\nHost: t\r\n%s" % (method, path.encode(), headers)
    if body:
        raw += b"Content-Length: %d\r\n" % len(body)
    return request(port, raw + b"\r\n" + body, method=method.decode())


def policy_counts(tw, name):
    return tw.call(tw.worker.counters.snapshot)["policies"][name]


def test_pipeline_request_response_complete_in_order(worker, upstream):
    log = []
    attach(
        worker,
        b"/e/x",
        Recorder("a", log, set_request=("x-a", "1"), set_response=("x-from", "a")),
        Recorder("b", log, set_request=("x-b", "2"), set_response=("x-from", "b")),
    )
    status, headers, body = get(worker.port, "/e/x")
    assert status == 200
    sent = dict(upstream.requests[-1]["headers"])
    assert sent["x-a"] == "1" and sent["x-b"] == "2"
    # the response phase runs last to first: a's value wins
    assert headers["x-from"] == "a"
    deadline = time.monotonic() + 5
    while len(log) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log == [
        ("request", "a"),
        ("request", "b"),
        ("response", "b", 200),
        ("response", "a", 200),
        ("complete", "a"),
        ("complete", "b"),
    ]


def test_pipeline_answer_skips_the_rest_and_their_response_phase(worker, upstream):
    log = []
    attach(worker, b"/e/x", Recorder("a", log), Deny(401), Recorder("c", log))
    before = len(upstream.requests)
    status, headers, body = get(worker.port, "/e/x")
    assert status == 401 and json_body(body)["error"] == "denied"
    assert headers["content-type"] == "application/json"
    assert headers["x-chain"] == "a"  # a's response phase ran on the answer, c never ran
    assert len(upstream.requests) == before
    assert ("request", "c") not in log
    assert policy_counts(worker, "p1")["answers"] == 1


def test_pipeline_response_phase_on_gateway_errors_and_direct_routes(worker, upstream):
    log = []
    attach(worker, b"/app/x", Recorder("a", log, set_response=("x-from", "a")))
    status, headers, _ = get(worker.port, "/app/status/502")  # the upstream's own 502
    assert status == 502 and headers["x-from"] == "a"
    status, headers, body = get(worker.port, "/app/reset")  # the gateway's 502
    assert status == 502 and headers["x-from"] == "a" and headers["x-chain"] == "a"
    assert json_body(body)["success"] is False
    attach(worker, b"/fixed", Recorder("f", log, set_response=("x-from", "f")))
    status, headers, body = get(worker.port, "/fixed")
    assert (status, body, headers["x-fixed"], headers["x-from"]) == (200, b"fixed", "1", "f")


def test_pipeline_listener_policies_run_before_the_routes(worker):
    log = []
    attach_listener(worker, Recorder("listener", log))
    attach(worker, b"/e/x", Recorder("route", log))
    status, headers, _ = get(worker.port, "/e/x")
    assert status == 200
    assert headers["x-chain"] == "listener,route"
    assert log[:2] == [("request", "listener"), ("request", "route")]
    # a route without policies of its own still gets the listener's
    status, headers, _ = get(worker.port, "/g/1")
    assert status == 200 and headers["x-chain"] == "listener"


def test_pipeline_async_policy_holds_the_body_then_continues(worker, upstream):
    waits = Waits(0.2)
    attach(worker, b"/e/x", waits)
    body = b"x" * 300_000  # more than the pending-body pause threshold
    started = time.monotonic()
    status, headers, answer = get(worker.port, "/e/x", method=b"POST", body=body)
    assert status == 200 and time.monotonic() - started >= 0.2
    echoed = json_body(answer)
    assert echoed["body_length"] == len(body)
    assert dict(upstream.requests[-1]["headers"])["x-waited"] == "0.2"
    assert waits.finished == 1


def test_pipeline_async_policy_answer(worker, upstream):
    attach(worker, b"/e/x", Waits(0.01, Response(418, body=b"tea")))
    before = len(upstream.requests)
    status, _, body = get(worker.port, "/e/x")
    assert (status, body) == (418, b"tea")
    assert len(upstream.requests) == before


def test_pipeline_async_deadline_answers_503(worker, upstream):
    slow = Waits(5)
    slow.deadline = 0.2
    attach(worker, b"/e/x", slow)
    before = len(upstream.requests)
    started = time.monotonic()
    status, _, body = get(worker.port, "/e/x")
    assert status == 503 and "did not finish in time" in json_body(body)["error"]
    assert time.monotonic() - started < 3
    assert len(upstream.requests) == before
    assert policy_counts(worker, "p0")["timeouts"] == 1


def test_pipeline_async_task_cancelled_when_client_leaves(worker, upstream):
    slow = Waits(5)
    attach(worker, b"/e/x", slow)
    sock = connect(worker.port)
    sock.sendall(b"GET /e/x HTTP/1.1\r\nHost: t\r\n\r\n")
    time.sleep(0.2)
    # a reset, not a half-close (which still waits for the answer)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 5
    while slow.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert slow.cancelled == 1 and slow.finished == 0


def test_pipeline_async_then_pipelined_requests_answer_in_order(worker):
    attach(worker, b"/e/x", Waits(0.1))
    with connect(worker.port) as sock:
        sock.sendall(
            b"GET /e/x HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /g/1 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /e/x HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        answers = read_responses(sock, 3)
    assert [json_body(b)["target"] for _, _, b in answers] == ["/e/x", "/g/1", "/e/x"]


@pytest.mark.parametrize("phase", ["request", "async", "response"])
def test_pipeline_policy_exception_is_logged_counted_answered_500(worker, upstream, caplog, phase):
    caplog.set_level(logging.ERROR, logger="isekai.core")
    attach(worker, b"/e/x", Recorder("a", []), Raises(phase))
    with connect(worker.port) as sock:
        sock.sendall(b"GET /e/x HTTP/1.1\r\nHost: t\r\n\r\nGET /g/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        answers = read_responses(sock, 2)
    (status, headers, body), (second, _, _) = answers
    assert status == 500 and json_body(body)["error"] == "internal error"
    if phase == "response":
        assert "x-chain" not in headers  # a failed response phase is not half-applied
    else:
        assert headers["x-chain"] == "a"  # the policy before it still sees the 500
    assert second == 200
    records = [r for r in caplog.records if r.name == "isekai.core"]
    assert len(records) == 1
    message = records[0].getMessage()
    assert "route echo, policy p1" in message and "policy bug" in message
    assert json_body(body)["request_id"] in message
    assert policy_counts(worker, "p1")["errors"] == 1


def test_pipeline_exception_in_on_complete_is_logged_not_answered(worker, caplog):
    caplog.set_level(logging.ERROR, logger="isekai.core")
    attach(worker, b"/e/x", Raises("complete"))
    status, _, _ = get(worker.port, "/e/x")
    assert status == 200
    deadline = time.monotonic() + 5
    while not caplog.records and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "complete policy bug" in caplog.records[0].getMessage()
    assert policy_counts(worker, "p0")["errors"] == 1


def test_pipeline_bad_answer_from_a_policy_is_its_error(worker):
    class Bad:
        def on_request(self, req):
            return Response(101)

    attach(worker, b"/e/x", Bad())
    status, _, _ = get(worker.port, "/e/x")
    assert status == 500
    assert policy_counts(worker, "p0")["errors"] == 1


def test_pipeline_request_headers_read_set_remove(worker, upstream):
    class Edits:
        def on_request(self, req):
            assert req.header("HOST") == "t"
            assert req.header("x-request-id") == req.request_id.decode()
            req.ctx["secret"] = req.header("x-secret")
            req.remove_header("X-Secret")
            req.set_header("X-Dup", "one")
            req.add_header("X-Dup", "two")
            req.set_header("X-Seen", req.ctx["secret"])
            for managed in ("host", "content-length", "x-forwarded-for", "connection"):
                with pytest.raises(ValueError, match="managed by the gateway"):
                    req.set_header(managed, "x")
            with pytest.raises(ValueError, match="invalid value"):
                req.set_header("x-evil", "a\r\nb: c")

    attach(worker, b"/e/x", Edits())
    status, _, _ = get(worker.port, "/e/x", headers=b"X-Secret: s3\r\nX-Secret: again\r\n")
    assert status == 200
    sent = upstream.requests[-1]["headers"]
    names = [k.lower() for k, _ in sent]
    assert "x-secret" not in names
    assert [v for k, v in sent if k.lower() == "x-dup"] == ["one", "two"]
    assert dict(sent)["x-seen"] == "s3"


def test_pipeline_preflight_reaches_policies_on_a_get_only_route(worker, upstream):
    attach(worker, b"/g/1", Preflight())
    before = len(upstream.requests)
    status, headers, _ = get(
        worker.port,
        "/g/1",
        method=b"OPTIONS",
        headers=b"Origin: https://a.example\r\nAccess-Control-Request-Method: GET\r\n",
    )
    assert status == 204 and headers["access-control-allow-origin"] == "https://a.example"
    # an OPTIONS that is not a preflight is still 405 with Allow
    status, headers, _ = get(worker.port, "/g/1", method=b"OPTIONS")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    # a preflight for a method the path does not have is not routed
    status, _, _ = get(
        worker.port,
        "/g/1",
        method=b"OPTIONS",
        headers=b"Origin: https://a.example\r\nAccess-Control-Request-Method: DELETE\r\n",
    )
    assert status == 405
    assert len(upstream.requests) == before


def test_pipeline_preflight_no_policy_answers_is_405(worker, upstream):
    attach(worker, b"/g/1", Recorder("a", []))
    status, headers, _ = get(
        worker.port,
        "/g/1",
        method=b"OPTIONS",
        headers=b"Origin: https://a.example\r\nAccess-Control-Request-Method: GET\r\n",
    )
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_pipeline_client_ip_after_trusted_proxies(upstream):
    trusted = "trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]\n"
    config = app_config(upstream.port, routes=ROUTES) + trusted
    seen = []

    class Sees:
        def on_request(self, req):
            seen.append(req.client_ip)

    with ThreadedWorker(config) as tw:
        attach(tw, b"/e/x", Sees())
        get(tw.port, "/e/x")
        get(tw.port, "/e/x", headers=b"X-Forwarded-For: 203.0.113.7, 10.1.2.3\r\n")
        get(tw.port, "/e/x", headers=b"X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n")
        get(tw.port, "/e/x", headers=b"X-Forwarded-For: 10.0.0.1\r\n")
        get(tw.port, "/e/x", headers=b"X-Forwarded-For: junk, 10.0.0.2\r\n")
        get(tw.port, "/e/x", headers=b"X-Forwarded-For: fe80::1%a;b=c x, 10.0.0.3\r\n")
    assert seen == [
        "127.0.0.1",
        "203.0.113.7",
        "203.0.113.9",
        "10.0.0.1",
        "10.0.0.2",
        "10.0.0.3",
    ]


def test_pipeline_client_ip_ignores_forwarded_for_from_untrusted_peers(worker):
    seen = []

    class Sees:
        def on_request(self, req):
            seen.append(req.client_ip)

    attach(worker, b"/e/x", Sees())
    get(worker.port, "/e/x", headers=b"X-Forwarded-For: 203.0.113.7\r\n")
    assert seen == ["127.0.0.1"]


def test_pipeline_route_without_policies_is_untouched(worker, upstream):
    status, headers, body = get(worker.port, "/e/x")
    assert status == 200 and "x-chain" not in headers
    assert policy_counts_or_empty(worker) == {}


def policy_counts_or_empty(tw):
    return tw.call(tw.worker.counters.snapshot)["policies"]


def test_pipeline_half_close_during_async_policy_still_answers(worker):
    attach(worker, b"/e/x", Waits(0.1))
    sock = socket.create_connection(("127.0.0.1", worker.port), timeout=5)
    sock.sendall(b"GET /e/x HTTP/1.1\r\nHost: t\r\n\r\n")
    sock.shutdown(socket.SHUT_WR)
    status, _, body, _ = read_response(sock)
    sock.close()
    assert status == 200 and json_body(body)["target"] == "/e/x"


class EditsResponse:
    def __init__(self, edit):
        self.edit = edit

    def on_response(self, req, head):
        self.edit(head)


@pytest.mark.parametrize(
    "edit",
    [
        lambda head: setattr(head, "status", 304),
        lambda head: setattr(head, "status", 204),
        lambda head: head.set_header("Content-Length", "3"),
        lambda head: head.set_header("Transfer-Encoding", "chunked"),
        lambda head: head.remove_header("content-length"),
        lambda head: head.set_header("Connection", "close"),
        lambda head: head.add_header("X-Request-Id", "fixed"),
    ],
)
def test_pipeline_response_policy_cannot_break_framing(worker, edit):
    attach(worker, b"/app/x", EditsResponse(edit))
    with connect(worker.port) as sock:
        sock.sendall(
            b"GET /app/bytes/10 HTTP/1.1\r\nHost: t\r\n\r\nGET /g/1 HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        (status, _, body), (second, _, echoed) = read_responses(sock, 2)
    assert status == 500 and json_body(body)["error"] == "internal error"
    assert second == 200 and json_body(echoed)["target"] == "/g/1"
    assert policy_counts(worker, "p0")["errors"] == 1


def test_pipeline_response_policy_changes_status_between_bodied_ones(worker):
    def edit(head):
        head.status = 203

    attach(worker, b"/app/x", EditsResponse(edit))
    status, _, body = get(worker.port, "/app/bytes/10")
    assert (status, body) == (203, b"0123456789")
    # a bodyless upstream status stays what it is
    status, _, _ = get(worker.port, "/app/status/204")
    assert status == 500


@pytest.mark.parametrize("status", [204, 205, 304])
def test_pipeline_bodyless_answer_is_sent_without_body(worker, status):
    attach(worker, b"/e/x", Deny(status))
    with connect(worker.port) as sock:
        sock.sendall(b"GET /e/x HTTP/1.1\r\nHost: t\r\n\r\nGET /g/1 HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while data.count(b"HTTP/1.1 ") < 2 or not data.endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 %d " % status)
    if status == 205:  # no content, but a length: only 204 and 304 end at their head
        assert b"content-length: 0" in first.lower()
    else:
        assert b"content-length" not in first.lower()
    assert rest.startswith(b"HTTP/1.1 200 ")  # no body between the two responses


@pytest.mark.parametrize(
    "headers",
    [
        (("x-a", "a\r\nx-injected: 1"),),
        (("content-length", "0"),),
        (("transfer-encoding", "chunked"),),
        (("x bad", "v"),),
        (("x-request-id", "mine"),),
    ],
)
def test_pipeline_answer_fields_are_checked(worker, headers):
    class Answers:
        def on_request(self, req):
            return Response(200, headers, b"hello")

    attach(worker, b"/e/x", Answers())
    status, got, body = get(worker.port, "/e/x")
    assert status == 500 and "x-injected" not in got
    assert policy_counts(worker, "p0")["errors"] == 1


def test_pipeline_on_complete_runs_for_a_policy_that_raised_or_timed_out(worker):
    class Fails:
        def __init__(self, how):
            self.how = how
            self.completed = 0
            self.deadline = 0.1

        async def on_request(self, req):
            if self.how == "raise":
                raise RuntimeError("async policy bug")
            await asyncio.sleep(5)

        def on_complete(self, req):
            self.completed += 1

    for how, status in (("raise", 500), ("late", 503)):
        log = []
        fails = Fails(how)
        attach(worker, b"/e/x", Recorder("a", log), fails)
        assert get(worker.port, "/e/x")[0] == status
        deadline = time.monotonic() + 5
        while fails.completed == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fails.completed == 1 and ("complete", "a") in log


def test_pipeline_answer_subclass_fields_are_checked_too(worker):
    from isekai._core.policy import Answer

    class Forged(Answer):
        @property
        def headers(self):
            return (("content-length", "0"), ("x-inj", "a\r\nx-evil: 1"))

    class Answers:
        def on_request(self, req):
            return Forged(200, (), b"hi")

    attach(worker, b"/e/x", Answers())
    status, headers, _ = get(worker.port, "/e/x")
    assert status == 500 and "x-evil" not in headers
