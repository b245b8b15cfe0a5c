"""``rate_limit`` with ``backend: redis`` through real gateways: two gateway instances on one
Redis admit the shared rate (counted at the upstream), and a Redis killed mid-test turns into
``on_backend_error`` (allow: 200, deny: 503 JSON), never a 500, counted in ``/metrics``, with
limiting back once Redis is."""

from __future__ import annotations

import json
import threading
import time
import uuid

from tests.integration.test_rate_limits import _hammer, call, config, statuses
from tests.support.gateway import wait_for
from tests.support.redis_servers import RedisServer


def test_rate_limits_two_gateways_on_one_redis_admit_the_rate_within_10_percent(
    start_gateway, upstream, require_service
):
    url = require_service("redis")
    rate, burst, seconds = 60, 10, 3.0
    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    text = config(
        upstream.port,
        f"  shared: {{type: rate_limit, rate: {rate}/s, burst: {burst}, key: route,\n"
        f"           backend: redis, redis_url: '{url}', key_prefix: '{prefix}'}}",
        "  - {name: a, match: {path: /a}, upstream: app, policies: [shared]}",
    )
    first = start_gateway(text, name="one.yaml")
    second = start_gateway(text, name="two.yaml")
    results: list[tuple[int, int, float]] = []

    def load(port: int) -> None:
        results.append(_hammer(port, seconds, connections=3))

    threads = [threading.Thread(target=load, args=(gw.port,)) for gw in (first, second)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 20)
    elapsed = time.monotonic() - started
    ok = sum(r[0] for r in results)
    limited = sum(r[1] for r in results)
    assert all(r[0] > 0 for r in results), results  # both gateways admitted some
    admitted = len(upstream.requests)
    assert admitted == ok
    assert limited > admitted, "the load did not exceed the limit: nothing was measured"
    expected = burst + rate * elapsed
    assert abs(admitted - expected) <= 0.10 * expected, (admitted, expected, elapsed)


def test_rate_limits_redis_killed_mid_test_follows_on_backend_error(start_gateway, upstream):
    from tests.support.observe import free_port, scrape, value

    metrics_port = free_port()
    with RedisServer() as redis:
        text = config(
            upstream.port,
            f"  lenient: {{type: rate_limit, rate: 2/m, backend: redis, redis_url: '{redis.url}',"
            " on_backend_error: allow}\n"
            f"  strict: {{type: rate_limit, rate: 2/m, backend: redis, redis_url: '{redis.url}',"
            " on_backend_error: deny}",
            "  - {name: allow, match: {path: /allow}, upstream: app, policies: [lenient]}\n"
            "  - {name: deny, match: {path: /deny}, upstream: app, policies: [strict]}",
        )
        text += f"observability: {{metrics: {{bind: '127.0.0.1:{metrics_port}'}}}}\n"
        gw = start_gateway(text)
        assert statuses(gw.port, "/allow", 3) == [200, 200, 429]
        assert statuses(gw.port, "/deny", 3) == [200, 200, 429]
        redis.stop()  # SIGKILL: as a crash
        mark = gw.mark()
        allow = statuses(gw.port, "/allow", 5)
        assert allow == [200] * 5, allow
        for _ in range(3):
            status, headers, body = call(gw.port, "/deny")
            assert status == 503, body
            error = json.loads(body)
            assert error["policy"] == "rate_limit" and "backend" in error["error"]
            assert headers["retry-after"] == "1"
        assert gw.wait_for_log(r"WARNING .*rate_limit", timeout=5, since=mark), gw.output()
        samples = scrape(metrics_port)
        name = "isekai_rate_limit_decisions_total"
        labels = {"tier": "", "key": "client_ip"}
        assert value(samples, name, policy="lenient", decision="error_allowed", **labels) == 5
        assert value(samples, name, policy="strict", decision="error_denied", **labels) == 3
        assert value(samples, name, policy="lenient", decision="limited", **labels) == 1
        redis.start()  # an empty Redis on the same port: limiting resumes after the back-off
        assert wait_for(lambda: statuses(gw.port, "/deny", 1) == [200], timeout=10)
        assert wait_for(lambda: statuses(gw.port, "/deny", 1) == [429], timeout=5)


def test_rate_limits_hung_redis_past_the_policy_deadline_follows_on_backend_error(
    start_gateway, upstream
):
    """A ``backend_timeout`` longer than the policy's ``deadline``: a Redis that accepts and
    never answers must still end in ``on_backend_error`` (allow: 200), not in the slow path's
    503 "policy did not finish in time"."""
    from tests.support.observe import free_port
    from tests.unit.policies.test_rate_limit_redis import Listener

    port = free_port()
    with Listener(port, silent=True):
        text = config(
            upstream.port,
            "  lenient: {type: rate_limit, rate: 2/m, backend: redis, deadline: 300ms,\n"
            f"            redis_url: 'redis://127.0.0.1:{port}', backend_timeout: 3s,\n"
            "            on_backend_error: allow}",
            "  - {name: a, match: {path: /a}, upstream: app, policies: [lenient]}",
        )
        gw = start_gateway(text)
        status, _, body = call(gw.port, "/a")
        assert status == 200, body
