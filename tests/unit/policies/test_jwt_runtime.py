"""jwt and oauth2_introspection inside a real worker (in this process, real sockets, a real
identity provider): what only the instances' counters can show — a repeat token is not verified
again, one JWKS fetcher per URL however many policies use it, a failed fetch keeps the keys,
keys not available yet is 503 — and an IPv6 client."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests.support.gateway import wait_for
from tests.support.identity_provider import INTROSPECTION_CLIENT, IdentityProvider
from tests.support.jwt_keys import ISSUER, claims, jwk, sign
from tests.support.upstream import Upstream
from tests.support.worker import ThreadedWorker


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def config_text(idp: str, upstream: int, *, ipv6: bool) -> str:
    listeners = '[{name: public, bind: "127.0.0.1:0"}'
    if ipv6:
        listeners += ', {name: v6, bind: "[::1]:0"}'
    listeners += "]"
    common = f'keys: [{{jwks_url: "{idp}/jwks.json"}}], issuer: "{ISSUER}", audience: api'
    return f"""
listeners: {listeners}
upstreams: {{app: {{targets: ["127.0.0.1:{upstream}"]}}}}
consumers: [{{name: acme}}]
policies:
  a: {{type: jwt, {common}}}
  b: {{type: jwt, {common}, require: {{roles: [admin]}}}}
  down: {{type: jwt, keys: [{{jwks_url: "{idp}/down/jwks.json"}}], keys_wait: 1s,
         jwks_min_refresh: 1s}}
  opaque: {{type: oauth2_introspection, introspection_url: "{idp}/introspect",
           client_id: {INTROSPECTION_CLIENT[0]}, client_secret: {INTROSPECTION_CLIENT[1]},
           cache_ttl: 1s}}
routes:
  - {{name: a, match: {{path: "/a/*"}}, upstream: app, policies: [a]}}
  - {{name: b, match: {{path: "/b/*"}}, upstream: app, policies: [b]}}
  - {{name: down, match: {{path: "/down/*"}}, upstream: app, policies: [down]}}
  - {{name: opaque, match: {{path: "/opaque/*"}}, upstream: app, policies: [opaque]}}
"""


@pytest.fixture(scope="module")
def world():
    with IdentityProvider() as idp, Upstream() as up:
        idp.jwks["/jwks.json"] = [jwk("rsa", "rsa1"), jwk("ec", "ec1")]
        idp.failing.add("/down/jwks.json")
        idp.jwks["/down/jwks.json"] = [jwk("rsa", "rsa1")]
        with ThreadedWorker(config_text(idp.url, up.port, ipv6=ipv6_available())) as tw:
            assert wait_for(lambda: idp.hits["/jwks.json"] >= 1, timeout=10)
            yield tw, idp, up


def target(tw, name):
    return tw.worker.policies.instances()[name].target


def send(port: int, path: str, token: str | None, host: str = "127.0.0.1"):
    c = http.client.HTTPConnection(host, port, timeout=15)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = c.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if body.startswith(b"{") else body
    finally:
        c.close()


def test_jwt_repeat_token_served_from_cache_not_verified_again(world):
    tw, _, _ = world
    policy = target(tw, "a")
    token = sign("rsa", claims(), "RS256", "rsa1")
    before = tw.call(lambda: (policy.verified, policy.cache.hits))
    assert send(tw.port, "/a/1", token)[0] == 200
    assert send(tw.port, "/a/2", token)[0] == 200
    assert send(tw.port, "/a/3", token)[0] == 200
    after = tw.call(lambda: (policy.verified, policy.cache.hits))
    assert after[0] - before[0] == 1  # verified once
    assert after[1] - before[1] == 2  # then two lookups
    stats = tw.call(tw.worker.stats_providers["jwt"])
    assert stats["verified"] >= 1 and stats["cache_hits"] >= 2


def test_jwt_rbac_refusal_cached_too(world):
    tw, _, _ = world
    policy = target(tw, "b")
    token = sign("ec", claims(roles=["viewer"]), "ES256", "ec1")
    before = tw.call(lambda: policy.verified)
    for _ in range(3):
        status, body = send(tw.port, "/b/x", token)
        assert status == 403 and "missing role admin" in body["error"]
    assert tw.call(lambda: policy.verified) - before == 1


def test_jwt_policies_on_one_jwks_url_share_one_fetcher(world):
    tw, idp, _ = world
    a, b = target(tw, "a"), target(tw, "b")
    assert a.key_sets[0][0] is b.key_sets[0][0]
    assert idp.hits["/jwks.json"] == 1  # fetched once at start for both
    rows = tw.call(tw.worker.stats_providers["jwks"])
    assert any(row["url"].endswith("/jwks.json") and row["ready"] for row in rows)


def test_jwt_keys_not_available_is_503_then_recovers(world):
    tw, idp, _ = world
    token = sign("rsa", claims(aud=None, iss=None), "RS256", "rsa1")
    status, body = send(tw.port, "/down/x", token)
    assert status == 503 and "keys not available" in body["error"]
    assert idp.hits["/down/jwks.json"] >= 1
    idp.failing.discard("/down/jwks.json")
    # the background retry (or this request's own fetch) brings the keys
    assert wait_for(lambda: send(tw.port, "/down/x", token)[0] == 200, timeout=10, interval=0.3)
    # the server fails again: the keys fetched stay in use
    idp.failing.add("/down/jwks.json")
    key_set = target(tw, "down").key_sets[0][0]
    assert tw.call(lambda: key_set.ready)
    time.sleep(1.1)
    fresh = sign("rsa", claims(aud=None, iss=None, n=1), "RS256", "rsa1")
    assert send(tw.port, "/down/x", fresh)[0] == 200
    status, body = send(tw.port, "/down/x", sign("rsa", claims(aud=None, iss=None), "RS256", "k2"))
    assert status == 401 and "unknown key id" in body["error"]
    assert tw.call(lambda: key_set.failures) >= 1


def test_introspection_cache_ttl_expires(world):
    tw, idp, _ = world
    idp.tokens["ttl-token"] = {"active": True, "client_id": "acme"}
    before = idp.hits["/introspect"]
    assert send(tw.port, "/opaque/x", "ttl-token")[0] == 200
    assert send(tw.port, "/opaque/x", "ttl-token")[0] == 200
    assert idp.hits["/introspect"] == before + 1
    policy = target(tw, "opaque")
    assert tw.call(lambda: policy.cache.hits) >= 1
    stats = tw.call(tw.worker.stats_providers["oauth2_introspection"])
    assert stats["calls"] >= 1 and stats["cache_hits"] >= 1
    time.sleep(1.1)  # cache_ttl: 1s
    idp.tokens["ttl-token"] = {"active": False}  # revoked meanwhile
    status, body = send(tw.port, "/opaque/x", "ttl-token")
    assert status == 401 and "not active" in body["error"]
    assert idp.hits["/introspect"] == before + 2


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
def test_jwt_over_ipv6(world):
    tw, _, up = world
    port = next(a[2] for a in tw.worker.addresses if ":" in a[1])
    token = sign("rsa", claims(), "RS256", "rsa1")
    assert send(port, "/a/x", token, host="::1")[0] == 200
    status, body = send(port, "/a/x", None, host="::1")
    assert status == 401 and body["error"] == "missing bearer token"
    assert up.requests[-1]["target"] == "/a/x"
