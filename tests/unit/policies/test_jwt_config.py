"""jwt and oauth2_introspection config: what is accepted, and every refusal located at its
line and config path."""

from __future__ import annotations

import pytest

from isekai.config.loader import load_config_text
from isekai.errors import ConfigError
from tests.support.jwt_keys import SECRET, public_pem

BASE = """
listeners: [{name: public, bind: "127.0.0.1:0"}]
upstreams: {app: {targets: ["127.0.0.1:9"]}}
policies:
  p: %s
routes:
  - {name: r, match: {path: "/*"}, upstream: app, policies: [p]}
"""


def load(policy: str, env: dict | None = None):
    return load_config_text(BASE % policy, "gateway.yaml", env=env or {"S": SECRET})


def options(policy: str, env: dict | None = None):
    return load(policy, env).policies["p"].options


def test_jwt_config_binding_shape():
    found = options(
        '{type: jwt, keys: [{jwks_url: "https://idp.example.com/.well-known/jwks.json"},'
        ' {secret: "${S}", algorithms: [HS256], kid: local}], issuer: "https://idp.example.com/",'
        " audience: api, leeway: 30s, consumer_claim: sub,"
        " require: {roles: [admin, editor], match: any}}"
    )
    assert found.issuer == ("https://idp.example.com/",)
    assert found.audience == ("api",)
    assert found.leeway == 30.0
    assert found.keys[1].secret == SECRET and found.keys[1].algorithms == ("HS256",)
    assert found.require.roles == ("admin", "editor") and found.require.match == "any"
    assert found.token.header == "Authorization"
    assert found.max_token_size == 8192 and found.require_exp
    assert SECRET not in repr(found)  # secrets never printed


def test_jwt_config_pem_file_relative_to_config(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "k.pem").write_text(public_pem("rsa"))
    path = tmp_path / "gateway.yaml"
    path.write_text(
        BASE % "{type: jwt, keys: [{public_key_file: keys/k.pem, algorithms: [RS256, PS256]}]}"
    )
    from isekai.config.loader import load_config

    found = load_config(path).policies["p"].options
    assert found.keys[0].public_key_file == str(tmp_path / "keys" / "k.pem")


def test_jwt_config_introspection_shape():
    found = options(
        '{type: oauth2_introspection, introspection_url: "https://auth.example.com/introspect",'
        ' client_id: gw, client_secret: "${S}", require: {scopes: [read]}}'
    )
    assert found.cache_ttl == 60.0 and found.timeout == 5.0
    assert found.consumer_claim is None
    assert SECRET not in repr(found)


@pytest.mark.parametrize(
    ("policy", "path", "text"),
    [
        ("{type: jwt}", "policies.p", "needs 'keys', or an 'issuer'"),
        ("{type: jwt, keys: [{}]}", "policies.p.keys[0]", "needs exactly one of"),
        (
            '{type: jwt, keys: [{secret: "${S}"}]}',
            "policies.p.keys[0]",
            "needs 'algorithms'",
        ),
        (
            '{type: jwt, keys: [{secret: "${S}", algorithms: [RS256]}]}',
            "policies.p.keys[0].algorithms",
            "HS256/384/512 only",
        ),
        (
            "{type: jwt, keys: [{secret: short-secret, algorithms: [HS256]}]}",
            "policies.p.keys[0].secret",
            "at least 32 bytes",
        ),
        (
            '{type: jwt, keys: [{secret: "${S}", algorithms: [none]}]}',
            "policies.p.keys[0].algorithms[0]",
            "unsupported algorithm",
        ),
        (
            '{type: jwt, keys: [{jwks_url: "https://x/j", algorithms: [HS256]}]}',
            "policies.p.keys[0].algorithms",
            "HS256 is refused",
        ),
        (
            '{type: jwt, keys: [{jwks_url: "file:///etc/passwd"}]}',
            "policies.p.keys[0].jwks_url",
            "http:// or https://",
        ),
        (
            "{type: jwt, keys: [{public_key: nonsense, algorithms: [RS256]}]}",
            "policies.p.keys[0].public_key",
            "not a PEM public key",
        ),
        (
            "{type: jwt, keys: [{public_key_file: missing.pem, algorithms: [RS256]}]}",
            "policies.p.keys[0].public_key_file",
            "cannot read",
        ),
        (
            "{type: jwt, issuer: [a, b], discovery: true}",
            "policies.p.issuer",
            "exactly one issuer",
        ),
        ("{type: jwt, issuer: 5}", "policies.p.issuer", "a string or a non-empty list"),
        (
            '{type: jwt, issuer: "https://i/", require: {match: any}}',
            "policies.p.require",
            "at least one of",
        ),
        (
            '{type: jwt, issuer: "https://i/", require: {claims: {tenant: {a: 1}}}}',
            "policies.p.require.claims",
            "claim 'tenant'",
        ),
        (
            '{type: jwt, issuer: "https://i/", token: {cookie: "a b"}}',
            "policies.p.token.cookie",
            "not a cookie name",
        ),
        (
            '{type: jwt, issuer: "https://i/", realm: "a\\"b"}',
            "policies.p.realm",
            "printable ASCII",
        ),
        (
            '{type: jwt, issuer: "https://i/", jwks_refresh: 10s, jwks_min_refresh: 1m}',
            "policies.p.jwks_min_refresh",
            "must not be longer",
        ),
        (
            '{type: oauth2_introspection, introspection_url: "ftp://x", client_id: a,'
            " client_secret: b}",
            "policies.p.introspection_url",
            "http:// or https://",
        ),
        (
            '{type: oauth2_introspection, introspection_url: "https://x/i", client_id: "a:b",'
            " client_secret: b}",
            "policies.p.client_id",
            "must not contain ':'",
        ),
    ],
)
def test_jwt_config_refusals_are_located(policy, path, text):
    with pytest.raises(ConfigError) as caught:
        load(policy)
    message = str(caught.value)
    assert f"{path}:" in message and text in message, message
    assert message.startswith("gateway.yaml:"), message


@pytest.mark.parametrize(
    ("pem_kind", "alg", "text"),
    [
        ("ec", "RS256", "needs an RSA key"),
        ("rsa", "ES256", "needs an EC key"),
        ("rsa", "EdDSA", "Ed25519"),
    ],
)
def test_jwt_config_pem_key_must_fit_its_algorithms(pem_kind, alg, text):
    pem = public_pem(pem_kind).replace("\n", "\\n")
    with pytest.raises(ConfigError) as caught:
        load(f'{{type: jwt, keys: [{{public_key: "{pem}", algorithms: [{alg}]}}]}}')
    assert text in str(caught.value)


def test_jwt_config_reference_and_schema_still_build():
    import json

    from isekai.config import jsonschema, reference

    schema = json.dumps(jsonschema.document_schema())
    assert "jwks_url" in schema and "introspection_url" in schema
    tables = reference.render()
    assert "jwks_min_refresh" in tables and "introspection_url" in tables


def test_jwt_config_pem_file_rewritten_makes_a_new_policy_instance(tmp_path):
    # a reload keeps a policy instance while its config is the same: the key file's content
    # is part of the config, so a rotated file is not left trusted in a kept instance
    from isekai._core.counters import Counters
    from isekai.chains import PolicySet
    from isekai.config.loader import load_config
    from isekai.gateway import build_policy

    key_file = tmp_path / "k.pem"
    key_file.write_text(public_pem("rsa"))
    path = tmp_path / "gateway.yaml"
    path.write_text(BASE % "{type: jwt, keys: [{public_key_file: k.pem, algorithms: [RS256]}]}")
    policies = PolicySet(Counters(), build_policy)
    first = load_config(path)
    chain = policies.chain(["p"], "routes.r", first.policies)
    again = policies.chain(["p"], "routes.r", load_config(path).policies)
    assert again[0] is chain[0]  # the file as it was: the same instance
    policies.release(again)
    key_file.write_text(public_pem("rsa_rotated"))  # another key in the same file
    rotated = load_config(path)
    assert rotated.policies["p"] != first.policies["p"]
    assert public_pem("rsa_rotated") not in repr(rotated.policies["p"])  # not printed
    new_chain = policies.chain(["p"], "routes.r", rotated.policies)
    assert new_chain[0] is not chain[0]
    policies.release(chain)
    assert len(policies) == 1
    policies.close()
