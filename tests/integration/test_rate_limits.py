"""The ``rate_limit`` policy (local table) through a real gateway in front of a real upstream:
the 429 and its headers read off the wire, every key part, tiers, several limits on a route,
cost, each algorithm's admission, the admitted rate of a 2-worker gateway counted at the
upstream, the decisions in ``/metrics`` and ``GET /api/rate-limits``."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time

import pytest

from tests.integration.test_api_keys import call
from tests.support.gateway import wait_for

API_KEY_FREE = "free-consumer-key-0123456789"
API_KEY_GOLD = "gold-consumer-key-0123456789"


def statuses(port: int, path: str, n: int, headers: dict[str, str] | None = None) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return [call(port, path, headers, conn=conn)[0] for _ in range(n)]
    finally:
        conn.close()


def config(
    upstream_port: int, policies: str, routes: str, workers: int | str = 1, admin: bool = False
) -> str:
    return f"""
workers: {workers}
{"" if admin else "admin: {enabled: false}"}
security: {{api_key_pepper: "rate-limit-pepper-0123456789"}}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
consumers:
  - {{name: freebie, tier: free, keys: [{{id: f1, key: "{API_KEY_FREE}"}}]}}
  - {{name: goldie, tier: gold, keys: [{{id: g1, key: "{API_KEY_GOLD}"}}]}}
policies:
  keys: {{type: api_key}}
{policies}
routes:
{routes}
"""


def test_rate_limits_429_carries_retry_after_and_the_ratelimit_headers(start_gateway, upstream):
    gw = start_gateway(
        config(
            upstream.port,
            "  per_ip: {type: rate_limit, rate: 3/m, key: client_ip, headers: true,"
            " legacy_headers: true}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [per_ip]}",
        )
    )
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    seen = [call(gw.port, "/a", conn=conn) for _ in range(4)]
    conn.close()
    assert [status for status, _, _ in seen] == [200, 200, 200, 429]
    _, first, _ = seen[0]
    assert first["ratelimit-policy"] == '"per_ip";q=3;w=60'
    assert first["ratelimit"].startswith('"per_ip";r=2;t=')
    assert (first["x-ratelimit-limit"], first["x-ratelimit-remaining"]) == ("3", "2")
    assert 0 < int(first["x-ratelimit-reset"]) <= 20  # one request refills in 20 s
    assert seen[2][1]["ratelimit"].startswith('"per_ip";r=0;t=')
    status, headers, body = seen[3]
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["success"] is False and error["policy"] == "rate_limit"
    assert error["error"] == "rate limit exceeded"
    assert error["request_id"] == headers["x-request-id"]
    assert 1 <= int(headers["retry-after"]) <= 20
    assert headers["ratelimit"].startswith('"per_ip";r=0;t=')
    assert headers["ratelimit-policy"] == '"per_ip";q=3;w=60'
    assert headers["x-ratelimit-remaining"] == "0"
    assert len(upstream.requests) == 3  # the refused one never reached the upstream


def test_rate_limits_allowed_responses_carry_no_headers_unless_asked(start_gateway, upstream):
    gw = start_gateway(
        config(
            upstream.port,
            "  quiet: {type: rate_limit, rate: 1/m}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [quiet]}",
        )
    )
    status, headers, _ = call(gw.port, "/a")
    assert status == 200 and "ratelimit" not in headers and "x-ratelimit-limit" not in headers
    status, headers, _ = call(gw.port, "/a")
    assert status == 429
    assert headers["ratelimit-policy"] == '"quiet";q=1;w=60'
    assert "x-ratelimit-limit" not in headers  # legacy_headers is off


def test_rate_limits_header_and_param_keys_count_apart(start_gateway, upstream):
    gw = start_gateway(
        config(
            upstream.port,
            "  by_user: {type: rate_limit, rate: 2/m, key: 'header:X-User'}\n"
            "  by_param: {type: rate_limit, rate: 2/m, key: 'param:k'}",
            "  - {name: h, match: {path: /h}, upstream: app, policies: [by_user]}\n"
            "  - {name: p, match: {path: /p}, upstream: app, policies: [by_param]}",
        )
    )
    assert statuses(gw.port, "/h", 3, {"X-User": "ann"}) == [200, 200, 429]
    assert statuses(gw.port, "/h", 2, {"x-user": "bob"}) == [200, 200]  # another bucket
    # no header: counted by the client address, in a bucket of its own (not escaped)
    assert statuses(gw.port, "/h", 3) == [200, 200, 429]
    # the query value is percent-decoded: ?k=ab and ?k=%61b are one bucket
    assert statuses(gw.port, "/p?k=ab", 1) == [200]
    assert statuses(gw.port, "/p?x=1&k=%61b", 2) == [200, 429]
    assert statuses(gw.port, "/p?k=other", 1) == [200]


def test_rate_limits_tiers_and_composed_consumer_route_keys(start_gateway, upstream):
    gw = start_gateway(
        config(
            upstream.port,
            "  per_consumer: {type: rate_limit, key: [consumer, route], rate: 3/m,\n"
            "                 tiers: {free: {rate: 1/m}, gold: {rate: 100/m}}}",
            "  - {name: one, match: {path: /one}, upstream: app, policies: [keys, per_consumer]}\n"
            "  - {name: two, match: {path: /two}, upstream: app, policies: [keys, per_consumer]}",
        )
    )
    free = {"X-API-Key": API_KEY_FREE}
    gold = {"X-API-Key": API_KEY_GOLD}
    assert statuses(gw.port, "/one", 2, free) == [200, 429]  # the free tier: 1/m
    assert statuses(gw.port, "/two", 2, free) == [200, 429]  # per route: a bucket of its own
    assert statuses(gw.port, "/one", 10, gold) == [200] * 10  # gold: 100/m


def test_rate_limits_every_limit_on_a_route_must_allow_and_cost_counts(start_gateway, upstream):
    gw = start_gateway(
        config(
            upstream.port,
            "  wide: {type: rate_limit, rate: 100/m}\n"
            "  narrow: {type: rate_limit, rate: 2/m, key: route}\n"
            "  heavy: {type: rate_limit, rate: 5/m, cost: 2}",
            "  - {name: both, match: {path: /both}, upstream: app, policies: [wide, narrow]}\n"
            "  - {name: heavy, match: {path: /heavy}, upstream: app, policies: [heavy]}",
        )
    )
    assert statuses(gw.port, "/both", 3) == [200, 200, 429]
    assert statuses(gw.port, "/heavy", 3) == [200, 200, 429]  # 2 + 2, then 1 left < 2


@pytest.mark.parametrize("algorithm", ["gcra", "fixed_window", "sliding_window"])
def test_rate_limits_each_algorithm_admits_the_count_then_refuses(
    start_gateway, upstream, algorithm
):
    gw = start_gateway(
        config(
            upstream.port,
            f"  lim: {{type: rate_limit, rate: 4/h, algorithm: {algorithm}}}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [lim]}",
        )
    )
    got = statuses(gw.port, "/a", 6)
    assert got == [200, 200, 200, 200, 429, 429]


def _hammer(port: int, seconds: float, connections: int) -> tuple[int, int, float]:
    """Keep-alive GETs from ``connections`` threads for ``seconds``: (200s, 429s, elapsed)."""
    counts = [0, 0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        ok = limited = 0
        try:
            for _ in range(100_000):  # bounded in count and in time
                if time.monotonic() >= stop_at:
                    break
                status = call(port, "/a", conn=conn)[0]
                ok += status == 200
                limited += status == 429
        finally:
            conn.close()
            with lock:
                counts[0] += ok
                counts[1] += limited

    started = time.monotonic()
    threads = [threading.Thread(target=run) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 15)
    return counts[0], counts[1], time.monotonic() - started


@pytest.mark.parametrize("workers", [2, "auto"])
def test_rate_limits_two_workers_admit_the_host_rate_within_5_percent(
    start_gateway, upstream, workers
):
    rate, burst, seconds = 100, 20, 3.0
    gw = start_gateway(
        config(
            upstream.port,
            f"  per_ip: {{type: rate_limit, rate: {rate}/s, burst: {burst}}}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [per_ip]}",
            workers=workers,
        )
    )
    assert wait_for(lambda: len(gw.workers()) == 2, timeout=10)
    time.sleep(0.5)  # the bucket is whole again after the start-up checks
    ok, limited, elapsed = _hammer(gw.port, seconds, connections=6)
    admitted = len(upstream.requests)
    assert admitted == ok
    expected = burst + rate * elapsed
    assert limited > admitted, "the load did not exceed the limit: nothing was measured"
    assert abs(admitted - expected) <= 0.05 * expected, (admitted, expected, elapsed)


def test_rate_limits_decisions_are_in_metrics(start_gateway, upstream):
    from tests.support.observe import free_port, scrape, value

    metrics_port = free_port()
    text = config(
        upstream.port,
        "  per_user: {type: rate_limit, rate: 2/m, key: 'header:X-User'}",
        "  - {name: a, match: {path: /a}, upstream: app, policies: [per_user]}",
    )
    text += f"observability: {{metrics: {{bind: '127.0.0.1:{metrics_port}'}}}}\n"
    gw = start_gateway(text)
    statuses(gw.port, "/a", 3, {"X-User": "ann"})
    statuses(gw.port, "/a", 1)
    samples = scrape(metrics_port)
    name = "isekai_rate_limit_decisions_total"

    def count(key: str, decision: str) -> float:
        return value(samples, name, policy="per_user", tier="", key=key, decision=decision)

    assert count("header:x-user", "allowed") == 2
    assert count("header:x-user", "limited") == 1
    assert count("client_ip", "allowed") == 1


def test_rate_limits_admin_api_lists_limits_and_reads_a_key(tmp_path, upstream):
    from tests.integration.test_api_keys import ADMIN_ENV, AdminClient
    from tests.support.gateway import Gateway

    path = tmp_path / "gw.yaml"
    text = config(
        upstream.port,
        "  per_ip: {type: rate_limit, rate: 5/m, burst: 4}\n"
        "  per_user: {type: rate_limit, key: ['header:X-User', route], rate: 3/m,\n"
        "             tiers: {gold: {rate: 9/m}}}",
        "  - {name: a, match: {path: /a}, upstream: app, policies: [per_ip, per_user]}\n"
        "  - {name: b, match: {path: /b}, upstream: app,\n"
        "     policies: [{type: rate_limit, rate: 1/s, algorithm: fixed_window}]}",
        workers=2,
        admin=True,
    )
    text += (
        "admin:\n  bind: '127.0.0.1:0'\n"
        "  auth: {jwt_secret: 'rate-limits-secret-rate-limits-secret-01'}\n"
        f"store: {{url: 'sqlite:///{tmp_path / 'store.db'}'}}\n"
    )
    path.write_text(text)
    gw = Gateway(path, env=ADMIN_ENV, startup_timeout=30)
    try:
        admin = AdminClient(gw)
        status, body, _ = admin.call("GET", "/api/rate-limits")
        assert status == 200, body
        views = {view["name"]: view for view in body["data"]["policies"]}
        assert set(views) == {"per_ip", "per_user", "routes.b.policies[0]"}
        assert views["per_ip"]["rate"] == "5/m" and views["per_ip"]["burst"] == 4
        assert views["per_ip"]["used_by"] == ["routes.a"]
        assert views["per_user"]["tiers"] == {"gold": {"rate": "9/m", "burst": None}}
        assert views["routes.b.policies[0]"]["algorithm"] == "fixed_window"
        assert statuses(gw.port, "/a", 2, {"X-User": "ann"}) == [200, 200]
        status, body, _ = admin.call("GET", "/api/rate-limits/per_user?key=ann&key=a")
        assert status == 200, body
        state = body["data"]["state"]
        assert (state["backend"], state["limit"], state["remaining"]) == ("local", 3, 1)
        status, body, _ = admin.call("GET", "/api/rate-limits/per_ip?key=127.0.0.1")
        assert status == 200 and body["data"]["state"]["remaining"] == 2, body
        # a key nobody used reads as whole
        status, body, _ = admin.call("GET", "/api/rate-limits/per_user?key=zed&key=a")
        assert body["data"]["state"]["remaining"] == 3
        # refusals
        assert admin.call("GET", "/api/rate-limits/nope?key=x")[0] == 404
        status, body, _ = admin.call("GET", "/api/rate-limits/routes.b.policies%5B0%5D")
        assert status == 200 and body["data"]["policy"]["algorithm"] == "fixed_window", body
        assert "state" not in body["data"]
        assert admin.call("GET", "/api/rate-limits/per_ip?tier=gold")[0] == 400
        status, body, _ = admin.call("GET", "/api/rate-limits/per_user?key=a&key=b&key=c")
        assert status == 400 and "the key has 2 parts" in body["message"], body
        assert admin.call("GET", "/api/rate-limits/per_user?key=a&tier=bronze")[0] == 400
        assert admin.call("GET", "/api/rate-limits", token=None)[0] == 401
    finally:
        gw.stop()


def test_rate_limits_a_refusal_carries_the_refusing_policys_headers(start_gateway, upstream):
    """An earlier rate_limit with ``headers: true`` that allowed the request must not write
    its own (roomier) numbers over the 429 of a later one: the response phase of the chain
    runs on a policy's answer too."""
    gw = start_gateway(
        config(
            upstream.port,
            "  wide: {type: rate_limit, rate: 100/m, headers: true, legacy_headers: true}\n"
            "  narrow: {type: rate_limit, rate: 1/m, key: route}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [wide, narrow]}",
        )
    )
    status, headers, _ = call(gw.port, "/a")
    assert status == 200 and headers["ratelimit"].startswith('"wide";r=99;'), headers
    status, headers, _ = call(gw.port, "/a")
    assert status == 429
    assert headers["ratelimit-policy"] == '"narrow";q=1;w=60', headers
    assert headers["ratelimit"].startswith('"narrow";r=0;t='), headers
    assert "x-ratelimit-remaining" not in headers, headers  # narrow has no legacy headers


SF_POLICY = re.compile(r'^"[ -~]*";q=\d{1,15};w=\d{1,15}$')  # RFC 8941 sf-integers
SF_STATE = re.compile(r'^"[ -~]*";r=\d{1,15};t=\d{1,15}$')


def test_rate_limits_header_numbers_stay_structured_field_integers(start_gateway, upstream):
    """Huge counts and periods (the config takes any) never make a negative, overflowed or
    longer-than-15-digit integer, and Retry-After stays a positive integer."""
    gw = start_gateway(
        config(
            upstream.port,
            "  slow: {type: rate_limit, rate: 1/30000000000000000000s, legacy_headers: true}\n"
            "  many: {type: rate_limit, rate: 10000000000000000000/s, headers: true}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [slow]}\n"
            "  - {name: b, match: {path: /b}, upstream: app,\n"
            "     policies: [{type: rate_limit, rate: 10000000000000000000/s, headers: true}]}\n"
            "  - {name: c, match: {path: /c}, upstream: app, policies: [many]}",
        )
    )
    assert call(gw.port, "/a")[0] == 200
    status, headers, _ = call(gw.port, "/a")
    assert status == 429
    assert SF_POLICY.match(headers["ratelimit-policy"]), headers
    assert SF_STATE.match(headers["ratelimit"]), headers
    assert re.fullmatch(r"[1-9]\d{0,14}", headers["retry-after"]), headers
    for name in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"):
        assert re.fullmatch(r"\d{1,15}", headers[name]), headers
    for path, label in (("/b", '"routes.b.policies[0]"'), ("/c", '"many"')):
        status, headers, _ = call(gw.port, path)
        assert status == 200
        assert headers["ratelimit-policy"].startswith(label + ";"), headers
        assert SF_POLICY.match(headers["ratelimit-policy"]), headers
        assert SF_STATE.match(headers["ratelimit"]), headers


def test_rate_limits_state_survives_killed_workers(start_gateway, upstream):
    """The table is the master's shared mapping: workers replaced after a SIGKILL inherit it,
    so a client's spent budget stays spent."""
    import os
    import signal

    gw = start_gateway(
        config(
            upstream.port,
            "  per_route: {type: rate_limit, rate: 4/h, key: route}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [per_route]}",
            workers=2,
        )
    )
    assert wait_for(lambda: len(gw.workers()) == 2, timeout=10)
    assert statuses(gw.port, "/a", 3) == [200, 200, 200]
    old = set(gw.workers())
    mark = gw.mark()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: len(set(gw.workers()) - old) == 2, timeout=15), gw.output()
    assert gw.wait_for_log(r"worker \d+ up", timeout=15, since=mark), gw.output()
    time.sleep(0.5)  # the second replacement too
    assert statuses(gw.port, "/a", 2) == [200, 429]


def test_rate_limits_policy_on_listener_and_route_takes_once(start_gateway, upstream):
    """A named rate_limit listed on a listener and on one of its routes is one instance twice
    in the request's chain: it must take its cost once, not twice (4/h admits 4)."""
    text = config(
        upstream.port,
        "  per_ip: {type: rate_limit, rate: 4/h}",
        "  - {name: a, match: {path: /a}, upstream: app, policies: [per_ip]}\n"
        "  - {name: b, match: {path: /b}, upstream: app}",
    ).replace(
        'listeners: [{name: public, bind: "127.0.0.1:0"}]',
        'listeners: [{name: public, bind: "127.0.0.1:0", policies: [per_ip]}]',
    )
    gw = start_gateway(text)
    assert statuses(gw.port, "/a", 3) == [200, 200, 200]
    assert statuses(gw.port, "/b", 2) == [200, 429]
