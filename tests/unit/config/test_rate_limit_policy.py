"""The rate_limit family's config: the Shape keys, defaults, key parts, tiers, and every
refusal with its file:line and config path; and the admin API's JSON validation of the same."""

from __future__ import annotations

import pytest

from isekai.config.loader import load_config_text
from isekai.config.rate_limit_policy import RateLimitConfig, key_part
from isekai.config.units import Rate
from isekai.errors import ConfigError


def test_rate_limit_config_shape_keys():
    config = load_config_text(
        """
policies:
  per_ip:  {type: rate_limit, rate: 100/s, burst: 200, key: client_ip}
  per_key: {type: rate_limit, key: consumer, tiers: {free: {rate: 10/m}, premium: {rate: 1000/m}},
            backend: redis, redis_url: "redis://127.0.0.1:6379/0", on_backend_error: allow}
"""
    )
    per_ip = config.policies["per_ip"].options
    assert per_ip.rate == Rate(100.0, 1.0) and per_ip.rate.per_second == 100.0
    assert (per_ip.burst, per_ip.key, per_ip.algorithm, per_ip.cost) == (
        200,
        ("client_ip",),
        "token_bucket",
        1,
    )
    assert (per_ip.backend, per_ip.headers, per_ip.legacy_headers) == ("local", False, False)
    per_key = config.policies["per_key"].options
    assert per_key.rate is None
    assert per_key.tiers["free"].rate == Rate(10.0, 60.0)
    assert per_key.tiers["premium"].rate == Rate(1000.0, 60.0)
    assert per_key.tiers["free"].name == "free"
    assert (per_key.backend, per_key.redis_url, per_key.on_backend_error) == (
        "redis",
        "redis://127.0.0.1:6379/0",
        "allow",
    )


def test_rate_limit_config_composed_keys_and_every_option():
    config = load_config_text(
        """
policies:
  full:
    type: rate_limit
    rate: 30/10s
    algorithm: sliding_window
    key: [consumer, route, "header:X-User", "param:k", "jwt_claim:sub", api_key]
    cost: 3
    headers: true
    legacy_headers: true
"""
    )
    full = config.policies["full"].options
    assert full.rate == Rate(30.0, 10.0) and str(full.rate) == "30/10s"
    assert full.key == ("consumer", "route", "header:X-User", "param:k", "jwt_claim:sub", "api_key")
    assert [key_part(text) for text in full.key] == [
        ("consumer", ""),
        ("route", ""),
        ("header", "x-user"),
        ("param", "k"),
        ("jwt_claim", "sub"),
        ("api_key", ""),
    ]
    assert (full.algorithm, full.cost, full.headers, full.legacy_headers) == (
        "sliding_window",
        3,
        True,
        True,
    )
    assert RateLimitConfig.family == "rate_limit"


def test_rate_limit_rate_text_round_trips():
    assert [str(Rate(100, 1)), str(Rate(10, 60)), str(Rate(5, 3600)), str(Rate(2, 86400))] == [
        "100/s",
        "10/m",
        "5/h",
        "2/d",
    ]


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ("{type: rate_limit}", "p: a rate_limit needs a rate, or tiers, or both"),
        ("{type: rate_limit, rate: 100}", "p.rate: expected a rate like 100/s"),
        ("{type: rate_limit, rate: 0/s}", "p.rate: rate '0/s' must be positive"),
        ("{type: rate_limit, rate: 10/s, burst: 0}", "p.burst:"),
        (
            "{type: rate_limit, rate: 10/s, burst: 5, algorithm: fixed_window}",
            "p.burst: burst applies to the token_bucket and gcra algorithms",
        ),
        (
            "{type: rate_limit, rate: 10/s, algorithm: leaky}",
            "p.algorithm:",
        ),
        ("{type: rate_limit, rate: 10/s, key: ip}", "p.key: unknown key part 'ip'"),
        ("{type: rate_limit, rate: 10/s, key: 'header:'}", "p.key: bad key part 'header:'"),
        ("{type: rate_limit, rate: 10/s, key: 'header:a b'}", "p.key: bad key part"),
        ("{type: rate_limit, rate: 10/s, key: []}", "p.key: a key needs at least one part"),
        (
            "{type: rate_limit, rate: 10/s, key: [route, route]}",
            "p.key[1]: key part 'route' is listed twice",
        ),
        (
            "{type: rate_limit, rate: 10/s, burst: 2, cost: 3}",
            "p.burst: cost 3 is more than the burst (2) of rate 10/s",
        ),
        (
            "{type: rate_limit, rate: 2/s, algorithm: fixed_window, cost: 3}",
            "p.cost: cost 3 is more than the count (2) of rate 2/s",
        ),
        ("{type: rate_limit, rate: 10/s, cost: 0}", "p.cost:"),
        (
            "{type: rate_limit, tiers: {free: {rate: 1/m, burst: 1}}, cost: 2}",
            "p.tiers.free.burst: cost 2 is more than the burst (1) of rate 1/m",
        ),
        ("{type: rate_limit, tiers: {free: {}}}", "p.tiers.free.rate:"),
        ("{type: rate_limit, tiers: {free: {rate: 1/m}}, burst: 3}", "p.burst: burst is the"),
        ("{type: rate_limit, rate: 10/s, backend: redis}", "p: backend: redis needs"),
        (
            "{type: rate_limit, rate: 10/s, redis_url: 'redis://127.0.0.1'}",
            "p.redis_url: redis_url is set but backend is local",
        ),
        ("{type: rate_limit, rate: 10/s, backend: redis, redis_url: 'http://x'}", "p.redis_url:"),
        ("{type: rate_limit, rate: 10/s, on_backend_error: maybe}", "p.on_backend_error:"),
        ("{type: rate_limit, rate: 10/s, key_prefix: 'a b'}", "p.key_prefix:"),
        ("{type: rate_limit, rate: 10/s, key_prefix: 'rl{x}'}", "p.key_prefix: at most 64"),
        ("{type: rate_limit, rate: 10/s, limit: 3}", "p.limit: unknown key 'limit'"),
    ],
)
def test_rate_limit_config_refusals_name_file_line_and_path(policy, message):
    with pytest.raises(ConfigError) as caught:
        load_config_text(f"policies:\n  p: {policy}", source="gw.yaml")
    text = str(caught.value)
    assert text.startswith("gw.yaml:2: policies."), text
    assert message in text, text


def test_rate_limit_limits_table_memory_is_a_size():
    assert load_config_text("limits: {rate_limit_memory: 1MiB}").limits.rate_limit_memory == 1 << 20
    with pytest.raises(ConfigError, match="limits.rate_limit_memory"):
        load_config_text("limits: {rate_limit_memory: 1KiB}")
