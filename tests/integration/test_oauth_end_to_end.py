"""The admin side's OAuth2 authorization server and the data plane's token policies together,
through real sockets and one gateway process (2 workers): a client registered through the admin
API gets a token from ``/oauth/token``; a route with the ``jwt`` policy accepts it through the
server's JWKS (resolving the client's consumer, checking scopes); a route with the
``oauth2_introspection`` policy asks the server's ``/oauth/introspect`` and refuses the token
once it is revoked (RFC 7009)."""

from __future__ import annotations

import base64
import http.client
import json
import time
import urllib.parse

import pytest

from tests.integration.test_api_keys import ADMIN_ENV, AdminClient, call, upstream_saw
from tests.support.gateway import Gateway, wait_for
from tests.support.observe import free_port


def gateway_yaml(upstream_port: int, admin_port: int, store: str) -> str:
    issuer = f"http://127.0.0.1:{admin_port}"
    return f"""
workers: 2
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
admin:
  bind: "127.0.0.1:{admin_port}"
  auth: {{jwt_secret: "oauth-e2e-secret-oauth-e2e-secret-0123"}}
  oauth: {{enabled: true, issuer: "{issuer}", audience: orders-api, access_token_ttl: 10m}}
store: {{url: "{store}"}}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
consumers:
  - {{name: billing, tier: premium}}
policies:
  orders_read:
    type: jwt
    keys: [{{jwks_url: "{issuer}/oauth/jwks.json"}}]
    issuer: "{issuer}"
    audience: orders-api
    consumer_claim: consumer
    require: {{scopes: ["orders:read"]}}
  orders_write:
    type: jwt
    keys: [{{jwks_url: "{issuer}/oauth/jwks.json"}}]
    issuer: "{issuer}"
    audience: orders-api
    consumer_claim: consumer
    require: {{scopes: ["orders:write"]}}
  introspected:
    type: oauth2_introspection
    introspection_url: "{issuer}/oauth/introspect"
    client_id: "${{E2E_INTROSPECT_ID}}"
    client_secret: "${{E2E_INTROSPECT_SECRET}}"
    cache_ttl: 1s
    consumer_claim: consumer
routes:
  - {{name: read, match: {{path: /orders}}, upstream: app, policies: [orders_read]}}
  - {{name: write, match: {{path: /orders/new}}, upstream: app, policies: [orders_write]}}
  - {{name: checked, match: {{path: /checked}}, upstream: app, policies: [introspected]}}
"""


def token_request(admin_port: int, client_id: str, secret: str, **form) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    try:
        conn.request(
            "POST",
            "/oauth/token",
            body=urllib.parse.urlencode(form),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def register(admin: AdminClient, **body) -> dict:
    status, answer, _ = admin.call("POST", "/api/oauth/clients", body)
    assert status == 201, answer
    return answer["data"]


@pytest.fixture
def stack(tmp_path, upstream):
    """A gateway with the authorization server on, a registered introspecting client (its
    credentials reach the introspection policy through the environment) and a client for
    the billing consumer."""
    admin_port = free_port()
    store = f"sqlite:///{tmp_path / 'store.db'}"
    path = tmp_path / "gw.yaml"
    # first start: register the client the introspection policy authenticates as
    path.write_text(gateway_yaml(upstream.port, admin_port, store))
    env = dict(ADMIN_ENV, E2E_INTROSPECT_ID="pending", E2E_INTROSPECT_SECRET="pending")
    gw = Gateway(path, env=env, startup_timeout=30)
    try:
        admin = AdminClient(gw)
        checker = register(admin, name="gateway introspection", scopes=[])
        billing = register(
            admin,
            name="billing service",
            scopes=["orders:read", "orders:write"],
            grant_types=["client_credentials", "refresh_token"],
            consumer="billing",
        )
    finally:
        gw.stop()
    env = dict(
        ADMIN_ENV,
        E2E_INTROSPECT_ID=checker["client_id"],
        E2E_INTROSPECT_SECRET=checker["client_secret"],
    )
    gw = Gateway(path, env=env, startup_timeout=30)
    try:
        yield gw, AdminClient(gw), admin_port, billing
    finally:
        gw.stop()


def test_tokens_of_the_admin_authorization_server_open_jwt_routes(stack):
    gw, _, admin_port, billing = stack
    status, issued = token_request(
        admin_port,
        billing["client_id"],
        billing["client_secret"],
        grant_type="client_credentials",
        scope="orders:read",
    )
    assert status == 200, issued
    bearer = {"Authorization": f"Bearer {issued['access_token']}"}
    status, _, body = call(gw.port, "/orders", bearer)
    assert status == 200, body
    _, seen = upstream_saw(body)
    assert seen["x-consumer-id"] == ["billing"]
    assert seen["authorization"] == [bearer["Authorization"]]  # hide_credentials: false
    # the token's scope does not cover the write route: valid token, not allowed
    status, headers, body = call(gw.port, "/orders/new", bearer)
    assert status == 403, body
    assert 'error="insufficient_scope"' in headers["www-authenticate"]
    # a token asking for both scopes opens both
    status, issued = token_request(
        admin_port,
        billing["client_id"],
        billing["client_secret"],
        grant_type="client_credentials",
        scope="orders:read orders:write",
    )
    assert status == 200
    both = {"Authorization": f"Bearer {issued['access_token']}"}
    assert call(gw.port, "/orders/new", both)[0] == 200
    # a token signed by anyone else is refused
    forged = issued["access_token"].rsplit(".", 1)[0] + ".AAAA"
    status, headers, _ = call(gw.port, "/orders", {"Authorization": f"Bearer {forged}"})
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]


def test_introspection_policy_follows_revocation_at_the_admin_server(stack):
    gw, _, admin_port, billing = stack
    status, issued = token_request(
        admin_port,
        billing["client_id"],
        billing["client_secret"],
        grant_type="client_credentials",
        scope="orders:read",
    )
    assert status == 200, issued
    token = issued["access_token"]
    bearer = {"Authorization": f"Bearer {token}"}
    status, _, body = call(gw.port, "/checked", bearer)
    assert status == 200, body
    assert upstream_saw(body)[1]["x-consumer-id"] == ["billing"]
    # revoke it (RFC 7009): introspection says inactive; past the 1 s cache the route refuses
    conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=10)
    basic = base64.b64encode(f"{billing['client_id']}:{billing['client_secret']}".encode())
    conn.request(
        "POST",
        "/oauth/revoke",
        body=urllib.parse.urlencode({"token": token}),
        headers={
            "Authorization": f"Basic {basic.decode()}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert conn.getresponse().status == 200
    conn.close()
    started = time.monotonic()
    assert wait_for(lambda: call(gw.port, "/checked", bearer)[0] == 401, timeout=5, interval=0.1)
    assert time.monotonic() - started < 4
    status, _, _ = call(gw.port, "/checked", {"Authorization": "Bearer not-a-token"})
    assert status == 401
