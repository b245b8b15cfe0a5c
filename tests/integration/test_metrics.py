"""GET /metrics and the live status endpoints: every worker's counters, summed, after known
traffic through real gateway processes (one worker and two), exact values."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from tests.support.gateway import start_from_yaml, wait_for
from tests.support.observe import admin_json, free_port, get, scrape, value
from tests.support.upstream import Upstream


def serving_workers(gw, metrics_port: int) -> list[int]:
    """The gateway's worker pids: its children but the one serving the metrics listener."""
    found = []
    for pid in gw.workers():
        ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")}
        if metrics_port not in ports:
            found.append(pid)
    return found


def _config(upstream_port: int, metrics_port: int, workers: int, extra: str = "") -> str:
    return f"""
        workers: {workers}
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        observability:
          metrics: {{bind: "127.0.0.1:{metrics_port}"}}
        upstreams:
          app: {{targets: ["127.0.0.1:{upstream_port}"]}}
        policies:
          only_local: {{type: ip_filter, deny: ["127.0.0.0/8"]}}
        routes:
          - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
          - {{name: hello, match: {{path: /hello, methods: [GET, POST]}}, respond: {{body: hi}}}}
          - {{name: denied, match: {{path: /denied}}, respond: {{body: nope}},
             policies: [only_local]}}
        {extra}
    """


def _traffic(port: int) -> None:
    # known traffic, spread over fresh connections so that both workers take some
    for _ in range(5):
        assert get(port, "/app/bytes/100")[0] == 200
    for _ in range(3):
        assert get(port, "/app/status/503")[0] == 503
    for _ in range(4):
        assert get(port, "/hello")[0] == 200
    for _ in range(2):
        assert get(port, "/hello", "POST")[0] == 200
    for _ in range(6):
        assert get(port, "/nowhere")[0] == 404
    assert get(port, "/hello", "DELETE")[0] == 405
    for _ in range(2):
        assert get(port, "/denied")[0] == 403


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scrape_sums_every_worker_exactly(tmp_path, workers):
    metrics_port = free_port()
    with Upstream() as up:
        gw = start_from_yaml(tmp_path, _config(up.port, metrics_port, workers))
        try:
            _traffic(gw.port)
            samples = scrape(metrics_port)
            requests = "isekai_http_requests_total"
            assert value(samples, requests, route="app", method="GET", status_class="2xx") == 5
            assert value(samples, requests, route="app", method="GET", status_class="5xx") == 3
            assert value(samples, requests, route="hello", method="GET", status_class="2xx") == 4
            assert value(samples, requests, route="hello", method="POST", status_class="2xx") == 2
            assert value(samples, requests, route="_none", method="GET", status_class="4xx") == 6
            assert value(samples, requests, route="_none", method="DELETE", status_class="4xx") == 1
            assert value(samples, requests, route="denied", method="GET", status_class="4xx") == 2
            total = sum(v for (name, _), v in samples.items() if name == requests)
            assert total == 23
            hist = "isekai_http_request_duration_seconds"
            assert value(samples, hist + "_count", route="app") == 8
            assert value(samples, hist + "_bucket", route="app", le="+Inf") == 8
            assert value(samples, hist + "_sum", route="app") > 0
            up_hist = "isekai_upstream_request_duration_seconds"
            assert value(samples, up_hist + "_count", upstream="app") == 8
            assert value(samples, "isekai_http_response_bytes_total", route="hello") == 12
            assert value(samples, "isekai_policy_answers_total", policy="only_local") == 2
            assert value(samples, "isekai_client_connections_accepted_total") >= 23
            assert value(samples, "isekai_workers") == workers
            assert value(samples, "isekai_workers_expected") == workers
            target = f"127.0.0.1:{up.port}"
            created = value(
                samples, "isekai_upstream_connections_created_total", upstream="app", target=target
            )
            assert 1 <= created <= 8
            assert (
                value(samples, "isekai_upstream_target_reachable", upstream="app", target=target)
                == 1
            )
            info = [k for k in samples if k[0] == "isekai_build_info"]
            assert len(info) == 1 and ("version", "0.1.0") in info[0][1]
            # a second scrape sees the same numbers plus nothing new
            assert (
                scrape(metrics_port)[
                    requests, (("method", "GET"), ("route", "app"), ("status_class", "2xx"))
                ]
                == 5
            )
        finally:
            gw.stop()


def test_status_endpoints_show_live_numbers_summed_and_per_worker(tmp_path):
    admin_port = free_port()
    with Upstream() as up:
        gw = start_from_yaml(
            tmp_path,
            _config(up.port, free_port(), 2)
            + f"""
        admin: {{bind: "127.0.0.1:{admin_port}", auth: {{enabled: false}}}}
        store: {{url: "sqlite:///{tmp_path}/admin.db"}}
        """,
        )
        try:
            _traffic(gw.port)
            status, body, _ = get(admin_port, "/api/status")
            live = json.loads(body)["data"]["live"]
            assert status == 200
            assert live["workers_answered"] == 2 and live["requests"] == 23
            pids = {w["pid"] for w in live["per_worker"]}
            assert len(pids) == 2 and pids < set(gw.workers())  # (the admin process is the third)
            assert sum(w["requests"] for w in live["per_worker"]) == 23
            status, body, _ = get(admin_port, "/api/load-balancer/status")
            (target,) = json.loads(body)["data"]["app"]["targets"]
            assert target["target"] == f"127.0.0.1:{up.port}" and target["reachable"] is True
            assert target["opened_total"] == sum(w["opened_total"] for w in target["per_worker"])
            assert len(target["per_worker"]) == 2
            status, body, _ = get(admin_port, "/api/websocket/stats")
            data = json.loads(body)["data"]
            assert data["open_tunnels"] == 0 and len(data["per_worker"]) == 2
            # the admin listener serves /metrics too, with the same numbers
            status, body, _ = get(admin_port, "/metrics")
            assert status == 200
            assert (
                b'isekai_http_requests_total{route="hello",method="POST",status_class="2xx"} 2\n'
                in body
            )
            status, body, _ = get(admin_port, "/health/ready")
            ready = json.loads(body)["data"]
            assert status == 200 and ready["checks"]["workers"] == {
                "ok": True,
                "answered": 2,
                "expected": 2,
            }
        finally:
            gw.stop()


def test_worker_restarts_and_reloads_are_counted(tmp_path):
    metrics_port = free_port()
    with Upstream() as up:
        gw = start_from_yaml(tmp_path, _config(up.port, metrics_port, 2))
        try:
            victim = serving_workers(gw, metrics_port)[0]
            mark = gw.mark()
            os.kill(victim, signal.SIGKILL)
            assert gw.wait_for_log(r"worker \d+ up", timeout=15, since=mark)
            samples = scrape(metrics_port)
            assert value(samples, "isekai_worker_restarts_total") == 1
            assert wait_for(lambda: value(scrape(metrics_port), "isekai_workers") == 2, 10)
            mark = gw.mark()
            gw.send_signal(signal.SIGHUP)
            assert gw.wait_for_log("all 2 workers on config version 2", timeout=10, since=mark)
            path = tmp_path / "gateway.yaml"
            good = path.read_text()
            path.write_text(good + "\nroutes: oops\n")
            mark = gw.mark()
            gw.send_signal(signal.SIGHUP)
            assert gw.wait_for_log("reload rejected", timeout=10, since=mark)
            samples = scrape(metrics_port)
            assert value(samples, "isekai_config_reloads_total", result="ok") == 1
            assert value(samples, "isekai_config_reloads_total", result="failed") == 1
        finally:
            gw.stop()


def test_label_values_are_capped_with_an_other_bucket(tmp_path):
    metrics_port = free_port()
    routes = "\n".join(
        f"          - {{name: r{i}, match: {{path: /r{i}}}, respond: {{body: x}}}}"
        for i in range(5)
    )
    gw = start_from_yaml(
        tmp_path,
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        observability:
          metrics: {{bind: "127.0.0.1:{metrics_port}", max_label_values: 2}}
        routes:
{routes}
        """,
    )
    try:
        for i in range(5):
            for _ in range(i + 1):
                assert get(gw.port, f"/r{i}")[0] == 200
        samples = scrape(metrics_port)
        requests = {
            dict(labels)["route"]: v
            for (name, labels), v in samples.items()
            if name == "isekai_http_requests_total"
        }
        assert requests == {"r0": 1, "r1": 2, "_other": 3 + 4 + 5}
    finally:
        gw.stop()


def test_metrics_off_records_nothing_and_serves_404(tmp_path):
    admin_port = free_port()
    gw = start_from_yaml(
        tmp_path,
        f"""
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        observability: {{metrics: {{enabled: false}}}}
        admin: {{bind: "127.0.0.1:{admin_port}", auth: {{enabled: false}}}}
        store: {{url: "sqlite:///{tmp_path}/admin.db"}}
        routes:
          - {{name: hello, match: {{path: /hello}}, respond: {{body: hi}}}}
        """,
    )
    try:
        assert get(gw.port, "/hello")[0] == 200
        status, body, _ = get(admin_port, "/metrics")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        status, body, _ = get(admin_port, "/api/status")
        assert json.loads(body)["data"]["live"]["requests"] == 0
    finally:
        gw.stop()


def test_readiness_fails_when_an_upstream_is_below_its_share(tmp_path):
    metrics_port = free_port()
    dead = free_port()  # nothing listens there
    with Upstream() as up:
        gw = start_from_yaml(
            tmp_path,
            f"""
            listeners: [{{name: public, bind: "127.0.0.1:0"}}]
            observability:
              metrics: {{bind: "127.0.0.1:{metrics_port}"}}
              health: {{min_healthy_share: 0.5}}
            upstreams:
              app: {{targets: ["127.0.0.1:{up.port}"]}}
              gone: {{targets: ["127.0.0.1:{dead}"]}}
            routes:
              - {{name: app, match: {{path: "/app/*"}}, upstream: app, strip_prefix: /app}}
              - {{name: gone, match: {{path: "/gone/*"}}, upstream: gone}}
            """,
        )
        try:
            status, body, _ = get(metrics_port, "/health/ready")
            assert status == 200, body  # nothing tried yet: reachable until a connect fails
            assert get(gw.port, "/gone/x")[0] == 502
            status, body, _ = get(metrics_port, "/health/ready")
            reply = json.loads(body)
            assert status == 503 and reply["error"]["code"] == "not_ready"
            shares = reply["error"]["checks"]["upstreams"]["upstreams"]
            assert shares["gone"] == {
                "targets": 1,
                "reachable": 0,
                "share": 0.0,
                "unreachable": [f"127.0.0.1:{dead}"],
            }
            assert shares["app"]["share"] == 1.0
            samples = scrape(metrics_port)
            assert (
                value(
                    samples,
                    "isekai_upstream_connect_failures_total",
                    upstream="gone",
                    target=f"127.0.0.1:{dead}",
                )
                == 1
            )
            assert value(samples, "isekai_upstream_errors_total", route="gone", kind="connect") == 1
        finally:
            gw.stop()


def test_a_scrape_does_not_wait_long_for_a_stopped_worker(tmp_path):
    metrics_port = free_port()
    gw = start_from_yaml(
        tmp_path,
        f"""
        workers: 2
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        observability: {{metrics: {{bind: "127.0.0.1:{metrics_port}"}}}}
        routes:
          - {{name: hello, match: {{path: /hello}}, respond: {{body: hi}}}}
        """,
    )
    stopped = serving_workers(gw, metrics_port)[0]
    try:
        os.kill(stopped, signal.SIGSTOP)
        started = time.monotonic()
        samples = scrape(metrics_port)
        took = time.monotonic() - started
        assert value(samples, "isekai_workers") == 1
        assert value(samples, "isekai_workers_expected") == 2
        assert took < 5
        status, body, _ = get(metrics_port, "/health/ready")
        assert status == 503 and json.loads(body)["error"]["checks"]["workers"]["answered"] == 1
    finally:
        os.kill(stopped, signal.SIGCONT)
        gw.stop()


def _resilience_config(
    tmp_path, live: int, dead: int, admin_port: int, metrics_port: int, workers: int, **keys: str
) -> str:
    """A gateway with the admin API and metrics listener, and upstream `flaky` (a live and a
    dead target) with the resilience ``keys`` (YAML flow text each)."""
    upstream = "".join(f", {key}: {text}" for key, text in keys.items())
    return f"""
        workers: {workers}
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        admin: {{bind: "127.0.0.1:{admin_port}", auth: {{enabled: false}}}}
        store: {{url: "sqlite:///{tmp_path}/admin.db"}}
        observability:
          metrics: {{bind: "127.0.0.1:{metrics_port}"}}
        upstreams:
          flaky: {{targets: ["127.0.0.1:{live}", "127.0.0.1:{dead}"]{upstream}}}
        routes:
          - {{name: flaky, match: {{path: "/flaky/*"}}, upstream: flaky, strip_prefix: /flaky}}
    """


def test_a_dead_target_is_ejected_and_its_breaker_opens_in_status_and_metrics(tmp_path):
    admin_port, metrics_port, dead = free_port(), free_port(), free_port()
    with Upstream() as up:
        live_target, dead_target = f"127.0.0.1:{up.port}", f"127.0.0.1:{dead}"
        config = _resilience_config(
            tmp_path,
            up.port,
            dead,
            admin_port,
            metrics_port,
            1,
            outlier="{consecutive_failures: 2, base_ejection: 60s}",
            breaker="{failure_ratio: 0.5, window: 60s, min_requests: 2, open_for: 60s}",
        )
        gw = start_from_yaml(tmp_path, config)
        try:
            statuses = [get(gw.port, "/flaky/bytes/10")[0] for _ in range(10)]
            # round robin over two targets: the dead one takes two of the first four requests,
            # fails twice (502, no retry configured), and is then ejected with its breaker open
            assert sorted(statuses) == [200] * 8 + [502] * 2
            assert statuses[4:] == [200] * 6
            assert len(up.requests) == 8

            flaky = admin_json(admin_port, "/api/load-balancer/status")["flaky"]
            assert flaky["balancer"] == "round_robin" and flaky["panic"] is False
            assert flaky["retries"] == 0 and flaky["refused"]["no_target"] == 0
            live, gone = flaky["targets"]
            assert live["target"] == live_target and gone["target"] == dead_target
            assert (live["requests"], live["failures"], live["selectable_in"]) == (8, 0, 1)
            assert live["ewma_ms"] > 0 and live["breaker"]["state"] == "closed"
            assert live["health"] == "unknown"  # no active checks configured
            assert (gone["requests"], gone["failures"], gone["selectable_in"]) == (2, 2, 0)
            assert gone["ejected_in"] == 1 and gone["ejections"] == 1
            assert 0 < gone["ejected_for"] <= 60
            assert gone["breaker"]["state"] == "open" and gone["breaker"]["open"] == 1
            assert gone["breaker"]["opened_total"] == 1
            assert 0 < gone["breaker"]["next_probe_in"] <= 60
            assert gone["connect_failures"] == 2 and gone["reachable"] is False
            (worker,) = gone["per_worker"]
            assert worker["ejected"] is True and worker["breaker"] == "open"

            breakers = admin_json(admin_port, "/api/circuit-breaker/status")["flaky"]
            assert breakers["enabled"] is True and breakers["state"] == "open"
            assert breakers["settings"]["min_requests"] == 2
            closed, opened = breakers["targets"]
            assert closed["state"] == "closed" and closed["window_requests"] == 8
            assert closed["failure_ratio"] == 0.0
            assert opened["target"] == dead_target and opened["state"] == "open"
            assert opened["states"] == {"closed": 0, "half_open": 0, "open": 1}
            assert opened["opened_total"] == 1 and opened["next_probe_at"].endswith("Z")

            samples = scrape(metrics_port)
            gone_labels = {"upstream": "flaky", "target": dead_target}
            live_labels = {"upstream": "flaky", "target": live_target}
            assert value(samples, "isekai_upstream_target_requests_total", **live_labels) == 8
            assert value(samples, "isekai_upstream_target_requests_total", **gone_labels) == 2
            assert value(samples, "isekai_upstream_target_failures_total", **gone_labels) == 2
            assert value(samples, "isekai_upstream_target_ejected", **gone_labels) == 1
            assert value(samples, "isekai_upstream_ejections_total", **gone_labels) == 1
            assert value(samples, "isekai_upstream_target_selectable", **gone_labels) == 0
            assert value(samples, "isekai_upstream_target_selectable", **live_labels) == 1
            state = "isekai_circuit_breaker_state"
            assert value(samples, state, state="open", **gone_labels) == 1
            assert value(samples, state, state="closed", **gone_labels) == 0
            assert value(samples, state, state="closed", **live_labels) == 1
            assert value(samples, "isekai_circuit_breaker_opened_total", **gone_labels) == 1
            assert value(samples, "isekai_upstream_ewma_seconds", **live_labels) > 0
            assert value(samples, "isekai_upstream_retries_total", upstream="flaky") == 0
            assert value(samples, "isekai_upstream_panic", upstream="flaky") == 0
            assert value(samples, "isekai_upstream_target_in_flight", **live_labels) == 0
            assert (
                value(
                    samples,
                    "isekai_http_requests_total",
                    route="flaky",
                    method="GET",
                    status_class="5xx",
                )
                == 2
            )
            # each transition is logged once
            output = gw.output()
            assert output.count(f"target {dead_target}: ejected for") == 1
            assert output.count(f"target {dead_target}: circuit breaker open") == 1
        finally:
            gw.stop()


def test_retries_around_a_dead_target_tell_one_story_across_two_workers(tmp_path):
    admin_port, metrics_port, dead = free_port(), free_port(), free_port()
    with Upstream() as up:
        dead_target = f"127.0.0.1:{dead}"
        config = _resilience_config(
            tmp_path,
            up.port,
            dead,
            admin_port,
            metrics_port,
            2,
            retry="{attempts: 2, on: [connect_failure], backoff: 0s}",
        )
        gw = start_from_yaml(tmp_path, config)
        try:
            statuses = [get(gw.port, "/flaky/bytes/10")[0] for _ in range(20)]
            assert statuses == [200] * 20  # every failed attempt was retried on the live target
            assert len(up.requests) == 20
            flaky = admin_json(admin_port, "/api/load-balancer/status")["flaky"]
            live, gone = flaky["targets"]
            assert live["requests"] == 20 and live["failures"] == 0
            assert gone["failures"] == gone["requests"] == flaky["retries"] >= 1
            assert gone["connect_failures"] == gone["failures"]
            assert len(flaky["per_worker"]) == 2 and live["workers"] == 2
            assert sum(w["retries"] for w in flaky["per_worker"]) == flaky["retries"]
            samples = scrape(metrics_port)
            retries = value(samples, "isekai_upstream_retries_total", upstream="flaky")
            assert retries == flaky["retries"]
            failures = value(
                samples,
                "isekai_upstream_target_failures_total",
                upstream="flaky",
                target=dead_target,
            )
            assert failures == retries
            assert value(samples, "isekai_upstream_retries_refused_total", upstream="flaky") == 0
            assert (
                value(
                    samples,
                    "isekai_http_requests_total",
                    route="flaky",
                    method="GET",
                    status_class="2xx",
                )
                == 20
            )
        finally:
            gw.stop()


def test_active_health_verdicts_show_in_status_and_metrics(tmp_path):
    admin_port, metrics_port, dead = free_port(), free_port(), free_port()
    with Upstream() as up:
        live_target, dead_target = f"127.0.0.1:{up.port}", f"127.0.0.1:{dead}"
        config = _resilience_config(
            tmp_path,
            up.port,
            dead,
            admin_port,
            metrics_port,
            2,
            health="{path: /status/204, interval: 200ms, timeout: 100ms, "
            "healthy_threshold: 1, unhealthy_threshold: 1}",
        )
        gw = start_from_yaml(tmp_path, config)
        try:

            def verdicts() -> dict:
                data = admin_json(admin_port, "/api/load-balancer/status")["flaky"]
                return {t["target"]: t for t in data["targets"]}

            def settled() -> bool:
                targets = verdicts()
                return (
                    targets[live_target]["health"] == "healthy"
                    and targets[dead_target]["health"] == "unhealthy"
                    and targets[dead_target]["selectable_in"] == 0  # the verdict reached both
                    and targets[dead_target]["workers"] == 2
                )

            assert wait_for(settled, 15, interval=0.2)
            statuses = [get(gw.port, "/flaky/bytes/10")[0] for _ in range(10)]
            assert statuses == [200] * 10  # the unhealthy target gets no request
            assert sum(1 for r in up.requests if r["target"] == "/bytes/10") == 10
            targets = verdicts()
            live, gone = targets[live_target], targets[dead_target]
            assert live["healthy"] is True and gone["healthy"] is False
            assert live["health_check"]["checks"] >= 1
            assert live["health_check"]["last_status"] == 204
            assert gone["health_check"]["failures"] >= 1 and gone["health_check"]["last_error"]
            assert gone["requests"] == 0 and live["requests"] == 10
            assert [w["healthy"] for w in gone["per_worker"]] == [False, False]
            samples = scrape(metrics_port)
            live_labels = {"upstream": "flaky", "target": live_target}
            gone_labels = {"upstream": "flaky", "target": dead_target}
            assert value(samples, "isekai_upstream_target_healthy", **live_labels) == 1
            assert value(samples, "isekai_upstream_target_healthy", **gone_labels) == 0
            assert value(samples, "isekai_health_checks_total", **live_labels) >= 1
            failures = value(samples, "isekai_health_check_failures_total", **gone_labels)
            assert failures >= 1
            assert value(samples, "isekai_health_checks_total", **gone_labels) >= failures
            assert value(samples, "isekai_upstream_target_selectable", **gone_labels) == 0
            assert value(samples, "isekai_upstream_target_selectable", **live_labels) == 2
        finally:
            gw.stop()
