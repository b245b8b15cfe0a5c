"""Counters: slots, status classes, histogram shape, growth and the connection gauge."""

from __future__ import annotations

import math

import pytest

import isekai._core.counters as counters_mod
from isekai._core.counters import LATENCY_BUCKETS, Counters


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
    s = c.slot("r")
    for status in (101, 200, 204, 301, 404, 499, 500, 599, 0, 99, 600, 999, -1):
        c.record_py(s, status, 0, 0, 0.0)
    snap = c.snapshot()["slots"]["r"]
    assert snap["requests"] == 13
    assert snap["status"] == {"1xx": 1, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 2, "other": 5}


def test_counters_bytes():
    c = Counters()
    s = c.slot("r")
    c.record_py(s, 200, 100, 2000, 0.0)
    c.record_py(s, 200, 5, 7, 0.0)
    c.record_py(s, 200, -3, -4, 0.0)
    snap = c.snapshot()["slots"]["r"]
    assert (snap["bytes_in"], snap["bytes_out"]) == (105, 2007)


def test_counters_histogram_buckets_cumulative_and_sum():
    c = Counters()
    s = c.slot("r")
    samples = [0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.2, 0.2, 1.0, 9.9, 10.0, 11.0, 300.0]
    for x in samples:
        c.record_py(s, 200, 0, 0, x)
    lat = c.snapshot()["slots"]["r"]["latency"]
    buckets = lat["buckets"]
    assert [le for le, _ in buckets] == [*LATENCY_BUCKETS, math.inf]
    expected = [sum(1 for x in samples if x <= le) for le in LATENCY_BUCKETS] + [len(samples)]
    assert [n for _, n in buckets] == expected
    assert all(a <= b for (_, a), (_, b) in zip(buckets, buckets[1:], strict=False))
    assert lat["count"] == len(samples)
    assert lat["sum"] == pytest.approx(sum(samples))


def test_counters_bad_latency_counts_as_zero():
    c = Counters()
    c.record_py(0, 200, 0, 0, -1.0)
    c.record_py(0, 200, 0, 0, math.nan)
    lat = c.snapshot()["slots"][""]["latency"]
    assert lat["buckets"][0] == (0.0005, 2)
    assert lat["sum"] == 0.0


def test_counters_out_of_range_slot_goes_to_unrouted():
    c = Counters()
    c.record_py(57, 200, 1, 1, 0.0)
    c.record_py(-1, 200, 1, 1, 0.0)
    c.upstream_error_py(99, 0)
    snap = c.snapshot()["slots"][""]
    assert snap["requests"] == 2
    assert snap["upstream_errors"]["connect"] == 1


def test_counters_growth_past_initial_capacity():
    c = Counters()
    first = c.slot("first")
    c.record_py(first, 200, 11, 22, 0.01)
    slots = [c.slot(f"route-{i}") for i in range(1000)]
    assert slots == list(range(2, 1002))
    for i, s in enumerate(slots):
        c.record_py(s, 500, i, 0, 0.0)
    snap = c.snapshot()["slots"]
    assert len(snap) == 1002
    assert snap["first"]["requests"] == 1
    assert (snap["first"]["bytes_in"], snap["first"]["bytes_out"]) == (11, 22)
    assert snap["route-999"]["bytes_in"] == 999
    assert snap["route-999"]["status"]["5xx"] == 1
    assert c.slot("route-500") == 502


def test_counters_upstream_errors():
    c = Counters()
    s = c.slot("r")
    for kind in (0, 1, 1, 2, 2, 2, 7):
        c.upstream_error_py(s, kind)
    assert c.snapshot()["slots"]["r"]["upstream_errors"] == {
        "connect": 1,
        "timeout": 2,
        "protocol": 4,
    }


def test_counters_connection_gauge():
    c = Counters()
    for _ in range(3):
        c.connection_opened_py()
    c.connection_closed_py()
    assert c.snapshot()["connections"] == {"active": 2, "total": 3}
    for _ in range(5):
        c.connection_closed_py()
    assert c.snapshot()["connections"] == {"active": 0, "total": 3}


def test_counters_fresh_snapshot_shape():
    snap = Counters().snapshot()
    assert snap["connections"] == {"active": 0, "total": 0}
    only = snap["slots"][""]
    assert only["requests"] == 0
    assert only["status"] == {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0, "other": 0}
    assert only["latency"]["count"] == 0
    assert len(only["latency"]["buckets"]) == len(LATENCY_BUCKETS) + 1
