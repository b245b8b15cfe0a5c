"""Upstreams with the resilience keys and weighted targets through the admin API: accepted and
applied as the YAML loader reads them, refused with a 422 naming the path of the mistake."""

from __future__ import annotations

import pytest
from admin_helpers import UPSTREAM, admin, run

from isekai.config.schema import Target
from isekai.config.upstream import Breaker, HealthCheck, Outlier, Retry

RESILIENT = {
    "name": "orders",
    "targets": ["127.0.0.1:9002", {"address": "127.0.0.1:9003", "weight": 3}],
    "balancer": "consistent_hash",
    "hash_on": "header:X-User",
    "hash_algorithm": "maglev",
    "panic_threshold": 50,
    "max_requests": 100,
    "max_pending": 10,
    "max_retries": 5,
    "health": {"path": "/healthz", "interval": "5s", "timeout": "1s", "expected_status": [200]},
    "outlier": {"consecutive_failures": 5, "base_ejection": "30s"},
    "breaker": {"failure_ratio": 0.5, "window": "10s", "min_requests": 20, "open_for": "30s"},
    "retry": {"attempts": 3, "on": ["connect_failure", "reset", 502, 503], "backoff": "25ms"},
}

FILE_YAML = """
upstreams:
  users:
    targets: ["127.0.0.1:9001", {address: "127.0.0.1:9004", weight: 2}]
    retry: {on: [reset, 503]}
admin:
  bind: "127.0.0.1:0"
  auth: {jwt_secret: "%s", jwt_expiry: 1h}
""" % ("s" * 40)


def test_admin_upstream_resilience_post_applies_every_key(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/upstreams", RESILIENT)
            assert reply.status == 201, reply
            spec = {key: value for key, value in RESILIENT.items() if key != "name"}
            assert reply.data["spec"] == spec
            upstream = api.applied[-1].upstreams["orders"]
            assert upstream.targets == (
                Target("127.0.0.1", 9002, 1),
                Target("127.0.0.1", 9003, 3),
            )
            assert (upstream.balancer, upstream.hash_on) == ("consistent_hash", "header:X-User")
            assert upstream.hash_algorithm == "maglev"
            assert (upstream.panic_threshold, upstream.max_requests) == (50.0, 100)
            assert (upstream.max_pending, upstream.max_retries) == (10, 5)
            assert upstream.health == HealthCheck("/healthz", expected_status=(200,))
            assert upstream.outlier == Outlier()
            assert upstream.breaker == Breaker()
            assert upstream.retry == Retry(attempts=3, on=("connect_failure", "reset", 502, 503))

    run(scenario())


def test_admin_upstream_resilience_put_and_patch_change_the_keys(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            assert (await api.post("/api/upstreams", UPSTREAM)).status == 201
            reply = await api.put(
                "/api/upstreams/orders",
                {
                    "targets": [{"address": "127.0.0.1:9002", "weight": 5}],
                    "balancer": "least_conn",
                    "retry": {"on": ["timeout", 504]},
                },
                headers={"If-Match": '"1"'},
            )
            assert reply.status == 200, reply
            upstream = api.applied[-1].upstreams["orders"]
            assert upstream.targets == (Target("127.0.0.1", 9002, 5),)
            assert upstream.balancer == "least_conn"
            assert upstream.retry.on == ("timeout", 504)
            reply = await api.patch("/api/upstreams/orders", {"retry": None, "max_requests": 8})
            assert reply.status == 200, reply
            upstream = api.applied[-1].upstreams["orders"]
            assert (upstream.retry, upstream.max_requests) == (None, 8)

    run(scenario())


BAD = {
    # refused by the JSON Schema
    "weight zero": (
        {"targets": ["127.0.0.1:9002", {"address": "127.0.0.1:9003", "weight": 0}]},
        "upstream.targets[1].weight",
    ),
    "target unknown key": (
        {"targets": [{"address": "127.0.0.1:9003", "wieght": 2}]},
        "upstream.targets[0].wieght",
    ),
    "retry on a 4xx": (
        {"targets": ["127.0.0.1:9002"], "retry": {"on": ["connect_failure", "reset", 404]}},
        "upstream.retry.on[2]",
    ),
    "retry on unknown word": (
        {"targets": ["127.0.0.1:9002"], "retry": {"on": ["refused"]}},
        "upstream.retry.on[0]",
    ),
    "hash_on without consistent_hash": (
        {"targets": ["127.0.0.1:9002"], "balancer": "p2c", "hash_on": "client_ip"},
        "upstream.hash_on",
    ),
    "hash_on grammar": (
        {"targets": ["127.0.0.1:9002"], "balancer": "consistent_hash", "hash_on": "query:q"},
        "upstream.hash_on",
    ),
    "health path": (
        {"targets": ["127.0.0.1:9002"], "health": {"path": "healthz"}},
        "upstream.health.path",
    ),
    "breaker failure_ratio zero": (
        {"targets": ["127.0.0.1:9002"], "breaker": {"failure_ratio": 0}},
        "upstream.breaker.failure_ratio",
    ),
    "breaker failure status not 5xx": (
        {"targets": ["127.0.0.1:9002"], "breaker": {"failure_statuses": [500, 404]}},
        "upstream.breaker.failure_statuses[1]",
    ),
    "max_pending zero": ({"targets": ["127.0.0.1:9002"], "max_pending": 0}, "upstream.max_pending"),
    # refused by the loader (JSON Schema cannot say these)
    "duplicate address across forms": (
        {"targets": ["127.0.0.1:9002", {"address": "127.0.0.1:9002", "weight": 2}]},
        "upstream.targets[1]",
    ),
    "health timeout not shorter than interval": (
        {
            "targets": ["127.0.0.1:9002"],
            "health": {"path": "/h", "interval": "1s", "timeout": "2s"},
        },
        "upstream.health.timeout",
    ),
    "cloud metadata address": (
        {"targets": ["127.0.0.1:9002", "169.254.169.254:80"]},
        "upstream.targets[1]",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_admin_upstream_resilience_bad_keys_are_422_with_the_path(tmp_path, case):
    body, path = BAD[case]

    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/upstreams", {"name": "orders", **body})
            assert reply.status == 422, reply
            assert reply.error["path"] == path, reply
            assert all("orders" not in config.upstreams for config in api.applied)
            assert (await api.ctx.store.get_item("upstream", "orders")) is None
            assert (await api.post("/api/upstreams", UPSTREAM)).status == 201
            reply = await api.put("/api/upstreams/orders", body, headers={"If-Match": '"1"'})
            assert reply.status == 422, reply
            assert reply.error["path"] == path, reply

    run(scenario())


def test_admin_upstream_resilience_file_upstream_shows_targets_as_written(tmp_path):
    async def scenario():
        async with admin(tmp_path, FILE_YAML) as api:
            reply = await api.get("/api/upstreams")
            assert reply.status == 200
            by_name = {item["name"]: item for item in reply.data}
            assert by_name["users"]["source"] == "file"
            assert by_name["users"]["spec"] == {
                "targets": ["127.0.0.1:9001", {"address": "127.0.0.1:9004", "weight": 2}],
                "retry": {"on": ["reset", 503]},
            }

    run(scenario())
