"""Consumers end to end, through real gateway processes and a real upstream: a credential
policy's `identify` puts the consumer in `X-Consumer-ID` (a client's own copy never reaches
the upstream, on any route), in the access log and the request log, and in the bounded
``isekai_consumer_requests_total`` counter; consumers made through the admin API reach every
worker, and every gateway on one PostgreSQL database, within about a second.

The credential family here is a tiny one of the test's own (``test_token``: the token is the
consumer's name), installed as a policy plugin on the gateway's path: the real families
(``jwt``, ``api_key``, ``hmac``) end in the same `identify`.
"""

from __future__ import annotations

import http.client
import json
import textwrap
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.support.gateway import REPO, Gateway, wait_for
from tests.support.observe import free_port, scrape

DEADLINE = 10.0  # seconds any wait below may take
ADMIN_ENV = {"ISEKAI_ADMIN_USERNAME": "root", "ISEKAI_ADMIN_PASSWORD": "consumers-password-1"}

PLUGIN = '''
"""A test credential family: the X-Test-Token header names the consumer (one of `accept`)."""

from dataclasses import dataclass
from typing import ClassVar

from isekai import PolicyFamily, item, setting
from isekai._core.policy import Answer
from isekai.config.consumers import Consumer, IdentityHeaders
from isekai.policies.identity import identify


@dataclass(frozen=True, slots=True)
class TestTokenConfig:
    family: ClassVar[str] = "test_token"

    accept: tuple[str, ...] = setting("list", "Names a token may carry.", item=item("name"))
    upstream_headers: IdentityHeaders = setting(
        "object", "Identity headers.", default_factory=IdentityHeaders, cls=IdentityHeaders
    )


class TestToken:
    def __init__(self, config):
        self.accept = frozenset(config.accept)
        self.headers = config.upstream_headers

    def on_request(self, req):
        token = req.header("x-test-token")
        if token not in self.accept:
            return Answer.error(401, "a known X-Test-Token is required", "test_token")
        identify(req, Consumer(token), credential="test_token", credential_id="t1",
                 claims={"sub": token, "plan": "gold"}, headers=self.headers)
        return None


family = PolicyFamily(type="test_token", config=TestTokenConfig, policy=TestToken)
'''


def install_plugin(directory: Path) -> dict[str, str]:
    """The family as an installed distribution on a path of its own; the env to find it."""
    directory.mkdir(exist_ok=True)
    (directory / "consumers_test_token.py").write_text(PLUGIN)
    info = directory / "consumers_test_token-1.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: consumers-test-token\nVersion: 1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[isekai.policies]\ntest_token = consumers_test_token:family\n"
    )
    return {**ADMIN_ENV, "PYTHONPATH": f"{REPO}:{directory}"}


def gateway_yaml(upstream_port: int, store_url: str, metrics_port: int, access: Path) -> str:
    return textwrap.dedent(
        f"""
        workers: 2
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        admin:
          bind: "127.0.0.1:0"
          auth: {{jwt_secret: "consumers-secret-consumers-secret"}}
          request_logs: {{enabled: true}}
        store: {{url: "{store_url}"}}
        observability:
          metrics: {{bind: "127.0.0.1:{metrics_port}"}}
          access_log: {{enabled: true, path: "{access}"}}
        consumers:
          - {{name: acme, tier: premium, tags: [partner]}}
        policies:
          tokens:
            type: test_token
            accept: [acme, globex, ghost]
            upstream_headers: {{claims: {{plan: X-Plan}}}}
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream_port}"]}}
        routes:
          - {{name: secure, match: {{path: "/secure/*"}}, upstream: app, policies: [tokens]}}
          - {{name: open, match: {{path: "/open/*"}}, upstream: app}}
        """
    )


class Admin:
    """A logged-in client of one gateway's admin API."""

    def __init__(self, gw: Gateway) -> None:
        found = gw.wait_for_log(r"admin API on http://(\S+):(\d+)", timeout=20)
        assert found, gw.output()
        self.base = f"http://{found.group(1)}:{found.group(2)}"
        login = {
            "username": ADMIN_ENV["ISEKAI_ADMIN_USERNAME"],
            "password": ADMIN_ENV["ISEKAI_ADMIN_PASSWORD"],
        }
        status, body = self.call("POST", "/api/auth/login", login, auth=False)
        assert status == 200, body
        self.token = body["data"]["token"]

    def call(self, method: str, path: str, body=None, auth: bool = True):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def send(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict]:
    """A GET on a new connection; the status and, from the echo upstream, what it saw."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if body.startswith(b"{") else {}
    finally:
        conn.close()


def seen(echo: dict, name: str) -> list[str]:
    return [value for key, value in echo.get("headers", ()) if key.lower() == name.lower()]


def counted(metrics_port: int, consumer: str, route: str, status_class: str) -> float:
    labels = (("consumer", consumer), ("route", route), ("status_class", status_class))
    return scrape(metrics_port).get(("isekai_consumer_requests_total", labels), 0.0)


def test_consumers_identity_reaches_upstream_logs_and_metrics(tmp_path, upstream):
    env = install_plugin(tmp_path / "plugin")
    metrics_port = free_port()
    access = tmp_path / "access.log"
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_yaml(upstream.port, f"sqlite:///{tmp_path}/s.db", metrics_port, access))
    gw = Gateway(path, env=env, startup_timeout=30)
    try:
        admin = Admin(gw)
        forged = {"X-Consumer-ID": "root", "X-Plan": "platinum"}
        # identified: the gateway's X-Consumer-ID and claim header, never the client's
        status, echo = send(gw.port, "/secure/echo", {"X-Test-Token": "acme", **forged})
        assert status == 200
        assert seen(echo, "X-Consumer-ID") == ["acme"] and seen(echo, "X-Plan") == ["gold"]
        # no credential: refused, and counted as anonymous
        status, _ = send(gw.port, "/secure/echo", forged)
        assert status == 401
        # a route without any policy: the forged identity is stripped all the same
        status, echo = send(gw.port, "/open/echo", forged)
        assert status == 200
        assert seen(echo, "X-Consumer-ID") == [] and seen(echo, "X-Plan") == []
        assert all(seen(r, "X-Consumer-ID") in ([], ["acme"]) for r in upstream.requests)

        # the access log line and the request-log row carry the consumer
        def access_lines() -> list[dict]:
            text = access.read_text() if access.exists() else ""
            return [json.loads(line) for line in text.splitlines()]

        assert wait_for(lambda: len(access_lines()) >= 3, timeout=DEADLINE), access_lines()
        by_status = {(line["route"], line["status"]): line for line in access_lines()}
        assert by_status["secure", 200]["consumer"] == "acme"
        assert by_status["secure", 401]["consumer"] == ""
        assert by_status["open", 200]["consumer"] == ""

        def logged(query: str) -> dict:
            return admin.call("GET", f"/api/logs?{query}")[1]["data"]

        assert wait_for(lambda: logged("consumer=acme")["total"] == 1, timeout=DEADLINE)
        row = logged("consumer=acme")["items"][0]
        assert (row["route"], row["status"], row["consumer"]) == ("secure", 200, "acme")
        # the 401 and the open route's request (rows reach the store on their own schedule)
        assert wait_for(lambda: logged("consumer=")["total"] == 2, timeout=DEADLINE)

        # bounded metrics: a configured consumer by name; an identity that is not a
        # configured consumer, and no identity, as ""
        assert send(gw.port, "/secure/echo", {"X-Test-Token": "globex"})[0] == 200
        assert wait_for(lambda: counted(metrics_port, "acme", "secure", "2xx") == 1, DEADLINE)
        assert counted(metrics_port, "", "secure", "4xx") == 1
        assert counted(metrics_port, "", "secure", "2xx") == 1  # globex: not a consumer yet
        samples = scrape(metrics_port)
        assert not any(
            name == "isekai_consumer_requests_total" and dict(labels)["route"] == "open"
            for name, labels in samples
        )

        # a consumer made through the API reaches every worker within about a second
        status, body = admin.call("POST", "/api/consumers", {"name": "globex", "tier": "free"})
        assert status == 201, body

        def every_worker_knows_globex() -> bool:
            # a batch on new connections (both workers take some) all counted by name
            anonymous = counted(metrics_port, "", "secure", "2xx")
            named = counted(metrics_port, "globex", "secure", "2xx")
            for _ in range(8):
                assert send(gw.port, "/secure/echo", {"X-Test-Token": "globex"})[0] == 200
            return (
                counted(metrics_port, "", "secure", "2xx") == anonymous
                and counted(metrics_port, "globex", "secure", "2xx") == named + 8
            )

        assert wait_for(every_worker_knows_globex, timeout=DEADLINE)
        # ghost is accepted by the policy but is no consumer: never a label of its own
        assert send(gw.port, "/secure/echo", {"X-Test-Token": "ghost"})[0] == 200
        samples = scrape(metrics_port)
        consumers = {
            dict(labels)["consumer"]
            for name, labels in samples
            if name == "isekai_consumer_requests_total"
        }
        assert consumers == {"", "acme", "globex"}
    finally:
        assert gw.stop() == 0


def test_consumers_metrics_policy_labels_by_ctx_consumer(tmp_path, upstream):
    env = install_plugin(tmp_path / "plugin")
    metrics_port = free_port()
    text = gateway_yaml(
        upstream.port, f"sqlite:///{tmp_path}/s.db", metrics_port, tmp_path / "a.log"
    ).replace(
        "policies:\n",
        "policies:\n"
        "  per_consumer:\n"
        "    type: metrics\n"
        "    counters:\n"
        "      - {name: app_calls_total, help: Calls, labels: {who: 'ctx:consumer'}}\n",
    )
    text = text.replace("policies: [tokens]", "policies: [tokens, per_consumer]")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    gw = Gateway(path, env=env, startup_timeout=30)
    try:
        for token in ("acme", "acme", "globex"):
            assert send(gw.port, "/secure/x", {"X-Test-Token": token})[0] == 200
        assert send(gw.port, "/secure/x", {})[0] == 401

        def value(who: str) -> float:
            return scrape(metrics_port).get(("app_calls_total", (("who", who),)), 0.0)

        assert wait_for(lambda: value("acme") == 2, timeout=DEADLINE), scrape(metrics_port)
        assert value("globex") == 1
    finally:
        assert gw.stop() == 0


def _postgres_url(require_service) -> str:
    return f"{require_service('postgres')}?schema=isekai_consumers_{uuid.uuid4().hex[:10]}"


def test_consumers_two_gateways_on_one_postgres_see_each_others_changes(
    tmp_path, upstream, require_service
):
    env = install_plugin(tmp_path / "plugin")
    url = _postgres_url(require_service)
    gateways: list[Gateway] = []
    ports = [free_port(), free_port()]
    try:
        for i, port in enumerate(ports):
            path = tmp_path / f"g{i}.yaml"
            path.write_text(gateway_yaml(upstream.port, url, port, tmp_path / f"a{i}.log"))
            gateways.append(Gateway(path, env=env, startup_timeout=30))
        first, second = Admin(gateways[0]), Admin(gateways[1])

        def counted_on(i: int, consumer: str) -> bool:
            assert send(gateways[i].port, "/secure/x", {"X-Test-Token": "globex"})[0] == 200
            return counted(ports[i], consumer, "secure", "2xx") >= 1

        assert counted_on(1, "") and counted(ports[1], "globex", "secure", "2xx") == 0
        status, body = first.call("POST", "/api/consumers", {"name": "globex", "tags": ["b"]})
        assert status == 201, body
        assert wait_for(lambda: counted_on(1, "globex"), timeout=3)
        status, body = second.call("GET", "/api/consumers/globex")
        assert status == 200 and body["data"]["spec"] == {"name": "globex", "tags": ["b"]}
        # and back: the second deletes it, the first stops counting it by name
        assert second.call("DELETE", "/api/consumers/globex")[0] == 200
        before = counted(ports[0], "", "secure", "2xx")

        def anonymous_again() -> bool:
            return counted_on(0, "") and counted(ports[0], "", "secure", "2xx") > before + 1

        assert wait_for(anonymous_again, timeout=3)
        assert first.call("GET", "/api/consumers/globex")[0] == 404
        # a YAML consumer is read-only on both
        assert first.call("DELETE", "/api/consumers/acme")[0] == 409
        assert second.call("PUT", "/api/consumers/acme", {"tier": "free"})[0] == 409
    finally:
        for gw in gateways:
            gw.stop()
