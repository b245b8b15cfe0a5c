import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from isekai.config.units import (
    check_rewrite,
    parse_address,
    parse_cidr,
    parse_duration,
    parse_host_pattern,
    parse_method,
    parse_path_pattern,
    parse_rate,
    parse_size,
    parse_strip_prefix,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("2.5", 2.5),
        (3, 3.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration_accepts_units_and_plain_seconds(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10x", "bad duration '10x'"),
        ("s", "bad duration 's'"),
        ("10 s", "bad duration '10 s'"),
        ("-1s", "bad duration '-1s'"),
        (-1, "duration -1 must not be negative"),
        (True, "expected a duration like 250ms, 10s, 5m or 1h, got a boolean"),
        (None, "got null"),
        ([1], "got a list"),
        (math.inf, "inf is not a finite number"),
    ],
)
def test_parse_duration_rejects_bad_values(value, message):
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert message in str(info.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["ms", "s", "m", "h"]))
def test_parse_duration_scales_every_unit(amount, unit):
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    assert parse_duration(f"{amount}{unit}") == pytest.approx(amount * scale)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("8KiB", 8192),
        ("1MiB", 1024 * 1024),
        ("1GiB", 1024**3),
        ("512", 512),
        (512, 512),
        ("10KB", 10_000),
        ("10kb", 10_000),
        ("3MB", 3_000_000),
        ("100B", 100),
        ("1.5MiB", 1_572_864),
        ("0", 0),
    ],
)
def test_parse_size_accepts_decimal_and_binary_units(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10XB", "bad size '10XB'"),
        ("KiB", "bad size 'KiB'"),
        ("1.5B", "size '1.5B' is not a whole number of bytes"),
        (1.5, "size 1.5 is not a whole number of bytes"),
        (-1, "size -1 must not be negative"),
        (False, "expected a size like 512, 8KiB or 1MiB, got a boolean"),
    ],
)
def test_parse_size_rejects_bad_values(value, message):
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "per_second"),
    [("100/s", 100.0), ("10/m", 10 / 60), ("7200/h", 2.0), ("30/10s", 3.0), ("1/250ms", 4.0)],
)
def test_parse_rate_returns_events_per_second(value, per_second):
    assert parse_rate(value) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("100", "bad rate '100': write a count per period like 100/s"),
        (100, "expected a rate like 100/s or 10/m, got an integer (100)"),
        ("x/s", "bad rate 'x/s': 'x' is not a count"),
        ("10/fortnight", "the period 'fortnight' must be a unit"),
        ("0/s", "rate '0/s' must be positive"),
        ("5/0s", "rate '5/0s' has a zero period"),
    ],
)
def test_parse_rate_rejects_bad_values(value, message):
    with pytest.raises(ValueError) as info:
        parse_rate(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "bind", "expected"),
    [
        ("0.0.0.0:8080", True, ("0.0.0.0", 8080)),
        (":8080", True, ("0.0.0.0", 8080)),
        ("[::1]:8080", True, ("::1", 8080)),
        ("127.0.0.1:0", True, ("127.0.0.1", 0)),
        ("users.internal:80", False, ("users.internal", 80)),
        ("my_service:9000", False, ("my_service", 9000)),
        ("[2001:db8::1]:443", False, ("2001:db8::1", 443)),
    ],
)
def test_parse_address_splits_host_and_port(text, bind, expected):
    assert parse_address(text, bind=bind) == expected


@pytest.mark.parametrize(
    ("text", "bind", "message"),
    [
        ("localhost", False, "missing ':port'"),
        ("::1:8080", True, "put an IPv6 address in brackets"),
        ("[::1:8080", True, "missing ']'"),
        ("[zz::1]:80", True, "'zz::1' is not an IPv6 address"),
        (":9000", False, "missing host"),
        ("host:0", False, "the port must be a number from 1 to 65535"),
        ("host:65536", True, "the port must be a number from 0 to 65535"),
        ("host:http", False, "the port must be a number"),
        ("999.1.1.1:80", False, "'999.1.1.1' is not a host name or IP address"),
        ("bad host:80", False, "is not a host name"),
    ],
)
def test_parse_address_rejects_bad_addresses(text, bind, message):
    with pytest.raises(ValueError) as info:
        parse_address(text, bind=bind)
    assert message in str(info.value)


def test_parse_cidr_normalises_and_hints_at_host_bits():
    assert parse_cidr("10.0.0.0/8") == "10.0.0.0/8"
    assert parse_cidr("192.168.1.7") == "192.168.1.7/32"
    assert parse_cidr("fd00::/8") == "fd00::/8"
    with pytest.raises(ValueError, match=r"did you mean 10\.0\.0\.0/8\?"):
        parse_cidr("10.0.0.1/8")
    with pytest.raises(ValueError, match="bad CIDR 'ten'"):
        parse_cidr("ten")


def test_parse_host_pattern_accepts_exact_and_wildcard_lowercased():
    assert parse_host_pattern("API.Example.com") == "api.example.com"
    assert parse_host_pattern("*.example.com") == "*.example.com"
    for bad, message in [
        ("*", "leave 'host' out"),
        ("api.*.com", "a wildcard is only allowed"),
        ("*example.com", "a wildcard is only allowed"),
        ("example.com:8080", "must not include a port"),
        ("-bad-.com", "not a valid host name"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_host_pattern(bad)


def test_parse_method_uppercases_standard_methods_and_accepts_tokens():
    assert parse_method("get") == "GET"
    assert parse_method("Options") == "OPTIONS"
    assert parse_method("PURGE") == "PURGE"
    for bad in ("gett", "GE T", "*", ""):
        with pytest.raises(ValueError, match="unknown method"):
            parse_method(bad)


def test_parse_path_pattern_describes_literal_params_and_wildcard():
    pattern = parse_path_pattern("/api/users/{id}/posts/{post_id}")
    assert pattern.literal == "/api/users/"
    assert pattern.params == ("id", "post_id")
    assert not pattern.wildcard
    assert pattern.shape == "/api/users/{}/posts/{}"
    pattern = parse_path_pattern("/static/*")
    assert (pattern.literal, pattern.wildcard, pattern.shape) == ("/static/", True, "/static/*")
    assert parse_path_pattern("/").literal == "/"
    assert parse_path_pattern("/users/").shape == "/users/"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("users", "must start with '/'"),
        ("/a/*/b", "'*' must be the last segment"),
        ("/a*", "'*' must be a whole segment"),
        ("/users/id{id}", "a parameter must be a whole segment"),
        ("/users/{id", "a parameter must be a whole segment"),
        ("/users/{1d}", "bad parameter '{1d}'"),
        ("/users/{}", "bad parameter '{}'"),
        ("/a/{id}/b/{id}", "parameter {id} appears twice"),
        ("/a//b", "empty segment"),
        ("/a b", "characters not allowed in a URL path"),
        ("/a?b=1", "characters not allowed in a URL path"),
    ],
)
def test_parse_path_pattern_rejects_bad_patterns(path, message):
    with pytest.raises(ValueError) as info:
        parse_path_pattern(path)
    assert message in str(info.value)


def test_parse_strip_prefix_true_false_and_strings():
    pattern = parse_path_pattern("/api/v1/{id}")
    assert parse_strip_prefix(True, pattern) == "/api/v1"
    assert parse_strip_prefix(False, pattern) is None
    assert parse_strip_prefix("/api", pattern) == "/api"
    with pytest.raises(ValueError, match="'/v2' is not a prefix of the literal part"):
        parse_strip_prefix("/v2", pattern)
    with pytest.raises(ValueError, match="must start with '/'"):
        parse_strip_prefix("api", pattern)
    with pytest.raises(ValueError, match="true strips nothing"):
        parse_strip_prefix(True, parse_path_pattern("/{id}"))


def test_check_rewrite_knows_params_and_wildcard():
    pattern = parse_path_pattern("/users/{id}/*")
    assert check_rewrite("/v2/u-{id}/{*}", pattern) == "/v2/u-{id}/{*}"
    for template, message in [
        ("v2", "must start with '/'"),
        ("/v2/{name}", r"\{name\} is not a parameter of match.path \(parameters: id\)"),
        ("/v2/{id", "unbalanced braces"),
        ("/v2?x=1", "no '\\?' or '#'"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_rewrite(template, pattern)
    with pytest.raises(ValueError, match=r"\{\*\} needs a match.path ending in '/\*'"):
        check_rewrite("/{*}", parse_path_pattern("/users"))
