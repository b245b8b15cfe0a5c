"""GET /metrics and the live status endpoints: every worker's counters, summed, after known
traffic through real gateway processes (one worker and two), exact values."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway import start_from_yaml, wait_for
from tests.support.upstream import Upstream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (sample name, sorted labels) -> value."""
    status, body, headers = _get(port, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def serving_workers(gw, metrics_port: int) -> list[int]:
    """The gateway's worker pids: its children but the one serving the metrics listener."""
    found = []
    for pid in gw.workers():
        ports = {c.laddr.port for c in psutil.Process(pid).net_connections("tcp")}
        if metrics_port not in ports:
            found.append(pid)
    return found


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


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
        assert _get(port, "/app/bytes/100")[0] == 200
    for _ in range(3):
        assert _get(port, "/app/status/503")[0] == 503
    for _ in range(4):
        assert _get(port, "/hello")[0] == 200
    for _ in range(2):
        assert _get(port, "/hello", "POST")[0] == 200
    for _ in range(6):
        assert _get(port, "/nowhere")[0] == 404
    assert _get(port, "/hello", "DELETE")[0] == 405
    for _ in range(2):
        assert _get(port, "/denied")[0] == 403


@pytest.mark.parametrize("workers", [1, 2])
def test_a_scrape_sums_every_worker_exactly(tmp_path, workers):
    metrics_port = _free_port()
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
    admin_port = _free_port()
    with Upstream() as up:
        gw = start_from_yaml(
            tmp_path,
            _config(up.port, _free_port(), 2)
            + f"""
        admin: {{bind: "127.0.0.1:{admin_port}", auth: {{enabled: false}}}}
        store: {{url: "sqlite:///{tmp_path}/admin.db"}}
        """,
        )
        try:
            _traffic(gw.port)
            status, body, _ = _get(admin_port, "/api/status")
            live = json.loads(body)["data"]["live"]
            assert status == 200
            assert live["workers_answered"] == 2 and live["requests"] == 23
            pids = {w["pid"] for w in live["per_worker"]}
            assert len(pids) == 2 and pids < set(gw.workers())  # (the admin process is the third)
            assert sum(w["requests"] for w in live["per_worker"]) == 23
            status, body, _ = _get(admin_port, "/api/load-balancer/status")
            (target,) = json.loads(body)["data"]["app"]["targets"]
            assert target["target"] == f"127.0.0.1:{up.port}" and target["reachable"] is True
            assert target["opened_total"] == sum(w["opened_total"] for w in target["per_worker"])
            assert len(target["per_worker"]) == 2
            status, body, _ = _get(admin_port, "/api/websocket/stats")
            data = json.loads(body)["data"]
            assert data["open_tunnels"] == 0 and len(data["per_worker"]) == 2
            # the admin listener serves /metrics too, with the same numbers
            status, body, _ = _get(admin_port, "/metrics")
            assert status == 200
            assert (
                b'isekai_http_requests_total{route="hello",method="POST",status_class="2xx"} 2\n'
                in body
            )
            status, body, _ = _get(admin_port, "/health/ready")
            ready = json.loads(body)["data"]
            assert status == 200 and ready["checks"]["workers"] == {
                "ok": True,
                "answered": 2,
                "expected": 2,
            }
        finally:
            gw.stop()


def test_worker_restarts_and_reloads_are_counted(tmp_path):
    metrics_port = _free_port()
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
    metrics_port = _free_port()
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
                assert _get(gw.port, f"/r{i}")[0] == 200
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
    admin_port = _free_port()
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
        assert _get(gw.port, "/hello")[0] == 200
        status, body, _ = _get(admin_port, "/metrics")
        assert status == 404 and json.loads(body)["error"]["code"] == "not_found"
        status, body, _ = _get(admin_port, "/api/status")
        assert json.loads(body)["data"]["live"]["requests"] == 0
    finally:
        gw.stop()


def test_readiness_fails_when_an_upstream_is_below_its_share(tmp_path):
    metrics_port = _free_port()
    dead = _free_port()  # nothing listens there
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
            status, body, _ = _get(metrics_port, "/health/ready")
            assert status == 200, body  # nothing tried yet: reachable until a connect fails
            assert _get(gw.port, "/gone/x")[0] == 502
            status, body, _ = _get(metrics_port, "/health/ready")
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
    metrics_port = _free_port()
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
        status, body, _ = _get(metrics_port, "/health/ready")
        assert status == 503 and json.loads(body)["error"]["checks"]["workers"]["answered"] == 1
    finally:
        os.kill(stopped, signal.SIGCONT)
        gw.stop()
