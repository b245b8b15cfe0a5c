import pytest

from isekai.config.redis_url import (
    RedisURL,
    check_redis_url,
    describe_redis_url,
    parse_redis_url,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1", RedisURL("redis", (("127.0.0.1", 6379),))),
        ("redis://localhost:6380/3", RedisURL("redis", (("localhost", 6380),), db=3)),
        (
            "redis://redis_1.internal.example:1/",
            RedisURL("redis", (("redis_1.internal.example", 1),)),
        ),
        ("REDIS://h:65535/15", RedisURL("redis", (("h", 65535),), db=15)),
        ("redis://[::1]:7000/2", RedisURL("redis", (("::1", 7000),), db=2)),
        ("redis://[fe80::1]", RedisURL("redis", (("fe80::1", 6379),))),
        (
            "redis://alice:s%40cret@h:6379/1",
            RedisURL("redis", (("h", 6379),), db=1, username="alice", password="s@cret"),
        ),
        ("redis://:pw@h", RedisURL("redis", (("h", 6379),), password="pw")),
        ("redis://:p@ss@h", RedisURL("redis", (("h", 6379),), password="p@ss")),
        ("rediss://h.example:6380/0", RedisURL("rediss", (("h.example", 6380),))),
        ("unix:///run/redis.sock", RedisURL("unix", path="/run/redis.sock")),
        ("unix:///run/redis.sock?db=4", RedisURL("unix", path="/run/redis.sock", db=4)),
        ("unix://:pw@/run/redis.sock", RedisURL("unix", path="/run/redis.sock", password="pw")),
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster",
            RedisURL(
                "redis+sentinel",
                (("10.0.0.1", 26379), ("10.0.0.2", 26380)),
                service="mymaster",
            ),
        ),
        (
            "redis+sentinel://u:pw@s1/my.master-1/7",
            RedisURL(
                "redis+sentinel",
                (("s1", 26379),),
                service="my.master-1",
                db=7,
                username="u",
                password="pw",
            ),
        ),
        (
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001,[::1]:7002",
            RedisURL("redis+cluster", (("127.0.0.1", 7000), ("127.0.0.1", 7001), ("::1", 7002))),
        ),
        ("redis+cluster://:pw@node", RedisURL("redis+cluster", (("node", 6379),), password="pw")),
    ],
)
def test_parse_redis_url_accepts_every_form(url, expected):
    assert parse_redis_url(url) == expected
    assert check_redis_url(url) == url


def test_parse_redis_url_marks_only_rediss_as_tls():
    assert parse_redis_url("rediss://h").tls
    assert not parse_redis_url("redis://h").tls


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "expected a Redis URL"),
        ("127.0.0.1:6379", "has no scheme"),
        ("http://h:6379", "scheme 'http://'"),
        ("rediss+cluster://h:1", "scheme 'rediss+cluster://'"),
        ("redis:// h", "spaces or control characters"),
        ("redis://h/0#x", "fragment"),
        ("redis://h/0?socket_timeout=1", "query options"),
        ("redis://h?", "query options"),
        ("redis://", "names no host"),
        ("redis://:6379", "names no host"),
        ("redis://h:0", "port '0' is not 1-65535"),
        ("redis://h:65536", "port '65536' is not 1-65535"),
        ("redis://h:x", "port 'x' is not 1-65535"),
        ("redis://h:", "port '' is not 1-65535"),
        ("redis://h/16", "database '16' is not an integer 0-15"),
        ("redis://h/-1", "database '-1' is not an integer 0-15"),
        ("redis://h/db", "database 'db' is not an integer 0-15"),
        ("redis://h/1/2", "database '1/2' is not an integer 0-15"),
        ("redis://a,b", "names 2 hosts"),
        ("redis://bad host", "spaces or control characters"),
        ("redis://-bad-.example", "is not a host name"),
        ("redis://a..b", "is not a host name"),
        ("redis://300.1.1.1", "'300.1.1.1' is not an IPv4 address"),
        ("redis://1.2.3", "'1.2.3' is not an IPv4 address"),
        ("redis://[::1", "'[' of an IPv6 address is not closed"),
        ("redis://[::g]:1", "'::g' is not an IPv6 address"),
        ("redis://[::1]x", "expected ':PORT' after [::1]"),
        ("redis://::1:6379", "has several ':'"),
        ("redis://user@h", "a colon before the password"),
        ("redis://user:@h", "empty password"),
        ("redis://:50%@h", "'%' that is not a %XX escape"),
        ("unix://h/run/redis.sock", "a unix URL has no host"),
        ("unix://", "names no socket path"),
        ("unix:///", "names no socket path"),
        ("unix:///s.sock?db=16", "database '16' is not an integer 0-15"),
        ("unix:///s.sock?timeout=1", "the only query option of a unix URL is ?db=DB"),
        ("unix:///s.sock?db=1&db=2", "the only query option of a unix URL is ?db=DB"),
        ("unix:///s%00.sock", "contains NUL"),
        ("redis+sentinel://s1:26379", "names no service"),
        ("redis+sentinel://s1:26379/", "names no service"),
        ("redis+sentinel://s1:26379/bad*name", "service name 'bad*name'"),
        ("redis+sentinel://s1:26379/m/1/2", "after /SERVICE comes at most /DB"),
        ("redis+sentinel://s1:26379/m/", "after /SERVICE comes at most /DB"),
        ("redis+sentinel://s1:26379/m/99", "database '99' is not an integer 0-15"),
        ("redis+sentinel://s1:1,,s2:2/m", "empty host in its host list"),
        ("redis+sentinel://s1:99999/m", "port '99999' is not 1-65535"),
        ("redis+cluster://n1:7000/0", "a cluster has only database 0"),
        ("redis+cluster://n1:7000,n2:x", "port 'x' is not 1-65535"),
    ],
)
def test_parse_redis_url_refuses_with_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=None) as caught:
        check_redis_url(url)
    assert message in str(caught.value)


def test_parse_redis_url_refuses_non_strings():
    with pytest.raises(ValueError, match="expected a Redis URL"):
        parse_redis_url(None)  # type: ignore[arg-type]


def test_parse_redis_url_errors_never_show_the_password():
    with pytest.raises(ValueError) as caught:
        parse_redis_url("redis://alice:hunter2@h:99999")
    assert "hunter2" not in str(caught.value)
    assert "alice:***@h:99999" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://alice:hunter2@h:6379/0", "redis://alice:***@h:6379/0"),
        ("redis://:hunter2@h", "redis://:***@h"),
        ("redis://p@ss:x@h", "redis://p@ss:***@h"),  # the last '@' before the host ends it
        ("redis+sentinel://:pw@s1:1,s2:2/m", "redis+sentinel://:***@s1:1,s2:2/m"),
        ("unix://:pw@/run/r.sock", "unix://:***@/run/r.sock"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://token@h", "redis://***@h"),
        ("not a url", "not a url"),
    ],
)
def test_describe_redis_url_hides_the_password(url, shown):
    assert describe_redis_url(url) == shown


def test_describe_redis_url_never_raises_on_odd_input():
    assert describe_redis_url(None) == "None"  # type: ignore[arg-type]
    assert describe_redis_url("redis://[") == "redis://["
