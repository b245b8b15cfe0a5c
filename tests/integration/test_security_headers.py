"""The ``security_headers`` policy through a real gateway: presets' exact values on proxied
responses (the upstream's own values replaced, or kept with ``override_upstream: false``) and
on answers the gateway makes itself (404, another policy's refusal, a ``respond`` route), per
route overrides and the rule for two of them in one chain."""

from __future__ import annotations

import http.client

import pytest

from tests.support.gateway import start_from_yaml
from tests.support.raw_upstream import RawUpstream

UPSTREAM_REPLY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 2\r\n"
    b"x-frame-options: SAMEORIGIN\r\ncontent-security-policy: default-src *\r\n"
    b"x-upstream: yes\r\n\r\nok"
)

STRICT = {
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "content-security-policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "permissions-policy": (
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), "
        "microphone=(), payment=(), usb=()"
    ),
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
MODERATE = {
    "strict-transport-security": "max-age=31536000",
    "content-security-policy": "frame-ancestors 'self'",
    "x-frame-options": "SAMEORIGIN",
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "permissions-policy": "camera=(), geolocation=(), microphone=()",
    "cross-origin-opener-policy": "same-origin-allow-popups",
}
ALL_NAMES = {*STRICT, *MODERATE, "cross-origin-embedder-policy"}


def config_text(port: int) -> str:
    return f"""
listeners:
  - {{name: public, bind: "127.0.0.1:0"}}
  - {{name: edge, bind: "127.0.0.1:0", policies: [harden]}}
upstreams: {{app: {{targets: ["127.0.0.1:{port}"]}}}}
policies:
  harden: {{type: security_headers, preset: strict}}
  web: {{type: security_headers, preset: moderate}}
  login_required: {{type: fault, abort: {{status: 401}}}}
routes:
  - {{name: strict, match: {{path: "/strict/*"}}, upstream: app, policies: [harden]}}
  - {{name: moderate, match: {{path: "/moderate/*"}}, upstream: app, policies: [web]}}
  - name: keep
    match: {{path: "/keep/*"}}
    upstream: app
    policies: [{{type: security_headers, preset: strict, override_upstream: false}}]
  - name: own
    match: {{path: "/own/*"}}
    upstream: app
    policies:
      - type: security_headers
        preset: strict
        csp: "default-src 'self'; img-src https://img.example.com"
        hsts: {{max_age: 365d, include_subdomains: true, preload: true}}
        referrer_policy: [no-referrer, strict-origin-when-cross-origin]
        cross_origin_embedder_policy: require-corp
        permissions_policy: false
  - name: two
    match: {{path: "/two/*"}}
    upstream: app
    policies: [harden, {{type: security_headers, preset: none, csp: "default-src 'self'"}}]
  - {{name: refused, match: {{path: "/refused/*"}}, upstream: app,
      policies: [harden, login_required]}}
  - {{name: direct, match: {{path: "/direct"}}, respond: {{status: 200, body: "hi"}},
      policies: [harden]}}
  - {{name: plain, match: {{path: "/plain/*"}}, upstream: app}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with RawUpstream(UPSTREAM_REPLY) as up:
        gw = start_from_yaml(tmp_path_factory.mktemp("sechead"), config_text(up.port))
        try:
            yield gw
        finally:
            gw.stop()


def get(gw, path: str, listener: str = "public") -> tuple[int, dict[str, list[str]]]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.ports[listener], timeout=15)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        fields: dict[str, list[str]] = {}
        for name, value in resp.getheaders():
            fields.setdefault(name.lower(), []).append(value)
    finally:
        conn.close()
    return resp.status, fields


def security(fields: dict[str, list[str]]) -> dict[str, str]:
    """The security fields of a response (each must be there once)."""
    found = {}
    for name in ALL_NAMES:
        if name in fields:
            assert len(fields[name]) == 1, (name, fields[name])
            found[name] = fields[name][0]
    return found


def test_security_headers_strict_preset_replaces_the_upstreams(gateway):
    status, fields = get(gateway, "/strict/a")
    assert status == 200 and fields["x-upstream"] == ["yes"]
    assert security(fields) == STRICT


def test_security_headers_moderate_preset_values(gateway):
    status, fields = get(gateway, "/moderate/a")
    assert status == 200
    assert security(fields) == MODERATE


def test_security_headers_keep_the_upstreams_own_values(gateway):
    status, fields = get(gateway, "/keep/a")
    assert status == 200
    expected = {
        **STRICT,
        "x-frame-options": "SAMEORIGIN",
        "content-security-policy": "default-src *",
    }
    assert security(fields) == expected


def test_security_headers_per_route_override(gateway):
    status, fields = get(gateway, "/own/a")
    assert status == 200
    expected = {
        **STRICT,
        "content-security-policy": "default-src 'self'; img-src https://img.example.com",
        "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
        "referrer-policy": "no-referrer, strict-origin-when-cross-origin",
        "cross-origin-embedder-policy": "require-corp",
    }
    del expected["permissions-policy"]
    assert security(fields) == expected


def test_security_headers_two_in_one_chain_the_earlier_has_the_last_word(gateway):
    # response phases run last policy first: `harden` (first in the list) writes after
    status, fields = get(gateway, "/two/a")
    assert status == 200
    assert security(fields) == STRICT


def test_security_headers_on_answers_the_gateway_makes(gateway):
    status, fields = get(gateway, "/direct")
    assert status == 200 and security(fields) == STRICT
    status, fields = get(gateway, "/refused/a")  # another policy's 401, later in the chain
    assert status == 401 and security(fields) == STRICT
    assert fields["content-type"] == ["application/json"]
    status, fields = get(gateway, "/nowhere", listener="edge")  # a listener's policy: 404 too
    assert status == 404 and security(fields) == STRICT
    status, fields = get(gateway, "/strict/a", listener="edge")
    assert status == 200 and security(fields) == STRICT


def test_security_headers_only_where_a_policy_is(gateway):
    status, fields = get(gateway, "/plain/a")
    assert status == 200
    assert security(fields) == {
        "x-frame-options": "SAMEORIGIN",
        "content-security-policy": "default-src *",
    }
    status, fields = get(gateway, "/nowhere")
    assert status == 404 and security(fields) == {}
