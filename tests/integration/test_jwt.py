"""The ``jwt`` and ``oauth2_introspection`` families through a real gateway process in front of
a real upstream, with a real identity provider (JWKS, OIDC discovery, RFC 7662 introspection)
started by the test: every accept and refusal path with its status and JSON body, the JWT
attacks, what the identity provider was asked (and what it never was), what reached the
upstream. The verified-token cache is proven in an in-process worker by its counters."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import Gateway, wait_for
from tests.support.identity_provider import INTROSPECTION_CLIENT, IdentityProvider
from tests.support.jwt_keys import (
    ISSUER,
    SECRET,
    b64,
    claims,
    hand_made,
    jwk,
    public_pem,
    sign,
)
from tests.support.upstream import Upstream

OIDC_PREFIX = "/tenant"


def policies(idp: str) -> str:
    jwks = f"{idp}/jwks.json"
    keys = (
        f'[{{jwks_url: "{jwks}"}}, {{secret: "${{JWT_SECRET}}", algorithms: [HS256], kid: local}},'
        " {public_key_file: keys/static.pem, algorithms: [RS256], kid: static}]"
    )
    common = f'keys: {keys}, issuer: "{ISSUER}", audience: api, leeway: 30s'
    return f"""
policies:
  jwt_users: {{type: jwt, {common}, consumer_claim: sub,
              upstream_headers: {{claims: {{email: X-User-Email, roles: X-User-Roles}}}}}}
  jwt_editors: {{type: jwt, {common}, require: {{roles: [admin, editor], match: any}}}}
  jwt_both: {{type: jwt, {common}, require: {{roles: [admin, editor], match: all}}}}
  jwt_scoped: {{type: jwt, {common}, require: {{scopes: [read, write]}}}}
  jwt_tenant: {{type: jwt, {common}, require: {{claims: {{tenant: [acme, globex]}}}}}}
  jwt_cookie: {{type: jwt, {common}, token: {{cookie: session}},
               hide_credentials: true}}
  jwt_query: {{type: jwt, {common}, token: {{query: access_token}},
              hide_credentials: true}}
  jwt_known: {{type: jwt, {common}, consumer_required: true}}
  jwt_count: {{type: jwt, keys: [{{jwks_url: "{idp}/count/jwks.json"}}],
              jwks_min_refresh: 3s, jwks_refresh: 10m}}
  jwt_rotate: {{type: jwt, keys: [{{jwks_url: "{idp}/rotate/jwks.json"}}], jwks_min_refresh: 1s}}
  jwt_down: {{type: jwt, keys: [{{jwks_url: "{idp}/down/jwks.json"}}],
             jwks_min_refresh: 30s, jwks_refresh: 10m}}
  jwt_oidc: {{type: jwt, issuer: "{idp}{OIDC_PREFIX}", discovery: true}}
  opaque: {{type: oauth2_introspection, introspection_url: "{idp}/introspect",
           client_id: {INTROSPECTION_CLIENT[0]}, client_secret: "${{INTROSPECTION_SECRET}}",
           cache_ttl: 60s, upstream_headers: {{claims: {{username: X-User}}}}}}
  opaque_scoped: {{type: oauth2_introspection, introspection_url: "{idp}/introspect",
                  client_id: {INTROSPECTION_CLIENT[0]}, client_secret: "${{INTROSPECTION_SECRET}}",
                  require: {{scopes: [admin]}}}}
  opaque_down: {{type: oauth2_introspection, introspection_url: "http://127.0.0.1:{closed_port()}/x",
                client_id: c, client_secret: s, timeout: 2s}}
"""


ROUTES = [
    ("users", "jwt_users"),
    ("editors", "jwt_editors"),
    ("both", "jwt_both"),
    ("scoped", "jwt_scoped"),
    ("tenant", "jwt_tenant"),
    ("cookie", "jwt_cookie"),
    ("query", "jwt_query"),
    ("known", "jwt_known"),
    ("count", "jwt_count"),
    ("rotate", "jwt_rotate"),
    ("down", "jwt_down"),
    ("oidc", "jwt_oidc"),
    ("opaque", "opaque"),
    ("opaque_scoped", "opaque_scoped"),
    ("opaque_down", "opaque_down"),
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_text(idp: str, upstream_port: int, bind: str = "127.0.0.1:0") -> str:
    lines = [
        f'listeners: [{{name: public, bind: "{bind}"}}]',
        f'upstreams: {{app: {{targets: ["127.0.0.1:{upstream_port}"]}}}}',
        "consumers:",
        "  - {name: acme, tier: premium, tags: [partner]}",
        policies(idp),
        "routes:",
        '  - {name: plain, match: {path: "/plain/*"}, upstream: app}',
    ]
    for name, policy in ROUTES:
        lines.append(
            f'  - {{name: {name}, match: {{path: "/{name}/*"}}, upstream: app,'
            f" policies: [{policy}]}}"
        )
    return "\n".join(lines) + "\nadmin: {enabled: false}\n"


def serve_keys(idp: IdentityProvider) -> None:
    idp.jwks["/jwks.json"] = [
        jwk("rsa", "rsa1"),
        jwk("ec", "ec1"),
        jwk("ed", "ed1"),
        jwk("rsa_ps", "ps1", alg="PS256"),
    ]
    idp.jwks["/count/jwks.json"] = [jwk("rsa", "rsa1")]
    idp.jwks["/rotate/jwks.json"] = [jwk("rsa", "rsa1")]
    idp.jwks[f"{OIDC_PREFIX}/jwks.json"] = [jwk("ec_oidc", "oidc1")]
    idp.discovery[OIDC_PREFIX] = {
        "issuer": f"{idp.url}{OIDC_PREFIX}",
        "jwks_uri": f"{idp.url}{OIDC_PREFIX}/jwks.json",
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder: Path = tmp_path_factory.mktemp("jwt")
    (folder / "keys").mkdir()
    (folder / "keys" / "static.pem").write_text(public_pem("rsa_static"))
    with IdentityProvider() as idp, Upstream() as up:
        serve_keys(idp)
        path = folder / "gateway.yaml"
        path.write_text(config_text(idp.url, up.port))
        env = {"JWT_SECRET": SECRET, "INTROSPECTION_SECRET": INTROSPECTION_CLIENT[1]}
        gw = Gateway(path, env=env)
        try:
            # the key sets are fetched in the background at start
            assert wait_for(lambda: idp.hits["/jwks.json"] >= 1, timeout=10)
            yield gw, up, idp
        finally:
            gw.stop()


def call(setup, path: str, headers: dict | None = None, host: str = "127.0.0.1"):
    """(status, lower-case headers, body JSON or bytes, the upstream's record or None)."""
    gw, up, _ = setup
    before = len(up.requests)
    c = http.client.HTTPConnection(host, gw.port, timeout=20)
    try:
        c.request("GET", path, headers=headers or {})
        resp = c.getresponse()
        raw = resp.read()
        fields = {name.lower(): value for name, value in resp.getheaders()}
    finally:
        c.close()
    seen = up.requests[before:]
    body = json.loads(raw) if fields.get("content-type") == "application/json" else raw
    return resp.status, fields, body, (seen[0] if seen else None)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upstream_fields(record) -> dict[str, str]:
    return {name.lower(): value for name, value in record["headers"]}


def refused(result, status: int, error: str | None, text: str) -> None:
    code, fields, body, record = result
    assert code == status, body
    assert record is None  # never reached the upstream
    assert body["success"] is False and text in body["error"], body
    assert body["request_id"] == fields["x-request-id"]
    challenge = fields.get("www-authenticate", "")
    if status in (401, 403):
        assert challenge.startswith('Bearer realm="isekai"'), challenge
        if error is None:
            assert "error=" not in challenge
        else:
            assert f'error="{error}"' in challenge, challenge


# -- accepted -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "alg", "kid"),
    [
        ("rsa", "RS256", "rsa1"),
        ("rsa", "RS512", "rsa1"),
        ("ec", "ES256", "ec1"),
        ("ed", "EdDSA", "ed1"),
        ("rsa_ps", "PS256", "ps1"),
        ("secret", "HS256", "local"),
        ("rsa_static", "RS256", "static"),
        ("rsa_static", "RS256", None),  # no kid: every key pinned to RS256 is tried
    ],
)
def test_jwt_accepts_each_algorithm_and_key_source(setup, kind, alg, kid):
    token = sign(kind, claims(email="a@acme.example", roles=["viewer"]), alg, kid)
    status, fields, _, record = call(setup, "/users/x", bearer(token))
    assert status == 200
    seen = upstream_fields(record)
    assert seen["x-consumer-id"] == "acme"
    assert seen["x-user-email"] == "a@acme.example"
    assert seen["x-user-roles"] == "viewer"
    assert seen["authorization"] == f"Bearer {token}"  # hide_credentials is off here


def test_jwt_client_identity_headers_are_stripped(setup):
    token = sign("rsa", claims(sub="nobody-configured"), "RS256", "rsa1")
    headers = {**bearer(token), "X-Consumer-ID": "acme", "X-User-Email": "forged"}
    status, _, _, record = call(setup, "/users/x", headers)
    assert status == 200
    seen = upstream_fields(record)
    # a valid token whose sub is no consumer: no consumer header at all, and never the client's
    assert "x-consumer-id" not in seen and "x-user-email" not in seen


def test_jwt_missing_token_is_401_without_error_code(setup):
    refused(call(setup, "/users/x"), 401, None, "missing bearer token")
    refused(call(setup, "/users/x", {"Authorization": "Basic dTpw"}), 401, None, "missing")


# -- refused: the attacks ------------------------------------------------------------------------


def test_jwt_alg_none_refused(setup):
    for alg in ("none", "None", "NONE"):
        token = hand_made({"alg": alg, "typ": "JWT"}, claims(), None)
        refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "algorithm")


def test_jwt_hs256_keyed_with_the_rsa_public_key_refused(setup):
    for kid in ("rsa1", "static", None):
        header = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
        pem = public_pem("rsa_static" if kid != "rsa1" else "rsa").encode()
        token = hand_made(header, claims(), pem)
        result = call(setup, "/users/x", bearer(token))
        refused(result, 401, "invalid_token", "invalid token")


def test_jwt_stripped_and_tampered_signatures_refused(setup):
    token = sign("rsa", claims(), "RS256", "rsa1")
    head, payload, _ = token.split(".")
    refused(call(setup, "/users/x", bearer(f"{head}.{payload}.")), 401, "invalid_token", "")
    refused(call(setup, "/users/x", bearer(f"{head}.{payload}")), 401, "invalid_token", "")
    forged = b64(json.dumps(claims(sub="admin", roles=["admin"])).encode())
    result = call(setup, "/users/x", bearer(f"{head}.{forged}.{token.split('.')[2]}"))
    refused(result, 401, "invalid_token", "signature verification failed")


@pytest.mark.parametrize(
    ("payload", "text"),
    [
        (claims(exp=int(time.time()) - 120), "token expired"),
        (claims(nbf=int(time.time()) + 600), "not yet valid"),
        (claims(iat=int(time.time()) + 600), "not yet valid"),
        (claims(aud="other"), "wrong audience"),
        (claims(aud=["x", "y"]), "wrong audience"),
        (claims(iss="https://evil.example.com/"), "wrong issuer"),
        (claims(exp=None), "missing claim exp"),
    ],
)
def test_jwt_claims_refused(setup, payload, text):
    token = sign("rsa", payload, "RS256", "rsa1")
    refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", text)


def test_jwt_leeway_accepts_a_token_just_expired(setup):
    token = sign("ec", claims(exp=int(time.time()) - 5), "ES256", "ec1")
    assert call(setup, "/users/x", bearer(token))[0] == 200


def test_jwt_audience_list_in_token(setup):
    token = sign("ec", claims(aud=["other", "api"]), "ES256", "ec1")
    assert call(setup, "/users/x", bearer(token))[0] == 200


def test_jwt_key_pinned_algorithm(setup):
    # the RSA key published with alg PS256 does not verify RS256, the EC key no RS256
    token = sign("rsa_ps", claims(), "RS256", "ps1")
    refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "not allowed")
    token = sign("rsa", claims(), "RS256", "ec1")
    refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "not allowed")


@pytest.mark.parametrize(
    "kid", ["../../etc/passwd", "' OR '1'='1", "x; DROP TABLE keys;--", "\u202e", "a" * 300]
)
def test_jwt_kid_injection_is_just_an_unknown_kid(setup, kid):
    token = sign("rsa", claims(), "RS256", kid)
    refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "unknown key id")


def test_jwt_jku_and_x5u_are_never_fetched(setup):
    _, _, idp = setup
    trap = f"{idp.url}/trap/jwks.json"
    idp.jwks["/trap/jwks.json"] = [jwk("ed_attacker", "attacker")]
    for field in ("jku", "x5u"):
        token = sign("ed_attacker", claims(), "EdDSA", "attacker", **{field: trap})
        refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "unknown key id")
        # a kid the gateway knows, with a jku to elsewhere: still the configured key only
        token = sign("ed_attacker", claims(), "EdDSA", "ed1", **{field: trap})
        refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "signature")
    assert idp.hits["/trap/jwks.json"] == 0


def test_jwt_oversized_token_refused_before_parsing(setup):
    token = sign("rsa", claims(pad="x" * 9000), "RS256", "rsa1")
    assert len(token) > 8192
    refused(call(setup, "/users/x", bearer(token)), 401, "invalid_token", "token too large")


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=300),
        st.lists(
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789-_=", max_size=60),
            min_size=1,
            max_size=5,
        ).map(".".join),
        st.builds(
            lambda h, p: b64(h.encode()) + "." + b64(p.encode()) + ".c2ln",
            st.text(max_size=80),
            st.text(max_size=80),
        ),
    )
)
def test_jwt_garbage_tokens_never_500(setup, token):
    status, fields, body, record = call(setup, "/users/x", bearer(token))
    assert status == 401, body
    assert record is None
    assert body["success"] is False


def test_jwt_json_header_oddities_never_500(setup):
    payload = claims()
    for header in (
        {"alg": "RS256", "kid": 5},
        {"alg": ["RS256"]},
        {"alg": "RS256", "kid": "rsa1", "crit": ["exp"]},
        {"alg": "HS256", "kid": {"$ne": 1}},
        {},
    ):
        token = hand_made(header, payload, b"k" * 32)
        status, _, body, _ = call(setup, "/users/x", bearer(token))
        assert status == 401, (header, body)
    for text in ("[]", "1", '"s"', "[" * 3000):
        token = b64(text.encode()) + "." + b64(b"{}") + ".c2ln"
        assert call(setup, "/users/x", bearer(token))[0] == 401


# -- unknown kid: one refetch per interval --------------------------------------------------------


def test_jwt_unknown_kid_refetches_once_per_interval(setup):
    _, _, idp = setup
    assert wait_for(lambda: idp.hits["/count/jwks.json"] >= 1, timeout=10)
    # jwks_min_refresh (3s) counts from the fetch at start too: let it pass once
    time.sleep(3.2)
    before = idp.hits["/count/jwks.json"]
    token = sign("rsa", claims(), "RS256", "rotated-in")
    refused(call(setup, "/count/x", bearer(token)), 401, "invalid_token", "unknown key id")
    assert idp.hits["/count/jwks.json"] == before + 1
    # a second unknown kid within jwks_min_refresh (3s; these calls take milliseconds):
    # answered without fetching
    token = sign("rsa", claims(), "RS256", "another")
    refused(call(setup, "/count/x", bearer(token)), 401, "invalid_token", "unknown key id")
    assert idp.hits["/count/jwks.json"] == before + 1
    # the known key still works, without a fetch
    assert call(setup, "/count/x", bearer(sign("rsa", claims(), "RS256", "rsa1")))[0] == 200
    assert idp.hits["/count/jwks.json"] == before + 1


def test_jwt_rotated_in_key_found_by_the_refetch_and_old_cache_dropped(setup):
    _, _, idp = setup
    time.sleep(1.1)  # past jwks_min_refresh (1s) since the fetch at start
    old = sign("rsa", claims(), "RS256", "rsa1")
    assert call(setup, "/rotate/x", bearer(old))[0] == 200
    idp.jwks["/rotate/jwks.json"] = [jwk("ec_new", "ec-new")]  # rsa1 rotated out
    before = idp.hits["/rotate/jwks.json"]
    token = sign("ec_new", claims(), "ES256", "ec-new")
    status, _, body, record = call(setup, "/rotate/x", bearer(token))
    assert status == 200, body
    assert upstream_fields(record)["x-consumer-id"] == "acme"
    assert idp.hits["/rotate/jwks.json"] == before + 1
    # the key set changed: the token verified with the removed key is not served from cache
    refused(call(setup, "/rotate/x", bearer(old)), 401, "invalid_token", "unknown key id")


# -- RBAC -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "extra", "status", "text"),
    [
        ("editors", {"roles": ["editor"]}, 200, ""),
        ("editors", {"roles": "admin other"}, 200, ""),
        ("editors", {"roles": ["viewer"]}, 403, "needs one of: role admin, role editor"),
        ("editors", {}, 403, "needs one of"),
        ("both", {"roles": ["admin", "editor"]}, 200, ""),
        ("both", {"roles": ["admin"]}, 403, "missing role editor"),
        ("scoped", {"scope": "read write extra"}, 200, ""),
        ("scoped", {"scope": ["read", "write"]}, 200, ""),
        ("scoped", {"scope": "read"}, 403, "missing scope write"),
        ("tenant", {"tenant": "globex"}, 200, ""),
        ("tenant", {"tenant": ["x", "acme"]}, 200, ""),
        ("tenant", {"tenant": "initech"}, 403, "missing claim tenant"),
        ("tenant", {}, 403, "missing claim tenant"),
    ],
)
def test_jwt_rbac(setup, route, extra, status, text):
    token = sign("rsa", claims(**extra), "RS256", "rsa1")
    result = call(setup, f"/{route}/x", bearer(token))
    if status == 200:
        assert result[0] == 200, result[2]
        assert result[3] is not None
    else:
        refused(result, 403, "insufficient_scope", text)


def test_jwt_consumer_required(setup):
    assert call(setup, "/known/x", bearer(sign("rsa", claims(), "RS256", "rsa1")))[0] == 200
    token = sign("rsa", claims(sub="stranger"), "RS256", "rsa1")
    refused(call(setup, "/known/x", bearer(token)), 403, "insufficient_scope", "no consumer")


# -- token sources --------------------------------------------------------------------------------


def test_jwt_token_from_cookie_hidden_upstream(setup):
    token = sign("rsa", claims(), "RS256", "rsa1")
    cookie = f"theme=dark; session={token}; lang=en"
    status, _, _, record = call(setup, "/cookie/x", {"Cookie": cookie})
    assert status == 200
    seen = upstream_fields(record)
    assert seen["cookie"] == "theme=dark; lang=en"
    assert seen["x-consumer-id"] == "acme"
    # the header is not a source on this route
    refused(call(setup, "/cookie/x", bearer(token)), 401, None, "missing")


def test_jwt_token_from_query_hidden_upstream(setup):
    token = sign("rsa", claims(), "RS256", "rsa1")
    status, _, _, record = call(setup, f"/query/x?a=1&access_token={token}&b=2")
    assert status == 200
    assert record["target"] == "/query/x?a=1&b=2"
    status, _, _, record = call(setup, f"/query/x?access_token={token}")
    assert status == 200 and record["target"] == "/query/x"
    refused(call(setup, "/query/x?access_token=", {}), 401, None, "missing")


# -- OIDC discovery -------------------------------------------------------------------------------


def test_jwt_oidc_discovery(setup):
    _, _, idp = setup
    issuer = f"{idp.url}{OIDC_PREFIX}"
    token = sign("ec_oidc", claims(iss=issuer), "ES256", "oidc1")
    status, _, body, _ = call(setup, "/oidc/x", bearer(token))
    assert status == 200, body
    assert idp.hits[f"{OIDC_PREFIX}/.well-known/openid-configuration"] >= 1
    assert idp.hits[f"{OIDC_PREFIX}/jwks.json"] >= 1
    # the discovered keys are that issuer's only, and its iss is required
    token = sign("ec_oidc", claims(), "ES256", "oidc1")
    refused(call(setup, "/oidc/x", bearer(token)), 401, "invalid_token", "wrong issuer")
    token = sign("rsa", claims(iss=issuer), "RS256", "rsa1")
    refused(call(setup, "/oidc/x", bearer(token)), 401, "invalid_token", "unknown key id")


# -- introspection --------------------------------------------------------------------------------


def test_introspection_active_token_cached(setup):
    _, _, idp = setup
    now = int(time.time())
    idp.tokens["opaque-good-1"] = {
        "active": True,
        "client_id": "acme",
        "username": "alice",
        "scope": "read admin",
        "exp": now + 600,
    }
    before = idp.hits["/introspect"]
    for _ in range(3):
        status, _, body, record = call(setup, "/opaque/x", bearer("opaque-good-1"))
        assert status == 200, body
        seen = upstream_fields(record)
        assert seen["x-consumer-id"] == "acme" and seen["x-user"] == "alice"
    assert idp.hits["/introspect"] == before + 1  # one call, then the cache
    assert idp.bad_auth == 0
    assert call(setup, "/opaque_scoped/x", bearer("opaque-good-1"))[0] == 200


def test_introspection_refusals(setup):
    _, _, idp = setup
    refused(call(setup, "/opaque/x"), 401, None, "missing bearer token")
    refused(call(setup, "/opaque/x", bearer("unknown-token")), 401, "invalid_token", "not active")
    idp.tokens["opaque-expired"] = {"active": True, "exp": int(time.time()) - 10}
    result = call(setup, "/opaque/x", bearer("opaque-expired"))
    refused(result, 401, "invalid_token", "not active")
    idp.tokens["opaque-reader"] = {"active": True, "sub": "bob", "scope": "read"}
    result = call(setup, "/opaque_scoped/x", bearer("opaque-reader"))
    refused(result, 403, "insufficient_scope", "missing scope admin")
    refused(call(setup, "/opaque/x", bearer("x" * 9000)), 401, "invalid_token", "too large")


def test_introspection_endpoint_down_is_503(setup):
    status, fields, body, record = call(setup, "/opaque_down/x", bearer("anything"))
    assert status == 503 and record is None
    assert body["success"] is False and "introspection endpoint unavailable" in body["error"]


def test_plain_route_untouched(setup):
    status, _, _, record = call(setup, "/plain/x")
    assert status == 200 and record is not None


def call_raw_headers(setup, path: str, pairs: list[tuple[str, str]]):
    """`call` with header lines as given (a name may repeat)."""
    gw, up, _ = setup
    before = len(up.requests)
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=20)
    try:
        c.putrequest("GET", path)
        for name, value in pairs:
            c.putheader(name, value)
        c.endheaders()
        resp = c.getresponse()
        raw = resp.read()
        fields = {name.lower(): value for name, value in resp.getheaders()}
    finally:
        c.close()
    seen = up.requests[before:]
    body = json.loads(raw) if fields.get("content-type") == "application/json" else raw
    return resp.status, fields, body, (seen[0] if seen else None)


def test_jwt_token_header_sent_twice_is_refused(setup):
    # the gateway would verify the first copy while the upstream may read the second (forged)
    good = sign("rsa", claims(roles=["viewer"]), "RS256", "rsa1")
    forged = hand_made({"alg": "RS256", "kid": "rsa1"}, claims(roles=["admin"]), b"x")
    for second in (f"Bearer {forged}", f"bearer {good}"):
        pairs = [("Authorization", f"Bearer {good}"), ("authorization", second)]
        refused(
            call_raw_headers(setup, "/users/x", pairs),
            401,
            "invalid_token",
            "more than one token header",
        )


def test_jwt_unreachable_key_set_is_not_fetched_for_every_request(setup):
    # a key set never fetched (its URL answers 404): requests are 503, and they do not each
    # make the gateway ask the identity provider again (at most once per jwks_min_refresh)
    _, _, idp = setup
    assert wait_for(lambda: idp.hits["/down/jwks.json"] >= 1, timeout=10)
    before = idp.hits["/down/jwks.json"]
    token = sign("rsa", claims(), "RS256", "rsa1")
    for _ in range(20):
        refused(call(setup, "/down/x", bearer(token)), 503, None, "keys not available")
    # the background retry may run meanwhile; 20 requests must not make 20 fetches
    assert idp.hits["/down/jwks.json"] - before <= 3


def test_jwt_token_cookie_in_any_cookie_field_is_read_and_hidden(setup):
    # a client may split its cookies over several Cookie fields: the token is found in any of
    # them, hide_credentials takes every copy out, and the other cookies all stay
    token = sign("rsa", claims(), "RS256", "rsa1")
    pairs = [("Cookie", "theme=dark"), ("Cookie", f"session={token}; lang=en")]
    status, _, _, record = call_raw_headers(setup, "/cookie/x", pairs)
    assert status == 200
    cookies = [value for name, value in record["headers"] if name.lower() == "cookie"]
    assert token not in "".join(cookies)
    assert "; ".join(cookies) == "theme=dark; lang=en"
    pairs = [("Cookie", f"session={token}; theme=dark"), ("Cookie", f"session={token}")]
    status, _, _, record = call_raw_headers(setup, "/cookie/x", pairs)
    assert status == 200
    cookies = [value for name, value in record["headers"] if name.lower() == "cookie"]
    assert cookies == ["theme=dark"]


def test_jwt_signed_token_with_an_exp_past_float_range_is_no_500(setup):
    # whoever holds a key can sign any exp: one too large for a float must not become a 500
    token = sign("secret", claims(exp=10**400), "HS256", "local")
    status, _, body, _ = call(setup, "/users/x", bearer(token))
    assert status == 200, body
    status, _, body, _ = call(setup, "/users/x", bearer(token))  # and from the cache
    assert status == 200, body


def test_introspection_answer_with_an_exp_past_float_range_is_no_500(setup):
    _, _, idp = setup
    idp.tokens["opaque-far-exp"] = {"active": True, "client_id": "acme", "exp": 10**400}
    for _ in range(2):  # asked, then from the cache
        status, _, body, _ = call(setup, "/opaque/x", bearer("opaque-far-exp"))
        assert status == 200, body
