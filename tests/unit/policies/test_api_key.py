"""api_key family: key hashing, the per-worker index following the consumer directory (and the
pepper), the policy's accept and refusal paths on real `_core` requests, query helpers, and
its statistics."""

from __future__ import annotations

import json
import random
import re
import time

import pytest

from isekai._core.protocol import ProxyRequest
from isekai.config.api_key_policy import KEY_PREFIX, ApiKeyConfig, key_hash, make_key
from isekai.config.consumers import Consumer, ConsumerKey, IdentityHeaders
from isekai.config.schema import Security
from isekai.policies import BUILDERS
from isekai.policies.api_key import KeyIndex, index_of, query_value, query_without
from isekai.policies.environment import PolicyEnvironment

PEPPER = "unit-pepper-0123456789"


def request(query: bytes = b"", **fields: str) -> ProxyRequest:
    req = ProxyRequest.__new__(ProxyRequest)
    req.method = b"GET"
    req.path = b"/"
    req.query = query
    req.headers = []
    for name, value in fields.items():
        req.headers += [name.replace("_", "-").encode(), b": ", value.encode(), b"\r\n"]
    return req


def header_names(req: ProxyRequest) -> list[str]:
    return [bytes(req.headers[i]).decode().lower() for i in range(0, len(req.headers), 4)]


def env_with(*consumers: Consumer, pepper: str | None = PEPPER) -> PolicyEnvironment:
    env = PolicyEnvironment()
    env.security = Security(api_key_pepper=pepper)
    env.consumers.update(consumers)
    return env


def acme(*keys: ConsumerKey) -> Consumer:
    return Consumer(name="acme", tier="gold", tags=("partner",), keys=keys)


def body_of(answer) -> dict:
    return json.loads(answer.body)


def challenge(answer) -> str:
    found = dict((bytes(n).lower(), bytes(v)) for n, v in answer.headers)
    return found[b"www-authenticate"].decode()


def test_api_key_hash_is_hmac_sha256_with_the_pepper():
    import hashlib
    import hmac

    expected = hmac.new(PEPPER.encode(), b"some-key", hashlib.sha256).hexdigest()
    assert key_hash(PEPPER, "some-key") == expected
    assert key_hash(PEPPER.encode(), b"some-key") == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert key_hash(None, "k") == hmac.new(b"", b"k", hashlib.sha256).hexdigest()
    assert key_hash("other-pepper-000000", "some-key") != expected


def test_api_key_made_keys_are_prefixed_random_and_url_safe():
    keys = {make_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert key.startswith(KEY_PREFIX)
        assert re.fullmatch(r"isk_[A-Za-z0-9_-]{43}", key), key


def test_api_key_index_follows_the_consumers_and_the_pepper():
    env = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")))
    index = index_of(env)
    assert index_of(env) is index  # one per worker
    consumer, key, usage = index.lookup("yaml-key-0123456789")
    assert (consumer.name, key.id, usage) == ("acme", "y", [0, 0.0])
    assert index.lookup("yaml-key-012345678") is None
    # a stored key (hash only) joins with the next update; the YAML key leaves
    stored = ConsumerKey(id="s", hash=key_hash(PEPPER, "isk_stored"), prefix="isk_stor")
    env.consumers.update([acme(stored)])
    assert index.lookup("yaml-key-0123456789") is None
    assert index.lookup("isk_stored")[1].id == "s"
    # a new pepper (new snapshot): hashes are made again, stored hashes no longer match
    env.security = Security(api_key_pepper="another-pepper-0123456")
    assert index.lookup("isk_stored") is None
    env.consumers.update([acme(ConsumerKey(id="y", key="yaml-key-0123456789"))])
    assert index.lookup("yaml-key-0123456789")[1].id == "y"


def test_api_key_index_keeps_usage_across_rebuilds_and_drops_removed_keys():
    one = ConsumerKey(id="one", key="key-number-one-000000")
    two = ConsumerKey(id="two", key="key-number-two-000000")
    env = env_with(acme(one, two))
    policy = BUILDERS["api_key"](ApiKeyConfig(), env)
    for _ in range(3):
        assert policy.on_request(request(X_API_Key="key-number-one-000000")) is None
    assert policy.on_request(request(X_API_Key="key-number-two-000000")) is None
    stats = env.stats_providers["api_keys"]()
    assert stats["usage"]["acme"]["one"][0] == 3
    assert stats["usage"]["acme"]["two"][0] == 1
    assert abs(stats["usage"]["acme"]["one"][1] - time.time()) < 5
    env.consumers.update([acme(one), Consumer(name="beta")])
    stats = env.stats_providers["api_keys"]()
    assert stats["usage"] == {"acme": {"one": stats["usage"]["acme"]["one"]}}
    assert stats["usage"]["acme"]["one"][0] == 3
    json.dumps(stats)  # shipped with the worker's statistics


def test_api_key_same_key_for_two_consumers_keeps_one(caplog):
    same = "shared-key-0123456789"
    env = env_with(
        acme(ConsumerKey(id="a", key=same)),
        Consumer(name="beta", keys=(ConsumerKey(id="b", key=same),)),
    )
    index = index_of(env)
    assert index.lookup(same)[0].name == "acme"
    assert "is the same key as" in caplog.text
    assert same not in caplog.text  # never a key in the log


def test_api_key_no_pepper_warns_once_and_hashes_with_an_empty_pepper(caplog):
    env = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")), pepper=None)
    index = index_of(env)
    assert index.lookup("yaml-key-0123456789") is not None
    env.consumers.update([acme(ConsumerKey(id="z", key="yaml-key-9876543210"))])
    assert caplog.text.count("security.api_key_pepper is not set") == 1


def test_api_key_policy_accepts_and_identifies():
    env = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")))
    policy = BUILDERS["api_key"](ApiKeyConfig(), env)
    req = request(X_API_Key="yaml-key-0123456789", X_Other="1")
    assert policy.on_request(req) is None
    assert req.ctx == {
        "credential": "api_key",
        "credential_id": "y",
        "consumer": "acme",
        "consumer_tier": "gold",
        "consumer_tags": ["partner"],
    }
    assert req.header("X-Consumer-ID") == "acme"
    assert "x-api-key" not in header_names(req)
    assert req.header("X-Other") == "1"


def test_api_key_policy_refusals_and_their_counters():
    past = ConsumerKey(id="p", key="past-key-0123456789", expires_at=time.time() - 1)
    env = env_with(acme(past))
    policy = BUILDERS["api_key"](ApiKeyConfig(realm="r1"), env)
    missing = policy.on_request(request())
    assert missing.status == 401
    assert body_of(missing)["error"] == "an API key is required: send it in the X-API-Key header"
    assert body_of(missing)["policy"] == "api_key"
    assert challenge(missing) == 'ApiKey realm="r1", header="X-API-Key"'
    unknown = policy.on_request(request(X_API_Key="nope-0123456789"))
    expired = policy.on_request(request(X_API_Key="past-key-0123456789"))
    assert unknown.status == expired.status == 401
    assert unknown.body == expired.body  # indistinguishable to the client
    assert challenge(expired) == 'ApiKey realm="r1", header="X-API-Key", error="invalid_key"'
    assert env.stats_providers["api_keys"]()["refused"] == {
        "missing": 1,
        "unknown": 1,
        "expired": 1,
    }


def test_api_key_policy_query_form_and_hide_credentials():
    env = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")))
    config = ApiKeyConfig(header="X-Key", query="api_key")
    policy = BUILDERS["api_key"](config, env)
    req = request(b"?a=1&api_key=yaml-key-0123456789&b=2")
    assert policy.on_request(req) is None
    assert req.query == b"?a=1&b=2"
    kept = BUILDERS["api_key"](ApiKeyConfig(query="api_key", hide_credentials=False), env)
    req = request(b"?api_key=yaml-key-0123456789")
    assert kept.on_request(req) is None
    assert req.query == b"?api_key=yaml-key-0123456789"
    answer = policy.on_request(request(b"?api_key="))
    assert "or the api_key query parameter" in body_of(answer)["error"]
    assert challenge(answer) == 'ApiKey realm="isekai", header="X-Key", query="api_key"'


def test_api_key_policy_custom_identity_headers():
    env = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")))
    config = ApiKeyConfig(upstream_headers=IdentityHeaders(consumer="X-Who"))
    req = request(X_API_Key="yaml-key-0123456789")
    assert BUILDERS["api_key"](config, env).on_request(req) is None
    assert req.header("X-Who") == "acme" and req.header("X-Consumer-ID") is None


@pytest.mark.parametrize(
    ("query", "value", "without"),
    [
        (b"", None, b""),
        (b"?", None, b""),
        (b"?api_key=abc", "abc", b""),
        (b"?x=1&api_key=abc&api_key=def", "abc", b"?x=1"),
        (b"?api%5Fkey=a%2Bb+c", "a+b c", b""),
        (b"?api_keyx=1&xapi_key=2", None, b"?api_keyx=1&xapi_key=2"),
        (b"?api_key", "", b""),
        (b"?&&api_key=z&&", "z", b""),
        (b"?a=%ZZ&api_key=%FF", "\ufffd", b"?a=%ZZ"),
    ],
)
def test_api_key_query_helpers(query, value, without):
    assert query_value(query, b"api_key") == value
    assert query_without(query, b"api_key") == without


def test_api_key_policy_never_raises_on_garbage():
    env = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")))
    policy = BUILDERS["api_key"](ApiKeyConfig(query="k"), env)
    rng = random.Random(13)
    for _ in range(500):
        raw = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
        query = b"?k=" + raw.replace(b"&", b"")
        answer = policy.on_request(request(query))
        assert answer is None or answer.status == 401
        text = raw.decode("latin-1").replace("\r", "").replace("\n", "")
        req = ProxyRequest.__new__(ProxyRequest)
        req.method, req.path, req.query = b"GET", b"/", b""
        req.headers = [b"X-API-Key", b": ", text.encode("latin-1"), b"\r\n"]
        answer = policy.on_request(req)
        assert answer is None or answer.status == 401


def test_api_key_index_is_per_environment():
    first = env_with(acme(ConsumerKey(id="y", key="yaml-key-0123456789")))
    second = env_with()
    assert index_of(first) is not index_of(second)
    assert isinstance(index_of(second), KeyIndex)
    assert index_of(second).lookup("yaml-key-0123456789") is None
