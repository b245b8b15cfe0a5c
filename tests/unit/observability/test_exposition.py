"""The scrape's arithmetic and text: workers' exports summed, labels capped, valid exposition
(parsed back with prometheus-client's parser). The exports here are made by real workers'
`Counters` in tests/integration/test_metrics.py; these are packed the same way, by hand, to
cover the merges a live test cannot arrange (different routes per worker, caps)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from isekai._core.counters import LATENCY_BUCKETS, METHODS, ROUTE_LAYOUT, STATUS_CLASSES
from isekai.observability.metrics import Gathered, render, sum_workers
from tests.support import services
from tests.support.worker_stats import cluster_row, target_row

WIDTH = sum(size for _, size in ROUTE_LAYOUT)


def _row(requests: dict[tuple[str, str], int], latency_bucket: int, bytes_out: int) -> list[int]:
    row = [0] * WIDTH
    for (method, status_class), count in requests.items():
        row[METHODS.index(method) * len(STATUS_CLASSES) + STATUS_CLASSES.index(status_class)] = (
            count
        )
    offsets = {}
    at = 0
    for name, size in ROUTE_LAYOUT:
        offsets[name] = at
        at += size
    row[offsets["bytes_out"]] = bytes_out
    row[offsets["latency"] + latency_bucket] = sum(requests.values())
    row[offsets["upstream_errors"]] = 1 if ("GET", "5xx") in requests else 0
    return row


def _worker(pid: int, routes: dict[str, list[int]], sums: dict[str, float]) -> dict:
    names = list(routes)
    counts = b"".join(struct.pack(f"={WIDTH}Q", *routes[name]) for name in names)
    return {
        "pid": pid,
        "counters": {
            "buckets": list(LATENCY_BUCKETS),
            "methods": list(METHODS),
            "status_classes": list(STATUS_CLASSES),
            "route_layout": [list(field) for field in ROUTE_LAYOUT],
            "connections": {"active": 1, "total": 10},
            "routes": {
                "names": names,
                "counts": counts,
                "sums": b"".join(struct.pack("=d", sums[name]) for name in names),
            },
            "upstreams": {
                "names": ["users"],
                "counts": struct.pack(
                    f"={len(LATENCY_BUCKETS) + 1}Q", 2, *[0] * len(LATENCY_BUCKETS)
                ),
                "sums": struct.pack("=d", 0.0004),
            },
            "policies": {"deny_bots": [3, 1, 0]},
        },
        "pools": [["users", "127.0.0.1:9001", 1, 0, 0, 4, 1, 0, pid == 2]],
        "tunnels": pid,
        "extra": {"logs": {"access_log": {"written": 5, "dropped": pid}}},
    }


def _samples(body: bytes) -> dict:
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def _two_workers() -> Gathered:
    first = _worker(
        1,
        {
            "api": _row({("GET", "2xx"): 3, ("GET", "5xx"): 1}, 2, 100),
            "": _row({("GET", "4xx"): 2}, 0, 0),
        },
        {"api": 0.01, "": 0.001},
    )
    second = _worker(
        2,
        {"api": _row({("POST", "2xx"): 2}, 14, 50), "web": _row({("HEAD", "3xx"): 1}, 5, 0)},
        {"api": 20.0, "web": 0.02},
    )
    return Gathered(
        workers=[first, second],
        restarts=2,
        reloads={"ok": 3, "failed": 1},
        expected=2,
        version="9.9",
    )


def test_two_workers_are_summed_into_one_valid_exposition():
    samples = _samples(render(_two_workers(), 1000))
    requests = "isekai_http_requests_total"
    assert samples[requests, (("method", "GET"), ("route", "api"), ("status_class", "2xx"))] == 3
    assert samples[requests, (("method", "POST"), ("route", "api"), ("status_class", "2xx"))] == 2
    assert samples[requests, (("method", "GET"), ("route", "_none"), ("status_class", "4xx"))] == 2
    assert samples[requests, (("method", "HEAD"), ("route", "web"), ("status_class", "3xx"))] == 1
    hist = "isekai_http_request_duration_seconds"
    # api: 4 requests in bucket 2 (<= 2.5 ms) from worker 1, 2 past the last bound from worker 2
    assert samples[hist + "_bucket", (("le", "0.001"), ("route", "api"))] == 0
    assert samples[hist + "_bucket", (("le", "0.0025"), ("route", "api"))] == 4
    assert samples[hist + "_bucket", (("le", "10.0"), ("route", "api"))] == 4
    assert samples[hist + "_bucket", (("le", "+Inf"), ("route", "api"))] == 6
    assert samples[hist + "_count", (("route", "api"),)] == 6
    assert abs(samples[hist + "_sum", (("route", "api"),)] - 20.01) < 1e-9
    assert samples["isekai_http_response_bytes_total", (("route", "api"),)] == 150
    assert samples["isekai_upstream_errors_total", (("kind", "connect"), ("route", "api"))] == 1
    up = "isekai_upstream_request_duration_seconds"
    assert samples[up + "_bucket", (("le", "0.0005"), ("upstream", "users"))] == 4
    assert samples["isekai_policy_answers_total", (("policy", "deny_bots"),)] == 6
    assert samples["isekai_policy_errors_total", (("policy", "deny_bots"),)] == 2
    target = (("target", "127.0.0.1:9001"), ("upstream", "users"))
    assert samples["isekai_upstream_connections_created_total", target] == 8
    assert samples["isekai_upstream_connect_failures_total", target] == 2
    assert samples["isekai_upstream_target_reachable", target] == 0.5  # one worker of two
    assert samples["isekai_client_connections", ()] == 2
    assert samples["isekai_client_connections_accepted_total", ()] == 20
    assert samples["isekai_websocket_tunnels", ()] == 3
    assert samples["isekai_log_records_dropped_total", (("log", "access_log"),)] == 3
    assert samples["isekai_log_records_written_total", (("log", "access_log"),)] == 10
    assert samples["isekai_worker_restarts_total", ()] == 2
    assert samples["isekai_config_reloads_total", (("result", "failed"),)] == 1
    assert samples["isekai_workers", ()] == 2
    (info,) = [dict(labels) for name, labels in samples if name == "isekai_build_info"]
    assert info["version"] == "9.9" and info["python"].count(".") == 2


def test_labels_past_the_cap_are_summed_under_other():
    samples = _samples(render(_two_workers(), 1))
    routes = {
        dict(labels)["route"] for (name, labels) in samples if name == "isekai_http_requests_total"
    }
    assert routes == {"api", "_other", "_none"}  # "web" folded; unrouted keeps its own label
    other = (("method", "HEAD"), ("route", "_other"), ("status_class", "3xx"))
    assert samples["isekai_http_requests_total", other] == 1


def test_no_workers_is_still_a_valid_exposition():
    samples = _samples(render(Gathered(workers=[], expected=2), 1000))
    assert samples["isekai_workers", ()] == 0
    assert samples["isekai_workers_expected", ()] == 2
    assert not [k for k in samples if k[0] == "isekai_http_requests_total"]


def test_sum_workers_keeps_each_route_once():
    totals = sum_workers(_two_workers().workers)
    assert sorted(totals.routes) == ["", "api", "web"]
    assert totals.route_sums["api"] == 20.01


def _check(target: str, healthy: bool | None, checks: int, failures: int, age: float) -> dict:
    return {
        "upstream": "users",
        "target": target,
        "healthy": healthy,
        "checks": checks,
        "failures": failures,
        "consecutive_successes": 0,
        "consecutive_failures": 0,
        "last_status": None,
        "last_error": None,
        "last_check_age": age,
    }


GOOD, BAD, NEW = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"


def _resilient_workers() -> Gathered:
    """Two workers of an upstream whose second target failed: ejected in both, its breaker
    open in one and half-open in the other; active checks run in the first worker (a stale
    row of the second, from before the checker moved, loses to the newer one)."""
    first = _worker(1, {}, {})
    first["targets"] = [
        target_row("users", GOOD, in_flight=2, ewma_ms=10.0, requests=50, failures=1),
        target_row(
            "users",
            BAD,
            selectable=False,
            ejected=True,
            ejected_for=20.0,
            ejections=2,
            breaker="open",
            next_probe_in=5.0,
            breaker_opened=1,
            requests=9,
            failures=9,
        ),
        target_row("users", NEW),
    ]
    first["clusters"] = [
        cluster_row(
            "users",
            balancer="p2c",
            in_flight=2,
            retries=4,
            retries_refused=1,
            refused={"no_target": 3, "max_requests": 1, "max_pending": 0},
        )
    ]
    first["extra"]["health_checks"] = [
        _check(GOOD, True, 12, 1, 0.5),
        _check(BAD, False, 12, 7, 0.5),
        _check(NEW, None, 0, 0, None),
    ]
    second = _worker(2, {}, {})
    second["targets"] = [
        target_row("users", GOOD, in_flight=1, ewma_ms=20.0, requests=30),
        target_row(
            "users",
            BAD,
            ejected=True,
            ejected_for=4.0,
            ejections=1,
            breaker="half_open",
            breaker_opened=1,
            requests=5,
            failures=5,
        ),
        target_row("users", NEW),
    ]
    second["clusters"] = [cluster_row("users", balancer="p2c", in_flight=1, panic=True, retries=2)]
    second["extra"]["health_checks"] = [_check(GOOD, False, 3, 3, 60.0)]
    return Gathered(workers=[first, second], expected=2)


def test_target_state_breakers_retries_and_checks_are_summed_over_workers():
    samples = _samples(render(_resilient_workers(), 1000))
    good = (("target", GOOD), ("upstream", "users"))
    bad = (("target", BAD), ("upstream", "users"))
    new = (("target", NEW), ("upstream", "users"))
    users = (("upstream", "users"),)
    assert samples["isekai_upstream_target_in_flight", good] == 3
    assert samples["isekai_upstream_target_selectable", good] == 2
    assert samples["isekai_upstream_target_selectable", bad] == 1
    assert samples["isekai_upstream_target_ejected", bad] == 2
    assert samples["isekai_upstream_target_ejected", good] == 0
    assert samples["isekai_upstream_ejections_total", bad] == 3
    assert samples["isekai_upstream_target_requests_total", good] == 80
    assert samples["isekai_upstream_target_failures_total", good] == 1
    assert samples["isekai_upstream_target_failures_total", bad] == 14
    assert samples["isekai_upstream_ewma_seconds", good] == 0.015  # mean of 10 ms and 20 ms
    assert ("isekai_upstream_ewma_seconds", bad) not in samples  # no sample in any worker
    state = "isekai_circuit_breaker_state"
    assert samples[state, (("state", "open"), *bad)] == 1
    assert samples[state, (("state", "half_open"), *bad)] == 1
    assert samples[state, (("state", "closed"), *bad)] == 0
    assert samples[state, (("state", "closed"), *good)] == 2
    assert samples["isekai_circuit_breaker_opened_total", bad] == 2
    assert samples["isekai_upstream_retries_total", users] == 6
    assert samples["isekai_upstream_retries_refused_total", users] == 1
    assert samples["isekai_upstream_panic", users] == 1
    refused = "isekai_upstream_refused_total"
    assert samples[refused, (("reason", "no_target"), ("upstream", "users"))] == 3
    assert samples[refused, (("reason", "max_requests"), ("upstream", "users"))] == 1
    assert samples[refused, (("reason", "max_pending"), ("upstream", "users"))] == 0
    # the checker's newest rows: worker 1's; a target without a verdict yet has no 1/0
    assert samples["isekai_upstream_target_healthy", good] == 1
    assert samples["isekai_upstream_target_healthy", bad] == 0
    assert ("isekai_upstream_target_healthy", new) not in samples
    assert samples["isekai_health_checks_total", good] == 12
    assert samples["isekai_health_check_failures_total", bad] == 7
    assert samples["isekai_health_checks_total", new] == 0


def test_target_labels_past_the_cap_are_folded_under_other():
    samples = _samples(render(_resilient_workers(), 1))
    targets = {
        dict(labels)["target"]
        for (name, labels) in samples
        if name == "isekai_upstream_target_requests_total"
    }
    assert targets == {GOOD, "_other"}
    other = (("target", "_other"), ("upstream", "users"))
    assert samples["isekai_upstream_target_requests_total", other] == 14
    assert samples["isekai_upstream_target_ejected", other] == 2
    assert samples["isekai_health_checks_total", other] == 12
    assert samples["isekai_upstream_target_healthy", other] == 0
    state = (("state", "open"), ("target", "_other"), ("upstream", "users"))
    assert samples["isekai_circuit_breaker_state", state] == 1


def test_workers_without_target_rows_add_no_target_series():
    samples = _samples(render(_two_workers(), 1000))
    assert not [k for k in samples if k[0].startswith("isekai_circuit_breaker")]
    assert not [k for k in samples if k[0] == "isekai_upstream_target_in_flight"]


def test_exposition_passes_promtool_check_metrics():
    """promtool's linter: HELP on every family, counters named ``_total``, no duplicates."""
    beside = Path(sys.executable).parent / "promtool"
    promtool = str(beside) if beside.is_file() else shutil.which("promtool")
    if not promtool:
        services.unavailable("promtool not found: `make tools` (tests/tools.sh) installs it")
    gathered = _two_workers()
    resilient = _resilient_workers()
    for worker, extra in zip(gathered.workers, resilient.workers, strict=True):
        worker["targets"], worker["clusters"] = extra["targets"], extra["clusters"]
        worker["extra"]["health_checks"] = extra["extra"]["health_checks"]
    body = render(gathered, 1000)
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    names = {name for name, _ in _samples(body)}
    assert "isekai_upstream_target_healthy" in names and "isekai_http_requests_total" in names


def test_consumer_requests_are_summed_over_workers():
    gathered = _two_workers()
    first, second = gathered.workers
    first["extra"]["consumers"] = [["acme", "api", "2xx", 3], ["", "api", "4xx", 1]]
    second["extra"]["consumers"] = [["acme", "api", "2xx", 2], ["globex", "web", "5xx", 1]]
    second["extra"]["consumers"].append(["odd", "row"])  # a malformed row is ignored
    samples = _samples(render(gathered, 1000))
    name = "isekai_consumer_requests_total"

    def counted(consumer: str, route: str, status_class: str) -> float:
        labels = (("consumer", consumer), ("route", route), ("status_class", status_class))
        return samples[name, labels]

    assert counted("acme", "api", "2xx") == 5
    assert counted("", "api", "4xx") == 1
    assert counted("globex", "web", "5xx") == 1
    assert len([key for key in samples if key[0] == name]) == 3
