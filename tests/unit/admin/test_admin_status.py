"""Health, readiness, status, statistics, request logs, and the HTTP error envelope."""

from __future__ import annotations

import datetime
import logging

import pytest
from admin_helpers import BASE_YAML, ROUTE, admin, run
from jsonschema import Draft202012Validator

from isekai.admin import status as status_module
from isekai.admin.context import StatusProviders
from isekai.admin.http import parse_json
from isekai.admin.logs import parse_time
from isekai.admin.openapi import OPERATIONS
from isekai.observability.metrics import Gathered
from tests.support.worker_stats import cluster_row, target_row


def test_health_is_public_and_in_the_envelope(tmp_path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.get("/health")
            assert reply.status == 200
            assert reply.body == {
                "success": True,
                "message": "isekai is running",
                "data": {"status": "ok"},
            }
            assert reply.headers["Content-Type"].startswith("application/json")
            assert len(reply.headers["X-Request-Id"]) == 32

    run(scenario())


def test_ready_reports_the_store(tmp_path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.get("/health/ready")
            assert reply.status == 200 and reply.data["store"] == "ok"
            await api.ctx.store.close()
            reply = await api.get("/health/ready")
            assert reply.status == 503
            assert reply.error["code"] == "not_ready"
            await api.ctx.store.open()

    run(scenario())


def test_status_reports_version_uptime_workers_config_version_and_counts(tmp_path):
    providers = StatusProviders(workers=lambda: 4, config_version=lambda: 17)

    async def scenario():
        async with admin(tmp_path, status=providers) as api:
            await api.post("/api/routes", ROUTE)
            data = (await api.get("/api/status")).data
            assert data["version"] == "0.1.0"
            assert data["workers"] == 4 and data["config_version"] == 17
            assert data["routes"] == 3 and data["upstreams"] == 1
            assert 0 <= data["uptime"] < 60
            assert data["started_at"].endswith("Z")

    run(scenario())


def _worker(
    pid: int,
    tunnels: int,
    pools: list[list],
    targets: list[dict] = (),
    clusters: list[dict] = (),
    checks: list[dict] | None = None,
) -> dict:
    # the shape `Worker.stats()` ships (isekai/worker.py), as two workers would send it
    return {
        "pid": pid,
        "config_version": 3,
        "counters": {
            "buckets": [0.1],
            "connections": {"active": 2, "total": 9},
            "routes": {},
            "upstreams": {},
            "policies": {},
        },
        "pools": pools,
        "targets": list(targets),
        "clusters": list(clusters),
        "tunnels": tunnels,
        "in_flight": 1,
        "extra": {} if checks is None else {"health_checks": checks},
    }


def test_stats_endpoints_sum_the_workers_and_show_each(tmp_path):
    target = "127.0.0.1:9001"

    async def gather():
        return Gathered(
            workers=[
                _worker(11, 1, [["users", target, 2, 1, 0, 5, 0, 0, False]]),
                _worker(12, 2, [["users", target, 1, 0, 3, 4, 2, 1, True]]),
            ],
            expected=2,
        )

    providers = StatusProviders(gather=gather)

    async def scenario():
        async with admin(tmp_path, status=providers, role="viewer") as api:
            lb = (await api.get("/api/load-balancer/status")).data
            (row,) = lb["users"]["targets"]
            assert row["target"] == target and lb["users"]["balancer"] == "round_robin"
            assert (row["open"], row["idle"], row["busy"], row["waiting"]) == (4, 3, 1, 3)
            assert (row["opened_total"], row["connect_failures"], row["pool_timeouts"]) == (9, 2, 1)
            assert row["reachable"] is True  # one worker still reaches it
            assert [w["pid"] for w in row["per_worker"]] == [11, 12]
            # workers that ship no target rows: nothing known, nothing made up
            assert row["health"] == "unknown" and row["healthy"] is None
            assert row["workers"] == 0 and row["ewma_ms"] is None
            assert row["breaker"]["state"] == "closed" and row["breaker"]["next_probe_at"] is None
            cb = (await api.get("/api/circuit-breaker/status")).data
            assert cb["users"]["enabled"] is False and cb["users"]["state"] == "closed"
            assert cb["users"]["targets"][0]["target"] == target
            ws = (await api.get("/api/websocket/stats")).data
            assert ws == {
                "open_tunnels": 3,
                "per_worker": [{"pid": 11, "open_tunnels": 1}, {"pid": 12, "open_tunnels": 2}],
            }
            live = (await api.get("/api/status")).data["live"]
            assert live["connections"] == 4 and live["connections_accepted"] == 18
            assert live["in_flight"] == 2 and live["workers_answered"] == 2

    run(scenario())


TWO_TARGETS_YAML = BASE_YAML.replace(
    'users: {targets: ["127.0.0.1:9001"]}',
    'users: {targets: ["127.0.0.1:9001", "127.0.0.1:9002"]}\n  idle: {targets: ["[::1]:9003"]}',
)
GOOD, BAD = "127.0.0.1:9001", "127.0.0.1:9002"


def _resilience_workers() -> list[dict]:
    """Two workers that disagree: in worker 21 the bad target is ejected and its breaker open,
    in worker 22 half-open; the good target answers both."""
    first = _worker(
        21,
        0,
        [["users", GOOD, 1, 1, 0, 2, 0, 0, False], ["users", BAD, 0, 0, 0, 0, 6, 0, True]],
        targets=[
            target_row("users", GOOD, in_flight=1, ewma_ms=12.0, requests=40, failures=1),
            target_row(
                "users",
                BAD,
                selectable=False,
                ejected=True,
                ejected_for=25.5,
                ejections=1,
                consecutive_failures=2,
                breaker="open",
                next_probe_in=12.25,
                breaker_opened=1,
                window_requests=0,
                requests=6,
                failures=6,
            ),
            target_row("idle", "[::1]:9003"),
        ],
        clusters=[
            cluster_row(
                "users",
                in_flight=1,
                retries=5,
                retries_refused=1,
                refused={"no_target": 2, "max_requests": 0, "max_pending": 1},
            ),
            cluster_row("idle"),
        ],
    )
    second = _worker(
        22,
        0,
        [["users", GOOD, 1, 0, 0, 1, 0, 0, False], ["users", BAD, 0, 0, 0, 0, 4, 0, True]],
        targets=[
            target_row("users", GOOD, in_flight=2, ewma_ms=18.0, requests=30),
            target_row(
                "users",
                BAD,
                ejected=True,
                ejected_for=3.0,
                ejections=1,
                breaker="half_open",
                breaker_opened=2,
                window_requests=3,
                window_failures=2,
                requests=4,
                failures=4,
            ),
            target_row("idle", "[::1]:9003"),
        ],
        clusters=[
            cluster_row("users", in_flight=2, panic=True, retries=1, retries_active=1),
            cluster_row("idle"),
        ],
    )
    return [first, second]


def described(path: str, data: dict) -> None:
    """``data`` is valid by the OpenAPI document's schema of ``GET path``'s data."""
    (operation,) = [op for op in OPERATIONS if op.method == "GET" and op.path == path]
    Draft202012Validator(operation.data).validate(data)


def test_load_balancer_status_sums_targets_state_over_the_workers(tmp_path):
    async def gather():
        return Gathered(workers=_resilience_workers(), expected=2)

    async def scenario():
        async with admin(
            tmp_path, TWO_TARGETS_YAML, status=StatusProviders(gather=gather), role="viewer"
        ) as api:
            reply = await api.get("/api/load-balancer/status")
            assert reply.status == 200 and reply.body["success"] is True
            described("/api/load-balancer/status", reply.data)
            users = reply.data["users"]
            assert users["balancer"] == "round_robin" and users["health_checks"] is False
            assert users["in_flight"] == 3 and users["panic"] is True and users["panic_in"] == 1
            assert (users["retries"], users["retries_active"], users["retries_refused"]) == (
                6,
                1,
                1,
            )
            assert users["refused"] == {"no_target": 2, "max_requests": 0, "max_pending": 1}
            assert [w["pid"] for w in users["per_worker"]] == [21, 22]
            assert users["per_worker"][1]["panic"] is True
            good, bad = users["targets"]
            assert good["target"] == GOOD and good["weight"] == 1
            assert good["health"] == "unknown" and good["healthy"] is None  # no active checks
            assert good["workers"] == 2 and good["selectable_in"] == 2
            assert good["in_flight"] == 3 and good["ewma_ms"] == 15.0
            assert good["ejected_in"] == 0 and good["breaker"]["state"] == "closed"
            assert good["breaker"]["closed"] == 2 and good["breaker"]["next_probe_in"] is None
            assert (good["requests"], good["failures"]) == (70, 1)
            assert good["open"] == 3 and good["reachable"] is True
            assert bad["selectable_in"] == 1 and bad["ejected_in"] == 2
            assert bad["ejected_for"] == 25.5  # the longer of the two
            assert bad["ejections"] == 2 and bad["consecutive_failures"] == 2
            assert bad["ewma_ms"] is None  # no worker has a sample
            breaker = bad["breaker"]
            assert breaker["state"] == "open"  # open beats half-open
            assert (breaker["closed"], breaker["half_open"], breaker["open"]) == (0, 1, 1)
            assert breaker["next_probe_in"] == 12.25 and breaker["opened_total"] == 3
            assert breaker["next_probe_at"].endswith("Z")
            assert (bad["requests"], bad["failures"]) == (10, 10)
            assert bad["connect_failures"] == 10 and bad["reachable"] is False
            first, second = bad["per_worker"]
            assert first["pid"] == 21 and first["breaker"] == "open"
            assert first["next_probe_in"] == 12.25 and first["connect_failures"] == 6
            assert second["breaker"] == "half_open" and second["next_probe_in"] is None
            assert second["selectable"] is True and second["ejected"] is True
            (idle,) = reply.data["idle"]["targets"]
            assert idle["target"] == "[::1]:9003" and idle["workers"] == 2
            assert idle["per_worker"] and idle["breaker"]["state"] == "closed"

    run(scenario())


def test_circuit_breaker_status_has_state_counts_and_next_probe(tmp_path):
    async def gather():
        return Gathered(workers=_resilience_workers(), expected=2)

    async def scenario():
        async with admin(
            tmp_path, TWO_TARGETS_YAML, status=StatusProviders(gather=gather), role="viewer"
        ) as api:
            before = datetime.datetime.now(datetime.UTC)
            reply = await api.get("/api/circuit-breaker/status")
            assert reply.status == 200 and reply.body["success"] is True
            described("/api/circuit-breaker/status", reply.data)
            users = reply.data["users"]
            assert users["state"] == "open"
            assert users["limits"]["refused"] == {
                "no_target": 2,
                "max_requests": 0,
                "max_pending": 1,
            }
            good, bad = users["targets"]
            assert good == {
                "target": GOOD,
                "state": "closed",
                "states": {"closed": 2, "half_open": 0, "open": 0},
                "window_requests": 0,
                "window_failures": 0,
                "failure_ratio": None,
                "opened_total": 0,
                "next_probe_in": None,
                "next_probe_at": None,
                "per_worker": [
                    {
                        "pid": pid,
                        "state": "closed",
                        "window_requests": 0,
                        "window_failures": 0,
                        "opened_total": 0,
                        "next_probe_in": None,
                    }
                    for pid in (21, 22)
                ],
            }
            assert bad["state"] == "open"
            assert bad["states"] == {"closed": 0, "half_open": 1, "open": 1}
            assert (bad["window_requests"], bad["window_failures"]) == (3, 2)
            assert bad["failure_ratio"] == round(2 / 3, 4)
            assert bad["opened_total"] == 3 and bad["next_probe_in"] == 12.25
            probe = datetime.datetime.fromisoformat(bad["next_probe_at"].replace("Z", "+00:00"))
            assert (
                before + datetime.timedelta(seconds=12)
                <= probe
                <= datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=13)
            )
            assert [w["state"] for w in bad["per_worker"]] == ["open", "half_open"]
            assert reply.data["idle"]["state"] == "closed"
            assert reply.data["idle"]["targets"][0]["target"] == "[::1]:9003"

    run(scenario())


def test_status_endpoints_show_upstreams_when_no_worker_answers_rows(tmp_path):
    async def scenario():
        async with admin(tmp_path, TWO_TARGETS_YAML, role="viewer") as api:
            lb = (await api.get("/api/load-balancer/status")).data
            assert [t["target"] for t in lb["users"]["targets"]] == [GOOD, BAD]
            assert lb["users"]["in_flight"] == 0 and lb["users"]["panic"] is False
            cb = (await api.get("/api/circuit-breaker/status")).data
            assert cb["users"]["targets"][1]["states"] == {"closed": 0, "half_open": 0, "open": 0}

    run(scenario())


def test_unexpected_errors_are_a_500_envelope_with_a_request_id(tmp_path, caplog):
    async def broken():
        raise KeyError("boom")

    async def scenario():
        async with admin(tmp_path, status=StatusProviders(gather=broken)) as api:
            reply = await api.get("/api/websocket/stats", headers={"X-Request-Id": "req-42"})
            assert reply.status == 500
            assert reply.error == {"code": "internal", "request_id": "req-42"}
            assert "Traceback" not in reply.raw.decode()
            assert reply.headers["X-Request-Id"] == "req-42"

    caplog.set_level(logging.ERROR)
    run(scenario())
    assert "req-42" in caplog.text and "KeyError" in caplog.text


def test_store_failures_are_503(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            await api.ctx.store.close()
            reply = await api.get("/api/routes")
            assert reply.status in (401, 503)  # the token's user cannot be looked up either
            assert reply.body["success"] is False
            assert "admin.db" not in reply.raw.decode()  # no store details to the client
            await api.ctx.store.open()

    run(scenario())


def test_http_errors_are_envelopes(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.get("/api/nothing-here")
            assert reply.status == 404 and reply.error["code"] == "not_found"
            reply = await api.request("DELETE", "/api/routes")
            assert reply.status == 405
            assert reply.error["code"] == "method_not_allowed"
            assert set(reply.headers["Allow"].split(",")) == {"GET", "POST"}
            reply = await api.request("POST", "/health")
            assert reply.status == 405
            json_type = {"Content-Type": "application/json"}
            for body, status in [
                ("", 400),
                ("{", 400),
                ('{"a": 1, "a": 2}', 400),
                ('{"a": NaN}', 400),
                ("[" * 100 + "]" * 100, 400),
                (b"\xff\xfe", 400),
            ]:
                reply = await api.request("POST", "/api/routes", data=body, headers=json_type)
                assert reply.status == status, (body, reply)
                assert reply.error["code"] == "bad_request"
            reply = await api.request(
                "POST", "/api/routes", data="x" * (2 * 1024 * 1024), headers=json_type
            )
            assert reply.status == 413
            reply = await api.request(
                "POST", "/api/routes", data="{}", headers={"Content-Type": "text/plain"}
            )
            assert reply.status == 415 and reply.error["code"] == "unsupported_media_type"

    run(scenario())


def test_parse_json_is_strict():
    assert parse_json('{"a": [1, 2.5, null, true]}') == {"a": [1, 2.5, None, True]}
    for bad in ['{"a": 1, "a": 1}', "Infinity", "[-Infinity]", "{", "[" * 70 + "]" * 70]:
        with pytest.raises(ValueError):
            parse_json(bad)


def _rows(now: float) -> list[dict]:
    rows = []
    for i in range(30):
        rows.append(
            {
                "ts": now - 1000 + i * 10,
                "route": "a" if i % 2 else "b",
                "method": "GET",
                "path": f"/p/{i}",
                "status": [200, 404, 503][i % 3],
                "latency_ms": 1.5,
                "request_id": f"r{i}",
            }
        )
    return rows


def test_logs_filters_and_pages_newest_first(tmp_path):
    now = 1_800_000_000.0

    async def scenario():
        async with admin(tmp_path, role="viewer") as api:
            await api.ctx.store.insert_request_logs(_rows(now))
            page = (await api.get("/api/logs?limit=5")).data
            assert page["total"] == 30 and page["limit"] == 5 and page["offset"] == 0
            assert [row["request_id"] for row in page["items"]] == [
                f"r{i}" for i in (29, 28, 27, 26, 25)
            ]
            assert page["next_offset"] == 5
            assert page["items"][0]["time"].endswith("Z")
            last = (await api.get("/api/logs?limit=5&offset=25")).data
            assert [row["request_id"] for row in last["items"]] == [
                f"r{i}" for i in (4, 3, 2, 1, 0)
            ]
            assert last["next_offset"] is None
            only_a = (await api.get("/api/logs?route=a&limit=100")).data
            assert only_a["total"] == 15 and {r["route"] for r in only_a["items"]} == {"a"}
            assert (await api.get("/api/logs?status=404")).data["total"] == 10
            for value in ("5", "5xx", "5XX"):
                assert (await api.get(f"/api/logs?status_class={value}")).data["total"] == 10
            since = now - 1000 + 100  # rows 10..29
            until = now - 1000 + 200  # rows before 20
            page = (await api.get(f"/api/logs?since={since}&until={until}&limit=100")).data
            assert page["total"] == 10
            iso = datetime.datetime.fromtimestamp(since, datetime.UTC).isoformat()
            iso = iso.replace("+00:00", "Z")
            assert (await api.get(f"/api/logs?since={iso}")).data["total"] == 20
            both = await api.get("/api/logs?route=b&status_class=2&limit=100")
            assert {(r["route"], r["status"]) for r in both.data["items"]} == {("b", 200)}

    run(scenario())


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "offset=-1",
        "status=99",
        "status=600",
        "status_class=6",
        "status_class=2xy",
        "since=yesterday",
        "until=2026-13-01T00:00:00Z",
        "route=",
        "unknown=1",
        "limit=1&limit=2",
    ],
)
def test_logs_bad_parameters_are_400(tmp_path, query):
    async def scenario():
        async with admin(tmp_path, role="viewer") as api:
            reply = await api.get(f"/api/logs?{query}")
            assert reply.status == 400, reply
            assert reply.error["code"] == "bad_request"
            assert reply.body["message"].startswith("query parameter ")

    run(scenario())


def test_parse_time_accepts_iso_8601_and_unix_seconds():
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("1700000000.5") == 1_700_000_000.5
    assert parse_time("2023-11-14T22:13:20Z") == 1_700_000_000
    assert parse_time("2023-11-14T22:13:20") == 1_700_000_000
    assert parse_time("2023-11-14T23:13:20+01:00") == 1_700_000_000
    assert parse_time("2023-11-14t22:13:20.25z") == 1_700_000_000.25
    assert parse_time("2016-12-31T23:59:60Z") == parse_time("2016-12-31T23:59:59Z")
    assert parse_time("2023-11-14") == 1_699_920_000
    for bad in ("", "soon", "2023-11-14T25:00:00Z", "1e400"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_status_module_version_is_the_package_version():
    import isekai

    assert status_module.__version__ is isekai.__version__


CHECKED_YAML = BASE_YAML.replace(
    'users: {targets: ["127.0.0.1:9001"]}',
    """users:
    targets: ["127.0.0.1:9001", {address: "127.0.0.1:9002", weight: 3}]
    balancer: least_conn
    health: {path: /healthz, interval: 2s}
    breaker: {failure_ratio: 0.25, window: 5s, min_requests: 4, open_for: 7s}
    max_requests: 50""",
)


def check_row(target: str, healthy: bool | None, **changes) -> dict:
    """The active checker's row of a target (``extra["health_checks"]``)."""
    row = {
        "upstream": "users",
        "target": target,
        "healthy": healthy,
        "checks": 10,
        "failures": 0,
        "consecutive_successes": 10,
        "consecutive_failures": 0,
        "last_status": 200,
        "last_error": None,
        "last_check_age": 0.4,
    }
    row.update(changes)
    return row


def test_status_endpoints_take_health_verdicts_and_settings_from_the_checker_and_config(
    tmp_path,
):
    async def gather():
        checks = [
            check_row(GOOD, True),
            check_row(
                BAD,
                False,
                failures=4,
                consecutive_successes=0,
                consecutive_failures=4,
                last_status=None,
                last_error="connection refused",
            ),
        ]
        rows = [
            target_row("users", GOOD, ewma_ms=2.0),
            target_row("users", BAD, weight=3, healthy=False, selectable=False),
        ]
        clusters = [cluster_row("users", balancer="least_conn")]
        return Gathered(
            workers=[
                _worker(31, 0, [], rows, clusters, checks),  # the worker that runs the checks
                _worker(32, 0, [], rows, clusters),
            ],
            expected=2,
        )

    async def scenario():
        async with admin(
            tmp_path, CHECKED_YAML, status=StatusProviders(gather=gather), role="viewer"
        ) as api:
            lb = (await api.get("/api/load-balancer/status")).data
            described("/api/load-balancer/status", lb)
            users = lb["users"]
            assert users["balancer"] == "least_conn" and users["health_checks"] is True
            good, bad = users["targets"]
            assert good["health"] == "healthy" and good["healthy"] is True
            assert good["health_check"]["checks"] == 10
            assert bad["weight"] == 3 and bad["health"] == "unhealthy"
            assert bad["health_check"]["last_error"] == "connection refused"
            assert bad["health_check"]["consecutive_failures"] == 4
            assert good["healthy_in"] == 2 and bad["healthy_in"] == 0
            assert bad["selectable_in"] == 0 and [w["healthy"] for w in bad["per_worker"]] == [
                False,
                False,
            ]
            breakers = (await api.get("/api/circuit-breaker/status")).data
            described("/api/circuit-breaker/status", breakers)
            cb = breakers["users"]
            assert cb["enabled"] is True
            assert cb["settings"] == {
                "failure_ratio": 0.25,
                "window": 5.0,
                "min_requests": 4,
                "open_for": 7.0,
                "half_open_requests": 3,
                "failure_statuses": [500, 502, 503, 504],
            }
            assert cb["limits"]["max_requests"] == 50 and cb["limits"]["max_pending"] is None

    run(scenario())
