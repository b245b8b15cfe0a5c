"""jwt building blocks on their own: key choice by kid and alg, JWK parsing, the access rules,
token sources, the token cache; policies built from loaded configs with static keys only."""

from __future__ import annotations

import json
import time

import pytest

from isekai.config.loader import load_config_text
from isekai.policies import BUILDERS
from isekai.policies.access import Requirement, claim_words
from isekai.policies.bearer import TokenCache, TokenReader
from isekai.policies.environment import PolicyEnvironment
from isekai.policies.jwks import jwk_algorithms, jwk_key
from tests.support.jwt_keys import SECRET, claims, hand_made, jwk, public_pem, sign

BASE = """
listeners: [{name: public, bind: "127.0.0.1:0"}]
upstreams: {app: {targets: ["127.0.0.1:9"]}}
consumers: [{name: acme, tier: gold, tags: [t1]}]
policies:
  p: %s
routes:
  - {name: r, match: {path: "/*"}, upstream: app, policies: [p]}
"""


class Req:
    """What a policy reads and writes of a request (the `_core` request's Python surface)."""

    def __init__(self, headers=None, query=b""):
        self.fields = {k.lower(): v for k, v in (headers or {}).items()}
        self.query = query
        self.ctx = {}

    @property
    def headers(self):
        """The flat head parts [name, b": ", value, b"\r\n", ...], as `_core` has them."""
        parts = []
        for name, value in self.fields.items():
            parts += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        return parts

    def header(self, name):
        return self.fields.get(name.lower())

    def set_header(self, name, value):
        self.fields[name.lower()] = value

    def remove_header(self, name):
        self.fields.pop(name.lower(), None)


def policy(text: str):
    config = load_config_text(BASE % text, env={"S": SECRET})
    env = PolicyEnvironment()
    env.consumers.update(config.consumers)
    spec = config.policies["p"]
    return BUILDERS[spec.type](spec.options, env)


def pem_yaml(kind: str) -> str:
    return json.dumps(public_pem(kind))


def answer_of(result):
    return result.status, json.loads(result.body)["error"]


def test_jwt_unnamed_key_verifies_tokens_naming_any_kid():
    p = policy(f"{{type: jwt, keys: [{{public_key: {pem_yaml('rsa')}, algorithms: [RS256]}}]}}")
    req = Req({"Authorization": "Bearer " + sign("rsa", claims(), "RS256", "some-kid")})
    assert p.on_request(req) is None
    assert req.ctx["consumer"] == "acme" and req.ctx["consumer_tier"] == "gold"
    assert req.ctx["credential"] == "jwt" and req.ctx["credential_id"] == "some-kid"
    assert req.fields["x-consumer-id"] == "acme"
    # another key's token: the signature fails (there is no key set to refetch)
    req = Req({"Authorization": "Bearer " + sign("rsa_other", claims(), "RS256", "x")})
    assert answer_of(p.on_request(req)) == (401, "invalid token: signature verification failed")


def test_jwt_hmac_secret_and_pem_keep_to_their_algorithms():
    p = policy(
        f'{{type: jwt, keys: [{{secret: "${{S}}", algorithms: [HS256]}},'
        f" {{public_key: {pem_yaml('rsa')}, algorithms: [RS256]}}]}}"
    )
    assert (
        p.on_request(Req({"Authorization": "Bearer " + sign("secret", claims(), "HS256", None)}))
        is None
    )
    forged = hand_made({"alg": "HS256"}, claims(), public_pem("rsa").encode())
    assert answer_of(p.on_request(Req({"Authorization": f"Bearer {forged}"})))[0] == 401
    # RS384 is no key's algorithm here
    token = sign("rsa", claims(), "RS384", None)
    assert answer_of(p.on_request(Req({"Authorization": f"Bearer {token}"}))) == (
        401,
        "invalid token: no key for this algorithm",
    )


def test_jwt_cache_counts_and_no_reverify():
    p = policy('{type: jwt, keys: [{secret: "${S}", algorithms: [HS256]}]}')
    token = sign("secret", claims(), "HS256", None)
    for _ in range(5):
        assert p.on_request(Req({"Authorization": f"Bearer {token}"})) is None
    assert p.verified == 1 and p.cache.hits == 4
    p.keys_changed(None)  # a key set change empties the cache
    assert p.on_request(Req({"Authorization": f"Bearer {token}"})) is None
    assert p.verified == 2


def test_jwt_cached_token_facts_are_not_shared_between_requests():
    # a later policy editing one request's ctx must not change what the next request carrying
    # the same (cached) token is given
    p = policy('{type: jwt, keys: [{secret: "${S}", algorithms: [HS256]}]}')
    token = sign("secret", claims(roles=["viewer"], scope="read"), "HS256", None)
    first = Req({"Authorization": f"Bearer {token}"})
    assert p.on_request(first) is None
    first.ctx["roles"].append("admin")
    first.ctx["scopes"].append("write")
    first.ctx["claims"]["roles"].append("admin")
    second = Req({"Authorization": f"Bearer {token}"})
    assert p.on_request(second) is None and p.cache.hits == 1
    assert second.ctx["roles"] == ["viewer"] and second.ctx["scopes"] == ["read"]
    assert second.ctx["claims"]["roles"] == ["viewer"]


def test_jwt_consumer_absent_and_required():
    text = '{type: jwt, keys: [{secret: "${S}", algorithms: [HS256]}]%s}'
    token = sign("secret", claims(sub="stranger", roles="a b"), "HS256", None)
    req = Req({"Authorization": f"Bearer {token}"})
    assert policy(text % "").on_request(req) is None
    assert "consumer" not in req.ctx and req.ctx["claims"]["sub"] == "stranger"
    assert req.ctx["roles"] == ["a", "b"] and "x-consumer-id" not in req.fields
    refused = policy(text % ", consumer_required: true").on_request(req)
    assert answer_of(refused) == (403, "no consumer for this token")


def test_jwt_hide_credentials_from_header():
    p = policy('{type: jwt, keys: [{secret: "${S}", algorithms: [HS256]}], hide_credentials: true}')
    req = Req({"Authorization": "Bearer " + sign("secret", claims(), "HS256", None)})
    assert p.on_request(req) is None and "authorization" not in req.fields


def test_jwk_algorithms_and_refusals():
    assert set(jwk_algorithms(jwk("rsa", "a"))) == {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
    }
    assert jwk_algorithms(jwk("rsa", "a", alg="PS256")) == ("PS256",)
    assert jwk_algorithms(jwk("rsa", "a", alg="HS256")) == ()
    assert jwk_algorithms(jwk("ec", "a")) == ("ES256",)
    assert jwk_algorithms(jwk("ed", "a")) == ("EdDSA",)
    assert jwk_algorithms({"kty": "oct", "k": "c2VjcmV0"}) == ()
    assert jwk_key({**jwk("rsa", "a"), "use": "enc"}, None, "u") is None
    assert jwk_key({**jwk("rsa", "a"), "d": "AQAB"}, None, "u") is None
    assert jwk_key({"kty": "RSA", "n": "!!", "e": "AQAB"}, None, "u") is None
    assert jwk_key(jwk("rsa", "a"), frozenset({"ES256"}), "u") is None
    key = jwk_key(jwk("ec", "e1"), None, "u")
    assert key is not None and key.kid == "e1" and key.algorithms == {"ES256"}


@pytest.mark.parametrize(
    ("require", "roles", "scopes", "claims_", "missing"),
    [
        ({"roles": ["a", "b"], "match": "all"}, ["a"], [], {}, "missing role b"),
        ({"roles": ["a", "b"], "match": "any"}, ["b"], [], {}, None),
        (
            {"roles": ["a"], "scopes": ["s"], "match": "any"},
            [],
            [],
            {},
            "needs one of: role a, scope s",
        ),
        ({"scopes": ["s", "t"]}, [], ["t", "s"], {}, None),
        ({"claims": (("tier", ("gold", 1)),)}, [], [], {"tier": 1}, None),
        ({"claims": (("tier", ("gold",)),)}, [], [], {"tier": ["x", "gold"]}, None),
        ({"claims": (("admin", (True,)),)}, [], [], {"admin": 1}, "missing claim admin"),
    ],
)
def test_requirement(require, roles, scopes, claims_, missing):
    config = type("R", (), {"roles": (), "scopes": (), "claims": (), "match": "all", **require})
    assert Requirement(config).missing(roles, scopes, claims_) == missing


def test_claim_words():
    assert claim_words("a  b c") == ["a", "b", "c"]
    assert claim_words(["a", 1, "b"]) == ["a", "b"]
    assert claim_words({"a": 1}) == [] and claim_words(None) == []


def test_token_reader_sources_and_hiding():
    sources = type("S", (), {"header": "Authorization", "cookie": "sid", "query": "t"})
    reader = TokenReader(sources)
    assert reader.read(Req({"Authorization": "bearer  abc "})) == ("abc", "header")
    assert reader.read(Req({"Authorization": "Basic abc"})) == (None, None)
    req = Req({"Cookie": 'a=1; sid="tok"; b=2'})
    assert reader.read(req) == ("tok", "cookie")
    reader.hide(req, "cookie")
    assert req.fields["cookie"] == "a=1; b=2"
    req = Req(query=b"?x=1&t=a%2Eb&y")
    assert reader.read(req) == ("a.b", "query")
    reader.hide(req, "query")
    assert req.query == b"?x=1&y"
    req = Req(query=b"?t=only")
    reader.hide(req, "query")
    assert req.query == b""


def test_token_cache_lru_and_expiry():
    cache = TokenCache(2)
    now = time.time()
    cache.put(b"a", now + 60, 1)
    cache.put(b"b", now + 60, 2)
    assert cache.get(b"a") == 1  # a is now the most recent
    cache.put(b"c", now + 60, 3)
    assert cache.get(b"b") is None and cache.get(b"a") == 1 and cache.get(b"c") == 3
    cache.put(b"d", now - 1, 4)
    assert cache.get(b"d") is None
    off = TokenCache(0)
    off.put(b"a", now + 60, 1)
    assert off.get(b"a") is None and len(off) == 0
