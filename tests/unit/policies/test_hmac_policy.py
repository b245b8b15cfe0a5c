"""hmac family: the RFC 9421 test vector (B.2.5), signature bases of every derived component,
the structured-field parser (strict, never anything but FieldError, fuzzed), Content-Digest,
the nonce stores, the verifier's decisions with a fixed clock, and the config's checks."""

from __future__ import annotations

import asyncio
import base64
import decimal
import hashlib
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isekai.config.consumers import Consumer, IdentityHeaders
from isekai.config.hmac_policy import HmacConfig, HmacKey
from isekai.config.loader import load_config_text
from isekai.errors import ConfigError
from isekai.policies import BUILDERS
from isekai.policies.environment import PolicyEnvironment
from isekai.policies.hmac import HmacPolicy
from isekai.policies.hmac_fields import (
    FieldError,
    Token,
    parse_dictionary,
    serialize_inner_list,
    serialize_item,
)
from isekai.policies.hmac_nonces import MemoryNonces, RedisNonces, nonce_key
from isekai.policies.hmac_signing import (
    Component,
    ComponentError,
    content_digest,
    digest_matches,
    form_encode,
    mac,
    message_from_url,
    parse_component,
    sign_request,
    signature_base,
    signature_params,
)

# RFC 9421 Appendix B.1.5 (the shared secret) and B.2 (the test request)
RFC_SECRET = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)
RFC_HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7B"
    "NNyealdVLvRwEmTHWXvJwew==:",
    "Content-Length": "18",
}
RFC_BODY = b'{"hello": "world"}'
RFC_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type")'
    ';created=1618884473;keyid="test-shared-secret"'
)
RFC_INPUT = (
    'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
)
RFC_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
RFC_URL = "http://example.com/foo?param=Value&Pet=dog"


def test_rfc9421_b25_signature_base_and_signature():
    message = message_from_url("POST", RFC_URL, RFC_HEADERS)
    components = [Component("date"), Component("@authority"), Component("content-type")]
    _, params_text = signature_params(
        components, {"created": 1618884473, "keyid": "test-shared-secret"}
    )
    base = signature_base(message, components, params_text)
    assert base == RFC_BASE
    assert serialize_item(mac("hmac-sha256", RFC_SECRET, base)) == RFC_SIGNATURE.split("=", 1)[1]


def test_rfc9421_b25_with_the_bundled_signer():
    added = sign_request(
        "POST",
        RFC_URL,
        RFC_HEADERS,
        RFC_BODY,
        keyid="test-shared-secret",
        secret=RFC_SECRET,
        alg=None,
        components=["date", "@authority", "content-type"],
        nonce=False,
        created=1618884473,
        label="sig-b25",
    )
    assert added == {"Signature-Input": RFC_INPUT, "Signature": RFC_SIGNATURE}
    # the request's Content-Digest (B.2) is right for its body
    assert digest_matches(RFC_HEADERS["Content-Digest"], RFC_BODY) is True


def test_rfc9421_derived_components_of_the_test_request():
    message = message_from_url("POST", RFC_URL, RFC_HEADERS)
    expected = {
        "@method": "POST",
        "@target-uri": "http://example.com/foo?param=Value&Pet=dog",
        "@authority": "example.com",
        "@scheme": "http",
        "@request-target": "/foo?param=Value&Pet=dog",
        "@path": "/foo",
        "@query": "?param=Value&Pet=dog",
        '@query-param;name="Pet"': "dog",
    }
    for text, value in expected.items():
        component = parse_component(text)
        base = signature_base(message, [component], "()")
        assert base.split("\n")[0] == f"{component.serialize()}: {value}"


def test_query_param_encoding_rfc9421_section_2_2_8():
    url = (
        "https://example.com/parameters?var=this%20is%20a%20big%0Avalue&bar=with+plus+whitespace"
        "&fa%C3%A7ade%22%3A%20=something"
    )
    message = message_from_url("GET", url, {})
    cases = {
        "var": "this%20is%20a%20big%0Avalue",
        "bar": "with%20plus%20whitespace",
        "fa%C3%A7ade%22%3A%20": "something",
    }
    for name, value in cases.items():
        component = Component("@query-param", (("name", name),))
        line = signature_base(message, [component], "()").split("\n")[0]
        assert line == f'"@query-param";name="{name}": {value}'
    assert form_encode("a b~*") == "a%20b%7E*"
    # absent and repeated parameters cannot be signed
    message = message_from_url("GET", "http://x/p?a=1&a=2", {})
    with pytest.raises(ComponentError, match="more than once"):
        signature_base(message, [Component("@query-param", (("name", "a"),))], "()")
    with pytest.raises(ComponentError, match="not in the request"):
        signature_base(message, [Component("@query-param", (("name", "b"),))], "()")


def test_field_values_are_trimmed_and_joined_and_query_defaults():
    message = message_from_url(
        "get", "https://Example.COM:443/", [("X-A", "  one "), ("x-a", "two\t"), ("Host", "H:443")]
    )
    base = signature_base(
        message,
        [Component("x-a"), Component("@query"), Component("@authority"), Component("@method")],
        "()",
    )
    assert base.split("\n")[:4] == [
        '"x-a": one, two',
        '"@query": ?',
        '"@authority": h',
        '"@method": GET',
    ]
    with pytest.raises(ComponentError, match="not in the request"):
        signature_base(message, [Component("x-missing")], "()")


def test_parse_component_spellings_and_refusals():
    assert parse_component("@query-param;name=id").serialize() == '"@query-param";name="id"'
    assert parse_component('@query-param;name="id"').serialize() == '"@query-param";name="id"'
    for bad, why in [
        ("@status", "unsupported derived"),
        ("@signature-params", "cannot be a covered"),
        ("@query-param", "exactly one parameter"),
        ("@method;name=x", "takes no parameters"),
        ("Content-Type", "lower-case field name"),
        ("date;sf", "not supported"),
        ("date;bs", "not supported"),
        ("date;key=a", "not supported"),
    ]:
        with pytest.raises(ComponentError, match=why):
            parse_component(bad)


# -- structured fields --------------------------------------------------------------------------


def test_structured_field_dictionary_values():
    parsed = parse_dictionary(
        'a=1, b=-2.5, c="x \\"y\\" \\\\", d=tok/en:1, e=:aGk=:, f=?0, g, h=(1 "two" ?1);p=*x'
    )
    assert parsed["a"] == (1, {})
    assert parsed["b"] == (decimal.Decimal("-2.5"), {})
    assert parsed["c"] == ('x "y" \\', {})
    assert parsed["d"] == (Token("tok/en:1"), {}) and isinstance(parsed["d"][0], Token)
    assert parsed["e"] == (b"hi", {})
    assert parsed["f"] == (False, {})
    assert parsed["g"] == (True, {})
    assert parsed["h"] == ([(1, {}), ("two", {}), (True, {})], {"p": Token("*x")})
    assert serialize_inner_list(*parsed["h"]) == '(1 "two" ?1);p=*x'
    assert parse_dictionary("") == {}


@pytest.mark.parametrize(
    "text",
    [
        "a=(",
        "a=(1",
        "a=(1)x",
        "A=1",
        "a=1,",
        "a=1,,b=2",
        "a=1 b=2",
        "a=1, a=2",
        'a="unterminated',
        'a="bad \\n escape"',
        "a=1234567890123456",
        "a=1.2345",
        "a=1234567890123.1",
        "a=1.",
        "a=?2",
        "a=:not base64!:",
        "a=:abc",
        "a=#",
        "a=1;",
        "a=1;p=1;p=2",
        "a=\u00e9",
        "a=\x00",
        "a=" + "(" + " ".join(["1"] * 65) + ")",
        ", ".join(f"k{i}=1" for i in range(17)),
        "a=" + "x" * 9000,
    ],
)
def test_structured_field_refusals(text):
    with pytest.raises(FieldError):
        parse_dictionary(text)


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=200))
def test_structured_field_parser_fuzz_only_field_errors(text):
    try:
        parsed = parse_dictionary(text)
    except FieldError:
        return
    # what parses serializes again and reads back the same
    for value, params in parsed.values():
        if isinstance(value, list):
            again = parse_dictionary("x=" + serialize_inner_list(value, params))["x"]
        else:
            again = parse_dictionary("x=" + serialize_item(value, params))["x"]
        assert again == (value, params)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                'sig1=("@method"',
                ")",
                ";created=",
                "1",
                ":",
                "a",
                '"',
                ",",
                " ",
                "(",
                "?1",
                "=",
                "-",
                ".",
                "\\",
                "*",
            ]
        ),
        max_size=40,
    )
)
def test_structured_field_parser_fuzz_near_misses(pieces):
    try:
        parse_dictionary("".join(pieces))
    except FieldError:
        pass


# -- Content-Digest -----------------------------------------------------------------------------


def test_content_digest_both_algorithms():
    body = b"hello"
    both = content_digest(body, ("sha-256", "sha-512"))
    assert digest_matches(both, body) is True
    assert digest_matches(both, b"hellO") is False
    assert digest_matches("md5=:AAAA:", body) is None  # none we know
    assert digest_matches(content_digest(body) + ", unixsum=:AAAA:", body) is True
    sha256 = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert content_digest(body) == f"sha-256=:{sha256}:"
    with pytest.raises(FieldError):
        digest_matches("sha-256=abc", body)


# -- nonce stores -------------------------------------------------------------------------------


def test_memory_nonces_expire_in_order_and_are_bounded():
    now = [100.0]
    store = MemoryNonces(ttl=10, capacity=3, clock=lambda: now[0])
    assert store.add(b"a") is True and store.add(b"a") is False
    assert store.add(b"b") is True and store.add(b"c") is True
    assert store.add(b"d") is None  # full of live nonces: refused, nothing forgotten
    now[0] = 109.9
    assert store.add(b"a") is False
    now[0] = 110.0
    assert store.add(b"a") is True and len(store) == 1
    assert nonce_key("k1", "n") != nonce_key("k2", "n") and len(nonce_key("k", "n")) == 32


def test_redis_nonces_use_set_nx_ex():
    calls = []

    class Client:
        async def set(self, name, value, nx, ex):
            calls.append((name, value, nx, ex))
            return None if len(calls) > 1 else True

    store = RedisNonces(Client, "p:", ttl=600.5, timeout=1)
    assert asyncio.run(store.add(b"\x01\x02")) is True
    assert asyncio.run(store.add(b"\x01\x02")) is False
    assert calls[0] == ("p:0102", b"1", True, 601)


# -- the verifier with a fixed clock ------------------------------------------------------------


class Req:
    """What the policy reads of a gateway request (the flat header parts as `_core` keeps
    them; Host and Content-Length apart)."""

    def __init__(self, method, url, headers, body=None):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.method = method.encode()
        self.path = parts.path.encode()
        self.query = (b"?" + parts.query.encode()) if parts.query else b""
        self.host = None
        self.headers = []
        self.kept = {}
        for name, value in headers.items():
            if name.lower() in ("host", "content-length"):
                self.kept[name.lower()] = value
                if name.lower() == "host":
                    self.host = value.encode()
                continue
            self.headers += [name.encode(), b": ", value.encode(), b"\r\n"]
        self.body = body
        self.ctx = {}
        self.request_id = "r1"
        self.upstream = {}

    def header(self, name):
        name = name.lower()
        if name in self.kept:
            return self.kept[name]
        for i in range(0, len(self.headers), 4):
            if self.headers[i].decode().lower() == name:
                return self.headers[i + 2].decode()
        return None

    def set_header(self, name, value):
        self.upstream[name] = value


def rfc_policy(**options):
    settings_ = dict(
        secret=base64.b64encode(RFC_SECRET).decode(),
        encoding="base64",
        keyid="test-shared-secret",
        require_nonce=False,
        required_components=("@authority",),
        require_digest=False,
    )
    settings_.update(options)
    return HmacPolicy(HmacConfig(**settings_), clock=lambda: 1618884473 + 30)


def test_the_rfc_request_verifies_and_is_identified():
    req = Req(
        "POST",
        RFC_URL,
        {**RFC_HEADERS, "Signature-Input": RFC_INPUT, "Signature": RFC_SIGNATURE},
        RFC_BODY,
    )
    policy = rfc_policy()
    assert policy.on_request(req) is None
    assert req.ctx == {
        "credential": "hmac",
        "credential_id": "test-shared-secret",
        "claims": {"keyid": "test-shared-secret"},
    }
    # the body no longer matching its (checked, though not required) digest
    req.body = b'{"hello": "World"}'
    answer = policy.on_request(req)
    assert answer.status == 401 and b"Content-Digest does not match" in answer.body
    # five minutes later (skew 300 s) it is too old
    late = HmacPolicy(policy.config, clock=lambda: 1618884473 + 301)
    req.body = RFC_BODY
    assert b"too old" in late.on_request(req).body


def test_the_rfc_request_against_stricter_settings():
    headers = {**RFC_HEADERS, "Signature-Input": RFC_INPUT, "Signature": RFC_SIGNATURE}
    req = Req("POST", RFC_URL, headers, RFC_BODY)
    for options, message in [
        ({"require_nonce": True}, b"no nonce parameter"),
        (
            {"required_components": ("@method", "@request-target")},
            b"must cover: @method, @request-target",
        ),
        ({"require_digest": True}, b"must cover: content-digest"),
        ({"keyid": "another-key-id"}, b"unknown keyid 'test-shared-secret'"),
        ({"tag": "app"}, b"no signature with tag 'app'"),
        ({"algorithm": "hmac-sha512"}, b"does not match"),
    ]:
        answer = rfc_policy(**options).on_request(req)
        assert answer.status == 401 and message in answer.body, (options, answer.body)
        assert (b"www-authenticate", b'Signature realm="isekai"') in [
            (k if isinstance(k, bytes) else k.encode(), v if isinstance(v, bytes) else v.encode())
            for k, v in answer.headers
        ]


def test_consumer_of_a_key_and_upstream_headers():
    env = PolicyEnvironment()
    env.consumers.update([Consumer("acme", tier="gold")])
    config = HmacConfig(
        keys=(
            HmacKey("k1", "0123456789abcdef", consumer="acme"),
            HmacKey("k2", "0123456789abcdef", consumer="gone"),
        ),
        upstream_headers=IdentityHeaders(claims=(("keyid", "X-Key-Id"),)),
    )
    policy = BUILDERS["hmac"](config, env)
    assert policy.body_limit == 1024 * 1024
    for keyid, expected in [("k1", None), ("k2", b"consumer of key 'k2' is not known")]:
        headers = sign_request(
            "GET", "http://gw.example/a", {}, None, keyid=keyid, secret="0123456789abcdef"
        )
        req = Req("GET", "http://gw.example/a", {"Host": "gw.example", **headers})
        answer = policy.on_request(req)
        if expected is None:
            assert answer is None
            assert req.ctx["consumer"] == "acme" and req.ctx["consumer_tier"] == "gold"
            assert req.upstream == {"X-Consumer-ID": "acme", "X-Key-Id": "k1"}
        else:
            assert answer.status == 401 and expected in answer.body


def test_redis_store_goes_to_the_slow_path_and_maps_failures():
    class Down:
        async def set(self, *args, **kwargs):
            raise ConnectionError("refused")

    env = SimpleNamespace(redis=lambda url: Down(), consumers=None, workers=1)
    for mode, expected in [("deny", 503), ("allow", None)]:
        config = HmacConfig(
            secret="0123456789abcdef",
            nonce_store="redis",
            redis_url="redis://127.0.0.1:1/0",
            on_store_error=mode,
        )
        policy = HmacPolicy(config, env)
        headers = sign_request(
            "GET", "http://gw.example/a", {}, None, keyid="any", secret="0123456789abcdef"
        )
        pending = policy.on_request(
            Req("GET", "http://gw.example/a", {"Host": "gw.example", **headers})
        )
        assert asyncio.iscoroutine(pending)
        answer = asyncio.run(pending)
        assert (answer.status if answer is not None else None) == expected


# -- config -------------------------------------------------------------------------------------


def load(policy: str, env=None):
    text = (
        'listeners: [{name: main, bind: "127.0.0.1:0"}]\n'
        "policies:\n  signed: " + policy + "\n"
        "routes: [{name: r, match: {path: /x}, respond: {body: x}, policies: [signed]}]\n"
    )
    return load_config_text(text, "gw.yaml", env=env or {})


def error_of(policy: str, env=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load(policy, env)
    return str(caught.value)


def test_config_reads_the_binding_shape():
    config = load(
        '{type: hmac, secret: "${HMAC_SECRET}", skew: 5m, nonce_ttl: 10m}',
        {"HMAC_SECRET": "x" * 32},
    )
    options = config.policies["signed"].options
    assert options.skew == 300 and options.nonce_ttl == 600 and options.nonce_store == "memory"
    assert options.required_components == ("@method", "@request-target")
    assert "x" * 32 not in repr(options)  # the secret is not in its repr


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("{type: hmac}", "needs exactly one of 'secret'"),
        (
            '{type: hmac, secret: "short"}',
            "policies.signed.secret: a secret needs at least 16 bytes",
        ),
        ('{type: hmac, secret: "!!!", encoding: base64}', "not valid base64"),
        (
            '{type: hmac, secret: "0123456789abcdef", skew: 5m, nonce_ttl: 9m}',
            "nonce_ttl: nonce_ttl (540s) must be at least twice skew",
        ),
        ('{type: hmac, secret: "0123456789abcdef", nonce_store: redis}', "needs redis_url"),
        (
            '{type: hmac, secret: "0123456789abcdef", nonce_store: redis, redis_url: "http://x"}',
            "policies.signed.redis_url",
        ),
        (
            '{type: hmac, secret: "0123456789abcdef", redis_url: "redis://x"}',
            "is for nonce_store: redis",
        ),
        (
            '{type: hmac, secret: "0123456789abcdef", nonce_store: redis, redis_url: "redis://["}',
            "expected redis://HOST",
        ),
        (
            '{type: hmac, secret: "0123456789abcdef", required_components: ["@status"]}',
            "required_components[0]",
        ),
        (
            '{type: hmac, secret: "0123456789abcdef", required_components: ["Date"]}',
            "lower-case header field name",
        ),
        (
            '{type: hmac, secret: "0123456789abcdef", algorithm: hmac-md5}',
            "policies.signed.algorithm",
        ),
        (
            '{type: hmac, keys: [{id: a, secret: "0123456789abcdef"}, '
            '{id: a, secret: "0123456789abcdef"}]}',
            "listed twice",
        ),
        ('{type: hmac, keys: [{id: "\\u00e9", secret: "0123456789abcdef"}]}', "visible ASCII"),
        (
            '{type: hmac, keys: [{id: a, secret: "0123456789abcdef"}], consumer: acme}',
            "'consumer' goes with 'secret'",
        ),
        ('{type: hmac, secret: "0123456789abcdef", max_body: 0}', "policies.signed.max_body"),
        ('{type: hmac, secret: "0123456789abcdef", skew: 10m}', "skew: nonce_ttl (600s) must"),
        ('{type: hmac, secret: "0123456789abcdef", tag: "\\u00e9"}', "a tag is 1-256 visible"),
        ('{type: hmac, secret: "0123456789abcdef", redis_prefix: ""}', "a key prefix has 1-128"),
    ],
)
def test_config_refusals_name_the_place(policy, message):
    text = error_of(policy)
    assert text.startswith("gw.yaml:3: ") and message in text, text


def test_config_canonical_query_param_component():
    config = load(
        '{type: hmac, secret: "0123456789abcdef", '
        'required_components: ["@method", "@query-param;name=id"]}'
    )
    assert config.policies["signed"].options.required_components == (
        "@method",
        '@query-param;name="id"',
    )
