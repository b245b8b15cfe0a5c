"""The ``api_key`` policy through a real gateway in front of a real upstream: every accept and
refusal path (status, JSON error, challenge), the header and query forms, hide_credentials,
the identity headers sent upstream, IPv6 clients; keys made, rotated and revoked through the
admin API (shown once, stored hashed, effective on every worker within a second), and their
usage counts."""

from __future__ import annotations

import http.client
import json
import time

import pytest

PEPPER = "test-pepper-0123456789abcdef"
ACME_KEY = "acme-yaml-key-0123456789"
OLD_KEY = "expired-yaml-key-0123456789"
SOON_KEY = "future-yaml-key-0123456789"
BETA_KEY = "beta-yaml-key-0123456789"


def call(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One GET; (status, lower-case headers, body). Reuses ``conn`` when given."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        if own:
            conn.close()


def upstream_saw(body: bytes) -> tuple[str, dict[str, list[str]]]:
    """(target, headers by lower-case name) of the request the echo upstream answered."""
    record = json.loads(body)
    headers: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return record["target"], headers


def yaml_config(upstream_port: int, extra: str = "") -> str:
    future = time.time() + 3600
    return f"""
workers: 1
security: {{api_key_pepper: "{PEPPER}"}}
listeners:
  - {{name: public, bind: "127.0.0.1:0"}}
  - {{name: v6, bind: "[::1]:0"}}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
policies:
  keys: {{type: api_key}}
  keys_q: {{type: api_key, header: X-Key, query: api_key, realm: partners}}
  keys_shown: {{type: api_key, hide_credentials: false,
               upstream_headers: {{consumer: X-Who}}}}
consumers:
  - name: acme
    tier: premium
    tags: [partner]
    keys:
      - {{id: main, key: "{ACME_KEY}"}}
      - {{id: old, key: "{OLD_KEY}", expires_at: 1000}}
      - {{id: soon, key: "{SOON_KEY}", expires_at: {future}}}
  - name: beta
    keys: [{{id: b1, key: "{BETA_KEY}"}}]
  - {{name: nokeys}}
routes:
  - {{name: keyed, match: {{path: /k}}, upstream: app, policies: [keys]}}
  - {{name: query, match: {{path: /q}}, upstream: app, policies: [keys_q]}}
  - {{name: shown, match: {{path: /s}}, upstream: app, policies: [keys_shown]}}
  - {{name: open, match: {{path: /open}}, upstream: app}}
{extra}
"""


@pytest.fixture
def keyed(start_gateway, upstream):
    return start_gateway(yaml_config(upstream.port))


def check_refusal(status, headers, body, message_part: str, realm: str = "isekai") -> dict:
    assert status == 401, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["success"] is False
    assert error["policy"] == "api_key"
    assert message_part in error["error"]
    assert error["request_id"] == headers["x-request-id"]
    challenge = headers["www-authenticate"]
    assert challenge.startswith(f'ApiKey realm="{realm}"'), challenge
    return error


def test_api_keys_header_key_is_accepted_and_identity_goes_upstream(keyed):
    status, _, body = call(keyed.port, "/k?a=1", {"X-API-Key": ACME_KEY})
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert target == "/k?a=1"
    assert "x-api-key" not in seen  # hide_credentials (default)
    assert seen["x-consumer-id"] == ["acme"]
    # another consumer's key resolves to that consumer
    status, _, body = call(keyed.port, "/k", {"X-API-Key": BETA_KEY})
    assert status == 200
    assert upstream_saw(body)[1]["x-consumer-id"] == ["beta"]
    # a key that expires later works now
    assert call(keyed.port, "/k", {"X-API-Key": SOON_KEY})[0] == 200


def test_api_keys_client_sent_consumer_header_is_stripped(keyed):
    status, _, body = call(keyed.port, "/k", {"X-API-Key": BETA_KEY, "X-Consumer-ID": "acme"})
    assert status == 200
    assert upstream_saw(body)[1]["x-consumer-id"] == ["beta"]
    # also on a route without any credential policy: nobody can claim an identity
    status, _, body = call(keyed.port, "/open", {"X-Consumer-ID": "acme", "X-Who": "acme"})
    assert status == 200
    seen = upstream_saw(body)[1]
    assert "x-consumer-id" not in seen and "x-who" not in seen


def test_api_keys_missing_key_is_401_with_a_challenge(keyed):
    status, headers, body = call(keyed.port, "/k")
    check_refusal(status, headers, body, "an API key is required: send it in the X-API-Key header")
    assert headers["www-authenticate"] == 'ApiKey realm="isekai", header="X-API-Key"'
    # an empty header is no key
    status, headers, body = call(keyed.port, "/k", {"X-API-Key": ""})
    check_refusal(status, headers, body, "an API key is required")


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key-at-all-0000",  # unknown
        OLD_KEY,  # expired
        ACME_KEY + "x",  # almost
        ACME_KEY.upper(),
        "x" * 4000,  # long
        "\u00e9\u00e8",  # latin-1 bytes on the wire
        " ",
    ],
)
def test_api_keys_unknown_and_expired_keys_get_one_answer(keyed, key):
    status, headers, body = call(keyed.port, "/k", {"X-API-Key": key.encode("latin-1")})
    if key.strip() == "":
        check_refusal(status, headers, body, "an API key is required")
        return
    error = check_refusal(
        status, headers, body, "the API key is not valid (unknown, expired or revoked)"
    )
    assert error["error"] == "the API key is not valid (unknown, expired or revoked)"
    assert headers["www-authenticate"] == (
        'ApiKey realm="isekai", header="X-API-Key", error="invalid_key"'
    )


def test_api_keys_query_parameter_form_and_its_removal(keyed):
    # the configured header still works, and is removed
    status, _, body = call(keyed.port, "/q?x=1", {"X-Key": ACME_KEY})
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert target == "/q?x=1" and "x-key" not in seen
    # in the query: accepted, and the parameter is taken out (the others stay, in order)
    status, _, body = call(keyed.port, f"/q?x=1&api_key={ACME_KEY}&y=2")
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert target == "/q?x=1&y=2"
    assert seen["x-consumer-id"] == ["acme"]
    status, _, body = call(keyed.port, f"/q?api_key={BETA_KEY}")
    assert status == 200
    assert upstream_saw(body)[0] == "/q"
    # percent-encoded key
    encoded = ACME_KEY.replace("-", "%2D")
    assert call(keyed.port, f"/q?api_key={encoded}")[0] == 200
    # refusals name the query parameter and the realm
    status, headers, body = call(keyed.port, "/q?api_key=")
    check_refusal(
        status,
        headers,
        body,
        "send it in the X-Key header or the api_key query parameter",
        realm="partners",
    )
    assert headers["www-authenticate"] == (
        'ApiKey realm="partners", header="X-Key", query="api_key"'
    )
    status, headers, body = call(keyed.port, f"/q?api_key={OLD_KEY}")
    check_refusal(status, headers, body, "not valid", realm="partners")
    # the default policy does not read the query
    status, headers, body = call(keyed.port, f"/k?api_key={ACME_KEY}")
    check_refusal(status, headers, body, "an API key is required")


def test_api_keys_hide_credentials_false_passes_the_key_on(keyed):
    status, _, body = call(keyed.port, "/s", {"X-API-Key": ACME_KEY, "X-Who": "forged"})
    assert status == 200
    _, seen = upstream_saw(body)
    assert seen["x-api-key"] == [ACME_KEY]
    assert seen["x-who"] == ["acme"]  # the policy's own identity header, not the client's
    assert "x-consumer-id" not in seen


def test_api_keys_ipv6_client(keyed):
    port = keyed.ports["v6"]
    status, _, body = call(port, "/k", {"X-API-Key": ACME_KEY}, host="::1")
    assert status == 200, body
    assert upstream_saw(body)[1]["x-consumer-id"] == ["acme"]
    status, headers, body = call(port, "/k", {"X-API-Key": "nope-nope-nope-nope"}, host="::1")
    check_refusal(status, headers, body, "not valid")
    status, headers, body = call(port, "/k", host="::1")
    check_refusal(status, headers, body, "required")


def test_api_keys_refusals_are_counted_by_reason_in_metrics(start_gateway, upstream):
    from tests.support.observe import free_port, scrape, value

    metrics_port = free_port()
    extra = f"observability: {{metrics: {{bind: '127.0.0.1:{metrics_port}'}}}}"
    gw = start_gateway(yaml_config(upstream.port, extra))
    call(gw.port, "/k")
    call(gw.port, "/k", {"X-API-Key": "unknown-key-unknown-key"})
    call(gw.port, "/k", {"X-API-Key": "unknown-key-unknown-key-2"})
    for _ in range(3):
        call(gw.port, "/k", {"X-API-Key": OLD_KEY})
    assert call(gw.port, "/k", {"X-API-Key": ACME_KEY})[0] == 200
    samples = scrape(metrics_port)
    assert value(samples, "isekai_api_key_refusals_total", reason="missing") == 1
    assert value(samples, "isekai_api_key_refusals_total", reason="unknown") == 2
    assert value(samples, "isekai_api_key_refusals_total", reason="expired") == 3


def test_api_keys_a_bad_policy_is_a_located_config_error(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("policies:\n  keys: {type: api_key, query: 'a b'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "isekai", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "bad.yaml:2" in done.stderr + done.stdout
    assert "policies.keys.query: not a query parameter name" in done.stderr + done.stdout
