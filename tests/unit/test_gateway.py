"""gateway.update_snapshot: changes applied in place answer every request as a snapshot built
from scratch for the same config does (random change sequences, valid ones from ConfigIndex)."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isekai._core.counters import Counters
from isekai.config.changes import ConfigIndex
from isekai.config.loader import validate_dynamic
from isekai.errors import ConfigError
from isekai.gateway import build_snapshot, update_snapshot
from isekai.upstream.clusters import ClusterRegistry

FILE = """\
upstreams:
  users: {targets: ["127.0.0.1:9001"]}
routes:
  - {name: file-route, match: {path: /file}, upstream: users}
"""
PATHS = ["/x", "/x/{id}", "/y/*", "/z/{a}/b"]
REQUESTS = [b"/x", b"/x/1", b"/y/q/r", b"/z/1/b", b"/file", b"/none"]

changes = st.lists(
    st.one_of(
        st.tuples(
            st.just("route"),
            st.sampled_from(["a", "b", "c"]),
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {
                        "match": st.fixed_dictionaries(
                            {"path": st.sampled_from(PATHS)},
                            optional={"methods": st.sampled_from([["GET"], ["POST"]])},
                        ),
                        "upstream": st.sampled_from(["users", "app"]),
                    },
                    optional={
                        "timeout": st.sampled_from(["1s", "2s"]),
                        "policies": st.sampled_from([["p"], ["p", "q"], []]),
                    },
                ),
            ),
        ),
        st.tuples(
            st.just("upstream"),
            st.just("app"),
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {"targets": st.sampled_from([["127.0.0.1:9002"], ["127.0.0.1:9003"]])},
                    optional={"read_timeout": st.sampled_from(["3s", "4s"])},
                ),
            ),
        ),
        st.tuples(
            st.just("policy"),
            st.sampled_from(["p", "q"]),
            st.one_of(
                st.none(),
                st.fixed_dictionaries(
                    {
                        "type": st.just("headers"),
                        "request": st.fixed_dictionaries(
                            {"set": st.sampled_from([{"X-A": "1"}, {"X-A": "2"}])}
                        ),
                    }
                ),
            ),
        ),
    ),
    max_size=15,
)


def _answers(snapshot):
    # what each request gets: the route name, its targets and its read timeout
    seen = []
    for method in (b"GET", b"POST"):
        for path in REQUESTS:
            found = snapshot.router.match(b"", method, path)
            if found is None or found[0] is None:
                seen.append(found if found is None else ("405", found[1]))
                continue
            core = found[0]
            cores = [c for c in snapshot.cores.values() if c is core]
            name = next(n for n, c in snapshot.cores.items() if c is core)
            pools = sorted((p.host, p.port) for p in core.cluster.pools)
            # what each policy instance was built from (name, type, config)
            chain = [snapshot.policies._keys[id(p)] for p in core.chain]
            seen.append((name, pools, core.read_timeout, len(cores), chain))
    return seen


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=changes, batch=st.sampled_from([1, 2, 3]))
def test_gateway_update_snapshot_answers_like_a_fresh_build(ops, batch):
    loop = asyncio.new_event_loop()
    try:
        base = validate_dynamic(FILE, "gw.yaml")
        index = ConfigIndex(base, ["file-route"])
        live_registry, fresh_registry = ClusterRegistry(loop), ClusterRegistry(loop)
        counters = Counters()
        snapshot = build_snapshot(base, live_registry, counters)
        pending = []  # changes applied to the snapshot `batch` at a time, as a store sync does
        for version, (kind, name, doc) in enumerate(ops, start=2):
            payload = {**doc, "name": name} if kind == "route" and doc is not None else doc
            try:
                change = index.prepare(kind, name, payload)
            except ConfigError:
                continue
            config = index.commit([change])
            pending.append(change)
            if len(pending) < batch:
                continue
            snapshot = update_snapshot(snapshot, config, pending, live_registry, counters, version)
            pending = []
            fresh = build_snapshot(config, fresh_registry, Counters(), version)
            assert _answers(snapshot) == _answers(fresh)
            assert set(snapshot.cores) == {route.name for route in config.routes}
            assert len(snapshot.router) == len(fresh.router)
        live_registry.close()
        fresh_registry.close()
    finally:
        loop.close()


def _replay(ops: list[tuple[str, str, dict | None]]) -> None:
    """Apply ``ops`` to the file config as one batch; the snapshot answers as a fresh build."""
    loop = asyncio.new_event_loop()
    try:
        base = validate_dynamic(FILE, "gw.yaml")
        index = ConfigIndex(base, ["file-route"])
        live_registry, fresh_registry = ClusterRegistry(loop), ClusterRegistry(loop)
        snapshot = build_snapshot(base, live_registry, Counters())
        pending = []
        for kind, name, doc in ops:
            payload = {**doc, "name": name} if kind == "route" and doc is not None else doc
            pending.append(index.prepare(kind, name, payload))
            config = index.commit([pending[-1]])
        snapshot = update_snapshot(snapshot, config, pending, live_registry, Counters(), 2)
        fresh = build_snapshot(config, fresh_registry, Counters(), 2)
        assert _answers(snapshot) == _answers(fresh)
    finally:
        loop.close()


P = {"type": "headers", "request": {"set": {"X-A": "1"}}}


def test_gateway_update_batch_applies_each_item_as_it_ends_up():
    # the route's first version names a policy that the batch removes again
    route = {"match": {"path": "/x"}, "upstream": "users"}
    _replay(
        [
            ("policy", "p", P),
            ("route", "a", {**route, "policies": ["p"]}),
            ("route", "a", {**route, "policies": []}),
            ("policy", "p", None),
        ]
    )


def test_gateway_update_batch_builds_upstreams_before_the_routes_naming_them():
    # the route's final version names an upstream made later in the same batch
    _replay(
        [
            ("route", "a", {"match": {"path": "/x"}, "upstream": "users"}),
            ("upstream", "app", {"targets": ["127.0.0.1:9002"]}),
            ("route", "a", {"match": {"path": "/x"}, "upstream": "app"}),
        ]
    )
