"""Counters: slots, status classes, histogram shape, growth and the connection gauge.

The recorders are C functions only `protocol` calls, so requests fed to a `DownstreamProtocol`
(direct routes, in-memory transport) are what drive them here; upstream errors and internal
errors are counted in the integration tests, through real sockets.
"""

from __future__ import annotations

import math

import pytest

import isekai._core.counters as counters_mod
from isekai._core.counters import LATENCY_BUCKETS, Counters
from isekai._core.http import response_head
from isekai._core.protocol import CoreRoute, DownstreamProtocol, ServerState
from isekai._core.router import Router
from isekai.config.units import parse_path_pattern
from tests.support.memory import MemoryTransport


def direct(counters: Counters, name: str, status: int, body: bytes = b"", slot=None) -> CoreRoute:
    route = CoreRoute(name, counters.slot(name) if slot is None else slot)
    route.direct = True
    route.respond_status = status
    route.respond_head = response_head(status)
    route.respond_body = body
    return route


def serve(counters: Counters, routes: dict[str, CoreRoute], *requests: bytes) -> DownstreamProtocol:
    router = Router()
    for path, route in routes.items():
        router.add(None, ("GET", "POST"), parse_path_pattern(path), route)
    proto = DownstreamProtocol(ServerState(router, counters, None))
    proto.connection_made(MemoryTransport())
    for raw in requests:
        proto.data_received(raw)
    return proto


def get(path: str) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path.encode()


def test_counters_module_is_compiled():
    assert counters_mod.__file__.endswith(".so")


def test_counters_latency_buckets_constant():
    assert LATENCY_BUCKETS == (
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
    )


def test_counters_slots_stable():
    c = Counters()
    assert c.slot("") == 0
    a = c.slot("users")
    b = c.slot("orders")
    assert (a, b) == (1, 2)
    assert c.slot("users") == a
    assert c.slot("") == 0
    assert set(c.snapshot()["slots"]) == {"", "users", "orders"}
    assert len(c) == 3


def test_counters_slot_requires_str():
    with pytest.raises(TypeError):
        Counters().slot(None)


def test_counters_status_classes():
    c = Counters()
    routes = {f"/{code}": direct(c, "r", code) for code in (200, 204, 301, 404, 429, 503)}
    serve(
        c,
        routes,
        *(get(p) for p in routes),
        get("/nowhere"),
        b"PUT /200 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    snap = c.snapshot()["slots"]
    assert snap["r"]["requests"] == 6
    assert snap["r"]["status"] == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 1, "other": 0}
    assert snap[""]["status"]["4xx"] == 2  # 404 without a route, then 405


def test_counters_bytes():
    c = Counters()
    routes = {"/submit": direct(c, "r", 200, b"stored")}
    post = b"POST /submit HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
    serve(c, routes, post % (100, b"x" * 100), post % (5, b"y" * 5), get("/submit"))
    snap = c.snapshot()["slots"]["r"]
    assert snap["bytes_out"] == 18  # bytes_in: see test_worker (a direct answer comes first)


def test_counters_histogram_buckets_cumulative_and_sum():
    c = Counters()
    serve(c, {"/a": direct(c, "r", 200, b"hi")}, *[get("/a")] * 12)
    lat = c.snapshot()["slots"]["r"]["latency"]
    buckets = lat["buckets"]
    assert [le for le, _ in buckets] == [*LATENCY_BUCKETS, math.inf]
    assert all(a <= b for (_, a), (_, b) in zip(buckets, buckets[1:], strict=False))
    assert buckets[-1][1] == lat["count"] == 12
    assert 0.0 <= lat["sum"] < 12 * LATENCY_BUCKETS[-1]


def test_counters_out_of_range_slot_goes_to_unrouted():
    c = Counters()
    routes = {"/far": direct(c, "far", 200, slot=57), "/below": direct(c, "below", 200, slot=-1)}
    serve(c, routes, get("/far"), get("/below"))
    snap = c.snapshot()["slots"]
    assert snap[""]["requests"] == 2
    assert set(snap) == {""}


def test_counters_growth_past_initial_capacity():
    c = Counters()
    first = direct(c, "first", 200, b"0123456789" * 2)
    slots = [c.slot(f"route-{i}") for i in range(1000)]
    assert slots == list(range(2, 1002))
    last = direct(c, "route-999", 500)
    serve(c, {"/first": first, "/last": last}, get("/first"), get("/last"))
    snap = c.snapshot()["slots"]
    assert len(snap) == 1002
    assert snap["first"]["requests"] == 1 and snap["first"]["bytes_out"] == 20
    assert snap["route-999"]["status"]["5xx"] == 1
    assert c.slot("route-500") == 502


def test_counters_connection_gauge():
    c = Counters()
    protos = [serve(c, {}) for _ in range(3)]
    protos[0].connection_lost(None)
    assert c.snapshot()["connections"] == {"active": 2, "total": 3}
    for proto in protos[1:]:
        proto.connection_lost(None)
    assert c.snapshot()["connections"] == {"active": 0, "total": 3}


def test_counters_fresh_snapshot_shape():
    snap = Counters().snapshot()
    assert snap["connections"] == {"active": 0, "total": 0}
    only = snap["slots"][""]
    assert only["requests"] == 0
    assert only["status"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    assert only["upstream_errors"] == {"connect": 0, "timeout": 0, "protocol": 0, "unavailable": 0}
    assert only["internal_errors"] == 0
    assert only["latency"]["count"] == 0
    assert len(only["latency"]["buckets"]) == len(LATENCY_BUCKETS) + 1
