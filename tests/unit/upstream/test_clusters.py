"""The cluster registry keeps state across snapshots: an unchanged upstream keeps its cluster
(balancer position), a target keeps its health, ejection and breaker state while its upstream
keeps its address, and pools survive when their connection settings do."""

from __future__ import annotations

import asyncio

import pytest

from isekai.config.loader import load_config_text
from isekai.upstream.clusters import ClusterRegistry


def upstreams(app: str, other: str = '["127.0.0.1:7001"]') -> dict:
    text = f"""
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
upstreams:
  app: {app}
  other: {{targets: {other}}}
routes:
  - {{name: app, match: {{path: "/*"}}, upstream: app}}
"""
    return dict(load_config_text(text).upstreams)


@pytest.fixture
def registry():
    loop = asyncio.new_event_loop()
    yield ClusterRegistry(loop)
    loop.close()


APP = '{targets: ["127.0.0.1:7101", "127.0.0.1:7102"]}'


def test_clusters_unchanged_upstream_keeps_its_cluster_and_balancer(registry):
    first = registry.build(upstreams(APP))
    picked = first["app"].pick_target()
    second = registry.build(upstreams(APP, other='["127.0.0.1:7002"]'))
    assert second["app"] is first["app"]  # the rotation goes on where it was
    assert second["other"] is not first["other"]
    assert second["app"].pick_target() is not picked
    assert registry.update("other", None) is None
    assert registry.clusters["app"] is first["app"]


def test_clusters_target_state_survives_a_change_to_its_upstream(registry):
    first = registry.build(upstreams(APP))["app"]
    target = first.targets[0]
    assert registry.set_health("app", "127.0.0.1:7101", False)
    target.ejected_until = 1e12  # as an ejection leaves it
    changed = '{targets: ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"], read_timeout: 3s}'
    second = registry.build(upstreams(changed))["app"]
    assert second is not first
    assert second.targets[0] is target and not target.healthy
    assert target.pool is not first.pools[0]  # new connection settings: a new pool
    assert [t.address for t in second.targets if t.selectable] == [
        "127.0.0.1:7102",
        "127.0.0.1:7103",
    ]


def test_clusters_dropped_target_forgets_its_state(registry):
    registry.build(upstreams(APP))
    registry.set_health("app", "127.0.0.1:7101", False)
    registry.build(upstreams('{targets: ["127.0.0.1:7102"]}'))
    rebuilt = registry.build(upstreams(APP))["app"]
    assert rebuilt.targets[0].healthy is False  # the verdict is kept for the address
    registry.set_health("app", "127.0.0.1:7101", True)
    assert rebuilt.targets[0].selectable


def test_clusters_unchanged_targets_keep_their_pools(registry):
    first = registry.build(upstreams(APP))["app"]
    pools = list(first.pools)
    retrying = '{targets: ["127.0.0.1:7101", "127.0.0.1:7102"], retry: {attempts: 3}}'
    second = registry.build(upstreams(retrying))["app"]
    assert second is not first and second.attempts == 3
    assert second.pools == pools and second.targets == first.targets


def test_clusters_verdict_for_unknown_target_is_kept_for_later(registry):
    registry.build(upstreams(APP))
    assert not registry.set_health("app", "127.0.0.1:7199", False)
    assert not registry.set_health("nope", "127.0.0.1:7101", False)
    added = '{targets: ["127.0.0.1:7101", "127.0.0.1:7199"]}'
    cluster = registry.build(upstreams(added))["app"]
    assert [t.healthy for t in cluster.targets] == [True, False]


def test_clusters_stats_rows(registry):
    registry.build(upstreams(APP))
    rows = registry.target_stats()
    assert [(r["upstream"], r["target"]) for r in rows] == [
        ("app", "127.0.0.1:7101"),
        ("app", "127.0.0.1:7102"),
        ("other", "127.0.0.1:7001"),
    ]
    assert rows[0]["breaker"] == "closed" and rows[0]["healthy"] is True
    clusters = {c["upstream"]: c for c in registry.cluster_stats()}
    assert clusters["app"]["balancer"] == "round_robin"
    assert clusters["app"]["refused"] == {"no_target": 0, "max_requests": 0, "max_pending": 0}
