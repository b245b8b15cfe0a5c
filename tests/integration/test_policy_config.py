"""Policies as configured: `policies:`, `routes[].policies` (names and inline items),
`listeners[].policies`, `preserve_host`, and instances that keep their state across reloads and
admin-API changes (a `fault` policy counting), through real sockets to a recording upstream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

import pytest

from isekai import PolicyFamily, Response, register, setting
from isekai.config.changes import ConfigIndex
from isekai.config.loader import load_config_text
from isekai.config.policies import unregister_family
from tests.support.client import json_body, request
from tests.support.worker import ThreadedWorker


def config_text(port: int, extra_routes: str = "", policies: str = "") -> str:
    return f"""
listeners: [{{name: public, bind: "127.0.0.1:0", policies: [tag]}}]
upstreams:
  app: {{targets: ["127.0.0.1:{port}"]}}
policies:
  tag: {{type: headers, request: {{set: {{X-Gateway: isekai}}}},
         response: {{set: {{X-Served-By: isekai}}}}}}
  chaos: {{type: fault, abort: {{status: 503, percent: 100}}, when_header: X-Chaos}}
{policies}
routes:
  - {{name: api, match: {{path: "/api/*"}}, upstream: app, strip_prefix: /api,
      policies: [chaos], preserve_host: true}}
  - {{name: plain, match: {{path: "/plain/*"}}, upstream: app, strip_prefix: /plain}}
  - {{name: slow, match: {{path: "/slow/*"}}, upstream: app, strip_prefix: /slow,
      policies: [{{type: fault, delay: {{duration: 200ms, percent: 100}}}}]}}
{extra_routes}
"""


def get(port, path, headers=b""):
    return request(port, b"GET %s HTTP/1.1\r\nHost: front.example\r\n%s\r\n" % (path, headers))


def sent_headers(upstream):
    return {k.lower(): v for k, v in upstream.requests[-1]["headers"]}


def chaos(tw):
    return tw.call(lambda: tw.worker.policies.instances()["chaos"].target)


def test_policy_config_listener_and_route_policies_from_yaml(upstream):
    with ThreadedWorker(config_text(upstream.port)) as tw:
        status, headers, _ = get(tw.port, b"/plain/echo")
        assert status == 200 and headers["x-served-by"] == "isekai"
        assert sent_headers(upstream)["x-gateway"] == "isekai"
        before = len(upstream.requests)
        status, headers, body = get(tw.port, b"/api/echo", b"X-Chaos: 1\r\n")
        assert status == 503 and json_body(body)["error"] == "fault injected"
        assert headers["x-served-by"] == "isekai"  # the listener's response phase saw it
        assert len(upstream.requests) == before
        assert get(tw.port, b"/api/echo")[0] == 200


def test_policy_config_preserve_host(upstream):
    with ThreadedWorker(config_text(upstream.port)) as tw:
        get(tw.port, b"/api/echo")
        assert sent_headers(upstream)["host"] == "front.example"
        get(tw.port, b"/plain/echo")
        assert sent_headers(upstream)["host"] == f"127.0.0.1:{upstream.port}"


def test_policy_config_inline_async_fault_delays(upstream):
    with ThreadedWorker(config_text(upstream.port)) as tw:
        loop_time = tw.loop.time
        started = loop_time()
        assert get(tw.port, b"/slow/echo")[0] == 200
        assert loop_time() - started >= 0.2


def test_policy_config_state_survives_reload_and_admin_changes(upstream):
    text = config_text(upstream.port)
    with ThreadedWorker(text) as tw:
        for _ in range(3):
            assert get(tw.port, b"/api/echo", b"X-Chaos: 1\r\n")[0] == 503
        first = chaos(tw)
        assert first.aborted == 3
        # a reload (SIGHUP path) of the same file with another route added
        reloaded = load_config_text(
            config_text(
                upstream.port, '  - {name: more, match: {path: "/more"}, respond: {body: m}}'
            )
        )
        tw.call(tw.worker.swap, reloaded)
        assert chaos(tw) is first
        assert get(tw.port, b"/api/echo", b"X-Chaos: 1\r\n")[0] == 503
        assert first.aborted == 4
        # admin API changes: a route using chaos replaced, another policy edited
        index = ConfigIndex(tw.worker.snapshot.config)
        route = {
            "name": "api",
            "match": {"path": "/api/*"},
            "upstream": "app",
            "strip_prefix": "/api",
            "policies": ["chaos", "tag"],
        }
        changes = [
            index.prepare("route", "api", route),
            index.prepare("policy", "tag", {"type": "headers", "request": {"set": {"X-B": "2"}}}),
        ]
        index.commit(changes)
        tw.call(tw.worker.apply_changes, changes)
        assert chaos(tw) is first
        status, headers, _ = get(tw.port, b"/api/echo", b"X-Chaos: 1\r\n")
        assert status == 503 and first.aborted == 5
        # chaos itself changed: a new instance, the old one closed
        change = index.prepare(
            "policy", "chaos", {"type": "fault", "abort": {"status": 418}, "when_header": "X-C"}
        )
        index.commit([change])
        tw.call(tw.worker.apply_changes, [change])
        assert chaos(tw) is not first
        assert get(tw.port, b"/api/echo", b"X-C: 1\r\n")[0] == 418
        assert chaos(tw).aborted == 1 and first.aborted == 5


@dataclass(frozen=True, slots=True)
class TeapotConfig:
    family: ClassVar[str] = "teapot"
    fail: bool = setting("bool", "Raise instead of answering.", default=False)
    wait: float = setting("duration", "Sleep this long first.", default=0.0, minimum=0)


class Teapot:
    def __init__(self, config):
        self.config = config

    async def on_request(self, req):
        await asyncio.sleep(self.config.wait)
        if self.config.fail:
            raise RuntimeError("teapot broke")
        return Response(418, body=b"short and stout")


@pytest.fixture
def teapot():
    register(PolicyFamily("teapot", TeapotConfig, Teapot))
    yield
    unregister_family("teapot")


def test_policy_config_registered_family_raising_and_deadline(upstream, teapot):
    routes = """
  - {name: tea, match: {path: /tea}, respond: {body: x}, policies: [{type: teapot}]}
  - {name: broken, match: {path: /broken}, respond: {body: x},
     policies: [{type: teapot, fail: true}]}
  - {name: late, match: {path: /late}, respond: {body: x},
     policies: [{type: teapot, wait: 5s, deadline: 100ms}]}
"""
    with ThreadedWorker(config_text(upstream.port, routes)) as tw:
        status, _, body = get(tw.port, b"/tea")
        assert (status, body) == (418, b"short and stout")
        status, _, body = get(tw.port, b"/broken")
        assert status == 500 and json_body(body)["error"] == "internal error"
        status, _, body = get(tw.port, b"/late")
        assert status == 503 and "did not finish in time" in json_body(body)["error"]
        counts = tw.call(tw.worker.counters.snapshot)["policies"]
        assert counts["routes.broken.policies[0]"]["errors"] == 1
        assert counts["routes.late.policies[0]"]["timeouts"] == 1
        assert counts["routes.tea.policies[0]"]["answers"] == 1


def test_policy_config_listener_policies_cover_unrouted_requests(upstream):
    text = (
        config_text(upstream.port)
        .replace("policies: [tag]}]", "policies: [tag, no_local]}]")
        .replace(
            "policies:\n", "policies:\n  no_local: {type: ip_filter, deny: [127.0.0.0/8]}\n", 1
        )
    )
    with ThreadedWorker(text) as tw:
        for path, method in ((b"/nowhere", b"GET"), (b"/api/x", b"GET"), (b"/plain/x", b"GET")):
            raw = b"%s %s HTTP/1.1\r\nHost: h\r\n\r\n" % (method, path)
            status, headers, body = request(tw.port, raw)
            assert status == 403 and json_body(body)["policy"] == "ip_filter"
    with ThreadedWorker(config_text(upstream.port)) as tw:
        status, headers, _ = get(tw.port, b"/nowhere")
        assert status == 404 and headers["x-served-by"] == "isekai"  # the listener's response phase


def test_policy_config_absolute_form_authority_is_checked_like_host(upstream):
    root = '  - {name: root, match: {path: "/"}, respond: {body: root}}'
    with ThreadedWorker(config_text(upstream.port, root)) as tw:
        status, _, body = request(tw.port, b"GET http://x.example?q=1 HTTP/1.1\r\nHost: y\r\n\r\n")
        assert (status, body) == (200, b"root")
        before = len(upstream.requests)
        status, _, _ = request(
            tw.port,
            b"GET http://u:p@evil.example,other?/api/echo HTTP/1.1\r\nHost: good.example\r\n\r\n",
        )
        assert status == 400 and len(upstream.requests) == before
        status, _, _ = request(
            tw.port, b"GET http://front.example/api/echo HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status == 200 and sent_headers(upstream)["host"] == "front.example"
        # an empty authority is refused; one that ends at the query is a host and path "/"
        status, _, _ = request(tw.port, b"GET http:///api/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 400
        status, _, _ = request(
            tw.port, b"GET http://[::1]:8080/api/echo HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status == 200 and sent_headers(upstream)["host"] == "[::1]:8080"


def test_policy_config_reload_changes_listener_policies(upstream):
    with ThreadedWorker(config_text(upstream.port)) as tw:
        assert get(tw.port, b"/plain/echo")[1]["x-served-by"] == "isekai"
        changed = config_text(upstream.port).replace("policies: [tag]}]", "policies: []}]")
        tw.call(tw.worker.swap, load_config_text(changed))
        status, headers, _ = get(tw.port, b"/plain/echo")
        assert status == 200 and "x-served-by" not in headers
        # the instance no chain holds any more was dropped
        assert "tag" not in tw.call(tw.worker.policies.instances)


def test_policy_config_refusals_carry_the_request_id_like_every_gateway_error(upstream):
    with ThreadedWorker(config_text(upstream.port)) as tw:
        status, headers, body = get(tw.port, b"/api/echo", b"X-Chaos: 1\r\n")
        assert status == 503
        assert json_body(body)["request_id"] == headers["x-request-id"]
        quoted = b'X-Chaos: 1\r\nX-Request-ID: a"b\\c\r\n'
        status, headers, body = get(tw.port, b"/api/echo", quoted)
        assert status == 503 and json_body(body)["request_id"] == 'a"b\\c'
