"""Exceptions from our own code on the data plane are never silent: logged once with the request
id and route, counted, answered 500 (in order, pipelined requests included).

The trigger is real: a synchronous policy that raises, attached to a route's chain in a Worker
running in this process; requests go through real sockets to a real upstream.
"""

from __future__ import annotations

import logging

import pytest

from isekai.chains import as_core
from tests.support.client import connect, json_body, read_responses
from tests.support.worker import ThreadedWorker, app_config, get


class Explodes:
    """A sync policy that raises for every request it sees."""

    def on_request(self, request):
        raise RuntimeError(f"policy bug on {request.path!r}")


class Answers:
    """A sync policy that answers with the gateway's own response."""

    def on_request(self, request):
        from isekai.policy import Response

        return Response(401, (("www-authenticate", "Bearer"),), b"no")


@pytest.fixture
def worker(upstream):
    routes = """
  - {name: boom, match: {path: "/boom"}, upstream: app}
  - {name: locked, match: {path: "/locked"}, respond: {body: secret}}
"""
    with ThreadedWorker(app_config(upstream.port, routes=routes)) as tw:

        def attach(path: bytes, policy) -> None:
            route = tw.worker.state.router.match(b"", b"GET", path)[0]
            route.chain = (as_core(policy),)

        tw.call(attach, b"/boom", Explodes())
        tw.call(attach, b"/locked", Answers())
        yield tw


def pipelined(port: int, *paths: str) -> list[tuple[int, dict[str, str], bytes]]:
    with connect(port) as sock:
        sock.sendall(b"".join(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % p.encode() for p in paths))
        return read_responses(sock, len(paths))


def internal_errors(worker: ThreadedWorker, route: str) -> int:
    return worker.call(worker.worker.counters.snapshot)["slots"][route]["internal_errors"]


def logged(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "isekai.core" and r.levelno >= logging.ERROR]


def test_internal_error_raising_policy_first_of_three_pipelined(worker, caplog):
    caplog.set_level(logging.ERROR, logger="isekai.core")
    answers = pipelined(worker.port, "/boom", "/app/echo/2", "/app/echo/3")
    assert [status for status, _, _ in answers] == [500, 200, 200]
    _, headers, body = answers[0]
    error = json_body(body)
    assert error == {"success": False, "error": "internal error", "request_id": error["request_id"]}
    assert headers["x-request-id"] == error["request_id"]
    assert [json_body(b)["target"] for _, _, b in answers[1:]] == ["/echo/2", "/echo/3"]
    records = logged(caplog)
    assert len(records) == 1
    message = records[0].getMessage()
    assert error["request_id"] in message and "route boom, policy Explodes" in message
    assert "policy bug" in message
    assert internal_errors(worker, "boom") == 1


def test_internal_error_in_request_started_by_the_upstream_response(worker, caplog):
    # /boom is started when the /app response before it completes, inside the upstream
    # parser's callback: it must still be answered, and the one after it too.
    caplog.set_level(logging.ERROR, logger="isekai.core")
    answers = pipelined(worker.port, "/app/echo/1", "/boom", "/app/echo/3")
    assert [status for status, _, _ in answers] == [200, 500, 200]
    assert json_body(answers[1][2])["success"] is False
    assert len(logged(caplog)) == 1
    assert internal_errors(worker, "boom") == 1
    assert get(worker.port, "/app/echo")[0] == 200  # the worker goes on


def test_internal_error_policy_answer_uses_the_gateway_serialiser(worker):
    with connect(worker.port) as sock:
        sock.sendall(b"GET /locked HTTP/1.1\r\nHost: t\r\nX-Request-ID: r-7\r\n\r\n")
        [(status, headers, body)] = read_responses(sock, 1)
    assert (status, body) == (401, b"no")
    assert headers["www-authenticate"] == "Bearer"
    assert headers["content-length"] == "2" and headers["x-request-id"] == "r-7"
    assert internal_errors(worker, "locked") == 0
