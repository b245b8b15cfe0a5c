"""Upstream resilience through a real gateway process and real upstream processes that die,
freeze and fail: retries (which methods, bodies, budgets), outlier ejection and return, the
circuit breaker, limits, weighted and consistent-hash balancing."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import textwrap
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.chaos_upstream import ChaosUpstream, wait_until
from tests.support.client import connect, read_responses
from tests.support.gateway import start_from_yaml
from tests.support.observe import admin_json, free_port, scrape, value
from tests.support.upstream import Upstream


def _dead_address() -> str:
    """An address nothing listens on (connects are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def call(
    port: int,
    method: str = "GET",
    path: str = "/x",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
):
    """One request on a fresh connection: (status, parsed JSON or raw body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data
    finally:
        conn.close()


@pytest.fixture
def chaos():
    started: list[ChaosUpstream] = []

    def start(name: str) -> ChaosUpstream:
        up = ChaosUpstream(name)
        started.append(up)
        return up

    yield start
    for up in started:
        up.stop()


def gateway(tmp_path, upstream_yaml: str, workers: int = 1):
    return start_from_yaml(
        tmp_path,
        f"""
        workers: {workers}
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        upstreams:
          app:
{upstream_yaml}
        routes:
          - {{name: app, match: {{path: "/*"}}, upstream: app}}
        """,
    )


def indent(text: str) -> str:
    return textwrap.indent(textwrap.dedent(text).strip(), " " * 12)


def test_resilience_connect_failure_is_retried_on_another_target_for_any_method(tmp_path, chaos):
    live = chaos("live")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{_dead_address()}", "{live.address}"]
        retry: {{attempts: 2, on: [connect_failure], backoff: 5ms}}
    """),
    )
    try:
        answers = [call(gw.port, "POST" if i % 2 else "GET", body=b"x" * 10) for i in range(20)]
        assert [status for status, _ in answers] == [200] * 20
        assert all(body["server"] == "live" for _, body in answers)
        assert live.counts()["/x"] == 20  # each request reached an upstream once
    finally:
        gw.stop()


def test_resilience_post_is_never_repeated_once_sent(tmp_path, chaos):
    failing, good = chaos("failing"), chaos("good")
    failing.set_mode("fail")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{failing.address}", "{good.address}"]
        retry: {{attempts: 3, on: [reset, 502, 503, 504], backoff: 5ms, budget: 1.0}}
    """),
    )
    try:
        posts = [call(gw.port, "POST", body=b"{}") for _ in range(20)]
        failed = sum(status == 503 for status, _ in posts)
        assert 0 < failed < 20
        assert {status for status, _ in posts} == {200, 503}
        # every POST reached exactly one upstream: nothing was sent twice
        assert failing.counts()["/x"] == failed
        assert failing.counts()["/x"] + good.counts()["/x"] == 20
        gets = [call(gw.port, "GET") for _ in range(20)]
        assert [status for status, _ in gets] == [200] * 20  # idempotent: retried on good
        assert good.counts()["/x"] == 20 - failed + 20
    finally:
        gw.stop()


def test_resilience_retry_non_idempotent_opt_in(tmp_path, chaos):
    failing, good = chaos("failing"), chaos("good")
    failing.set_mode("fail")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{failing.address}", "{good.address}"]
        retry: {{attempts: 2, on: [503], backoff: 5ms, budget: 1.0, retry_non_idempotent: true}}
    """),
    )
    try:
        posts = [call(gw.port, "POST", body=b"abc") for _ in range(10)]
        assert [status for status, _ in posts] == [200] * 10
        assert all(body["body_length"] == 3 for _, body in posts)
    finally:
        gw.stop()


def test_resilience_body_is_replayed_only_while_held(tmp_path, chaos):
    failing, good = chaos("failing"), chaos("good")
    failing.set_mode("fail")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{failing.address}", "{good.address}"]
        retry: {{attempts: 2, on: [503], backoff: 1ms, budget: 1.0, max_body: 4KiB}}
    """),
    )
    try:
        small = [call(gw.port, "PUT", body=b"s" * 4096) for _ in range(6)]
        assert [status for status, _ in small] == [200] * 6
        assert all(body["body_length"] == 4096 for _, body in small)  # whole, on the retry
        large = [call(gw.port, "PUT", body=b"L" * 5000) for _ in range(6)]
        statuses = Counter(status for status, _ in large)
        assert statuses[503] > 0 and statuses[200] > 0  # too large to hold: never retried
        # each small PUT went to `failing` first (the rotation resumes after the retried
        # target), the large ones alternate
        assert failing.counts()["/x"] == 6 + statuses[503]
    finally:
        gw.stop()


def test_resilience_frozen_target_times_out_per_try_and_is_retried(tmp_path, chaos):
    frozen, good = chaos("frozen"), chaos("good")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{frozen.address}", "{good.address}"]
        retry: {{attempts: 2, on: [timeout], backoff: 1ms, budget: 1.0, per_try_timeout: 300ms}}
    """),
    )
    try:
        frozen.freeze()
        started = time.monotonic()
        answers = [call(gw.port) for _ in range(6)]
        assert [status for status, _ in answers] == [200] * 6
        assert all(body["server"] == "good" for _, body in answers)
        assert time.monotonic() - started < 10  # bounded by per_try_timeout, not read_timeout
    finally:
        frozen.thaw()
        gw.stop()


def test_resilience_no_retry_once_the_response_began(tmp_path):
    with Upstream() as up, Upstream() as other:
        gw = gateway(
            tmp_path,
            indent(f"""
            targets: ["127.0.0.1:{up.port}", "127.0.0.1:{other.port}"]
            retry: {{attempts: 3, on: [reset, 502], backoff: 1ms, budget: 1.0}}
        """),
        )
        try:
            conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
            conn.request("GET", "/partial")  # head, 10 of 1000 bytes, then close
            response = conn.getresponse()
            assert response.status == 200
            with pytest.raises(http.client.IncompleteRead):
                response.read()
            conn.close()
            partial = [r for r in up.requests + other.requests if r["target"] == "/partial"]
            assert len(partial) == 1
        finally:
            gw.stop()


def test_resilience_outlier_ejects_a_failing_target_and_lets_it_return(tmp_path, chaos):
    failing, good = chaos("failing"), chaos("good")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{failing.address}", "{good.address}"]
        outlier: {{consecutive_failures: 3, base_ejection: 1s}}
    """),
    )
    try:
        failing.set_mode("fail")
        statuses = Counter(call(gw.port)[0] for _ in range(10))
        assert statuses[503] == 3  # three failures in a row eject it
        before = failing.counts()["/x"]
        assert [call(gw.port)[0] for _ in range(10)] == [200] * 10
        assert failing.counts()["/x"] == before  # ejected: no traffic
        failing.set_mode("ok")
        time.sleep(1.3)  # the ejection (1 s) ends
        servers = Counter(call(gw.port)[1]["server"] for _ in range(10))
        assert servers["failing"] >= 4  # back in the rotation
    finally:
        gw.stop()


def test_resilience_all_targets_ejected_answers_503_json(tmp_path):
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{_dead_address()}", "{_dead_address()}"]
        outlier: {{consecutive_failures: 1, base_ejection: 30s}}
    """),
    )
    try:
        first = [call(gw.port)[0] for _ in range(2)]
        assert first == [502, 502]
        status, body = call(gw.port)
        assert status == 503 and body["success"] is False
        assert "no healthy upstream target" in json.dumps(body)
    finally:
        gw.stop()


def test_resilience_breaker_opens_then_probes_and_closes(tmp_path, chaos):
    failing, good = chaos("failing"), chaos("good")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{failing.address}", "{good.address}"]
        breaker: {{failure_ratio: 0.5, window: 10s, min_requests: 4, open_for: 1s,
                   half_open_requests: 2}}
    """),
    )
    try:
        failing.set_mode("fail")
        mark = gw.mark()
        statuses = Counter(call(gw.port)[0] for _ in range(12))
        assert statuses[503] == 4  # opens at its 4th failure (4 of 4 failed)
        assert gw.wait_for_log(f"target {failing.address}: circuit breaker open", 5, mark)
        before = failing.counts()["/x"]
        assert [call(gw.port)[0] for _ in range(6)] == [200] * 6
        assert failing.counts()["/x"] == before
        failing.set_mode("ok")
        assert gw.wait_for_log(r"circuit breaker half-open", 5, mark)
        servers = Counter(call(gw.port)[1]["server"] for _ in range(10))
        assert servers["failing"] >= 2
        assert gw.wait_for_log(r"circuit breaker closed", 5, mark)
        opened = [line for line in gw.log[mark:] if "circuit breaker open" in line]
        assert len(opened) == 1  # each transition logged once
    finally:
        gw.stop()


def test_resilience_max_requests_answers_503(tmp_path):
    with Upstream() as up:
        gw = gateway(
            tmp_path,
            indent(f"""
            targets: ["127.0.0.1:{up.port}"]
            max_requests: 1
        """),
        )
        try:
            results: list[int] = []
            slow = threading.Thread(
                target=lambda: results.append(call(gw.port, path="/slow/800")[0])
            )
            slow.start()
            assert wait_until(lambda: any(r["target"] == "/slow/800" for r in up.requests), 5)
            status, body = call(gw.port, path="/echo")
            assert status == 503 and "max_requests" in json.dumps(body)
            slow.join(10)
            assert results == [200]
            assert call(gw.port, path="/echo")[0] == 200
        finally:
            gw.stop()


def test_resilience_weighted_round_robin_through_the_gateway(tmp_path, chaos):
    heavy, light = chaos("heavy"), chaos("light")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: [{{address: "{heavy.address}", weight: 3}}, "{light.address}"]
    """),
    )
    try:
        servers = Counter(call(gw.port)[1]["server"] for _ in range(80))
        assert servers == {"heavy": 60, "light": 20}  # smooth WRR in one worker is exact
    finally:
        gw.stop()


def _three(chaos) -> str:
    """Three chaos upstreams a, b and c, as a YAML list's items."""
    return ", ".join(f'"{chaos(name).address}"' for name in ("a", "b", "c"))


def test_resilience_consistent_hash_sticks_across_workers(tmp_path, chaos):
    targets = _three(chaos)
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: [{targets}]
        balancer: consistent_hash
        hash_on: header:X-User
    """),
        workers=2,
    )
    try:
        for user in ("alice", "bob", "carol", "dave", "erin"):
            servers = {call(gw.port, headers={"X-User": user})[1]["server"] for _ in range(8)}
            assert len(servers) == 1, (user, servers)  # fresh connections: both workers
    finally:
        gw.stop()


def _load(port: int, count: int, threads: int = 4) -> Counter:
    """``count`` GETs on fresh connections from ``threads`` clients: (status, server) counts."""

    def one(_: int) -> tuple[int, str]:
        status, body = call(port, timeout=15)
        return status, body.get("server", "") if isinstance(body, dict) else ""

    with ThreadPoolExecutor(threads) as pool:
        return Counter(pool.map(one, range(count)))


def test_resilience_two_workers_three_upstreams_tell_one_story(tmp_path, chaos):
    """Three upstreams die, fail, freeze and recover under load in front of two workers: what
    the clients saw, what each upstream served, the status endpoints and the metrics agree."""
    a, b, c = chaos("a"), chaos("b"), chaos("c")
    admin_port, metrics_port = free_port(), free_port()
    gw = start_from_yaml(
        tmp_path,
        f"""
        workers: 2
        listeners: [{{name: public, bind: "127.0.0.1:0"}}]
        admin: {{bind: "127.0.0.1:{admin_port}", auth: {{enabled: false}}}}
        store: {{url: "sqlite:///{tmp_path}/admin.db"}}
        observability:
          metrics: {{bind: "127.0.0.1:{metrics_port}"}}
        upstreams:
          app:
            targets: ["{a.address}", "{b.address}", "{c.address}"]
            health: {{path: /healthz, interval: 200ms, timeout: 150ms, healthy_threshold: 1,
                      unhealthy_threshold: 2}}
            outlier: {{consecutive_failures: 3, base_ejection: 1s}}
            retry: {{attempts: 3, on: [connect_failure, reset, timeout, 502, 503, 504],
                    backoff: 5ms, budget: 1.0, per_try_timeout: 1s}}
        routes:
          - {{name: app, match: {{path: "/*"}}, upstream: app}}
        """,
    )

    def targets() -> dict[str, dict]:
        data = admin_json(admin_port, "/api/load-balancer/status")["app"]
        return {t["target"]: t for t in data["targets"]}

    def health_is(up: ChaosUpstream, verdict: str) -> bool:
        target = targets()[up.address]
        return target["health"] == verdict and target["healthy_in"] == (
            2 if verdict == "healthy" else 0
        )

    try:
        assert wait_until(lambda: all(health_is(up, "healthy") for up in (a, b, c)), 15)
        # 1. all well: the load is spread
        first = _load(gw.port, 60)
        assert sum(first.values()) == first[200, "a"] + first[200, "b"] + first[200, "c"] == 60
        assert min(first[200, name] for name in "abc") >= 5
        # 2. a dies: connect failures are retried elsewhere; the checker takes it out
        a_served = a.counts()["*"]
        a.kill()
        died = _load(gw.port, 60)
        assert sum(n for (status, _), n in died.items() if status == 200) == 60
        assert died[200, "a"] == 0
        assert wait_until(lambda: health_is(a, "unhealthy"), 10)
        # 3. b answers 503 to everything but its health check: retried on c, then ejected
        b_before, b_failures_before = b.counts()["*"], targets()[b.address]["failures"]
        b.set_mode("fail")
        failing = _load(gw.port, 60)
        assert failing == Counter({(200, "c"): 60})
        b_failed = b.counts()["*"] - b_before
        assert b_failed >= 3  # each of its 503s became a retry, never a client error
        assert targets()[b.address]["failures"] - b_failures_before == b_failed
        assert targets()[b.address]["ejections"] >= 1
        # 4. b recovers and c freezes: per-try timeouts on c are retried on b
        b.set_mode("ok")
        assert wait_until(lambda: targets()[b.address]["ejected_in"] == 0, 10)
        c.freeze()
        frozen = _load(gw.port, 30)
        assert frozen == Counter({(200, "b"): 30})
        assert wait_until(lambda: health_is(c, "unhealthy"), 10)
        # 5. b dies too: with no healthy target left, 503 JSON at once
        b_served = b.counts()["*"]
        b.kill()
        assert wait_until(lambda: health_is(b, "unhealthy"), 10)
        down = [call(gw.port) for _ in range(10)]
        assert [status for status, _ in down] == [503] * 10
        assert all("no healthy upstream target" in json.dumps(body) for _, body in down)
        # 6. c thaws: healthy again, it takes everything
        c.thaw()
        assert wait_until(lambda: health_is(c, "healthy"), 10)
        recovered = _load(gw.port, 20)
        assert recovered == Counter({(200, "c"): 20})

        # one story: what the upstreams served is what the gateway counted for them
        status = targets()
        gone_a, gone_b = status[a.address], status[b.address]
        assert gone_a["requests"] - gone_a["failures"] == a_served
        assert gone_b["requests"] == b_served  # no attempt reached b after it died
        assert gone_b["failures"] == b_failed
        cluster = admin_json(admin_port, "/api/load-balancer/status")["app"]
        assert cluster["refused"]["no_target"] == 10  # the 503s of step 5, nothing else
        samples = scrape(metrics_port)
        requests = "isekai_http_requests_total"
        ok = value(samples, requests, route="app", method="GET", status_class="2xx")
        failed = value(samples, requests, route="app", method="GET", status_class="5xx")
        assert (ok, failed) == (60 + 60 + 60 + 30 + 20, 10)
        labels = {"upstream": "app", "target": b.address}
        assert value(samples, "isekai_upstream_target_failures_total", **labels) == b_failed
        assert value(samples, "isekai_upstream_retries_total", upstream="app") >= b_failed
        assert value(samples, "isekai_upstream_refused_total", upstream="app", reason="no_target")
    finally:
        c.thaw()
        gw.stop()


@pytest.mark.parametrize(
    ("hash_on", "request_for"),
    [
        ("cookie:Sid", lambda key: ("/x", {"Cookie": f"theme=dark; Sid={key}; sid=other"})),
        ("path", lambda key: (f"/items/{key}", {})),
        ("header:X-User", lambda key: ("/x", {"x-user": key})),
    ],
)
def test_resilience_consistent_hash_key_sources(tmp_path, chaos, hash_on, request_for):
    targets = _three(chaos)
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: [{targets}]
        balancer: consistent_hash
        hash_on: "{hash_on}"
        hash_algorithm: maglev
    """),
    )
    try:
        owners = {}
        for i in range(30):
            path, headers = request_for(f"user-{i}")
            servers = {call(gw.port, path=path, headers=headers)[1]["server"] for _ in range(3)}
            assert len(servers) == 1, (i, servers)
            owners[i] = servers.pop()
        assert len(set(owners.values())) == 3  # 30 keys spread over the three targets
    finally:
        gw.stop()


def test_resilience_consistent_hash_on_client_ip_keeps_one_client_on_one_target(tmp_path, chaos):
    targets = _three(chaos)
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: [{targets}]
        balancer: consistent_hash
    """),
    )
    try:
        servers = Counter(call(gw.port)[1]["server"] for _ in range(12))
        assert len(servers) == 1 and sum(servers.values()) == 12  # every request from 127.0.0.1
    finally:
        gw.stop()


@pytest.mark.parametrize(("threshold", "used"), [(0, {"c"}), (50, {"a", "b", "c"})])
def test_resilience_panic_threshold_spreads_over_all_targets(tmp_path, chaos, threshold, used):
    a, b, c = chaos("a"), chaos("b"), chaos("c")
    a.set_health("fail")  # their health checks fail; they would still serve
    b.set_health("fail")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{a.address}", "{b.address}", "{c.address}"]
        health: {{path: /healthz, interval: 100ms, timeout: 80ms, healthy_threshold: 1,
                  unhealthy_threshold: 1}}
        panic_threshold: {threshold}
    """),
    )
    try:
        assert gw.wait_for_log(f"target {b.address}: health check says unhealthy", 10)
        assert gw.wait_for_log(f"target {a.address}: health check says unhealthy", 10)
        servers = Counter(call(gw.port)[1]["server"] for _ in range(12))
        assert set(servers) == used  # 1 of 3 healthy is below 50 %: panic uses them all
    finally:
        gw.stop()


def test_resilience_max_pending_answers_503(tmp_path):
    with Upstream() as up:
        gw = gateway(
            tmp_path,
            indent(f"""
            targets: ["127.0.0.1:{up.port}"]
            max_connections: 1
            max_keepalive_connections: 1
            max_pending: 1
        """),
        )
        try:
            results: list[int] = []
            slow = [
                threading.Thread(target=lambda: results.append(call(gw.port, path="/slow/800")[0]))
                for _ in range(2)
            ]
            slow[0].start()
            assert wait_until(lambda: len(up.requests) == 1, 5)
            slow[1].start()  # waits for the one connection: the one pending slot
            time.sleep(0.5)  # (no way to see the wait from outside; it starts within this)
            status, body = call(gw.port, path="/echo")
            assert status == 503 and "max_pending" in json.dumps(body)
            for thread in slow:
                thread.join(10)
            assert results == [200, 200]
        finally:
            gw.stop()


@pytest.mark.parametrize("framing", ["chunked", "length"])
def test_resilience_pipelined_body_is_replayed_whole(tmp_path, chaos, framing):
    failing = chaos("failing")
    failing.set_mode("fail")
    body = (
        b"Transfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"
        if framing == "chunked"
        else b"Content-Length: 11\r\n\r\nhello world"
    )
    with Upstream() as good:
        gw = gateway(
            tmp_path,
            indent(f"""
            targets: ["{failing.address}", "127.0.0.1:{good.port}"]
            retry: {{attempts: 2, on: [503], backoff: 1ms, budget: 1.0}}
        """),
        )
        try:
            with connect(gw.port) as sock:  # the PUT's body arrives before it is routed
                sock.sendall(
                    b"GET /echo/1 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"PUT /echo/2 HTTP/1.1\r\nHost: x\r\n" + body
                )
                answers = read_responses(sock, 2)
            assert [status for status, _, _ in answers] == [200, 200]
            put = json.loads(answers[1][2])
            assert put["method"] == "PUT" and put["body_length"] == 11
            assert failing.counts()["/echo/2"] == 1  # tried there first, then replayed whole
        finally:
            gw.stop()


def test_resilience_reload_closing_a_pool_is_not_the_targets_fault(tmp_path):
    with Upstream() as up:
        text = f"""
            workers: 1
            listeners: [{{name: public, bind: "127.0.0.1:0"}}]
            upstreams:
              app: {{targets: ["127.0.0.1:{up.port}"], max_connections: 1,
                     outlier: {{consecutive_failures: 1, base_ejection: 60s}}, connect_timeout: 5s}}
            routes:
              - {{name: app, match: {{path: "/*"}}, upstream: app}}
        """
        gw = start_from_yaml(tmp_path, text)
        try:
            results: list[int] = []
            threads = [
                threading.Thread(target=lambda p=p: results.append(call(gw.port, path=p)[0]))
                for p in ("/slow/800", "/slow/10")
            ]
            threads[0].start()
            assert wait_until(lambda: len(up.requests) == 1, 5)
            threads[1].start()  # parked: the one connection is busy
            time.sleep(0.3)
            mark = gw.mark()
            gw.config_path.write_text(
                textwrap.dedent(text).replace("connect_timeout: 5s", "connect_timeout: 4s")
                + "\nadmin: {enabled: false}\n"
            )
            gw.send_signal(signal.SIGHUP)
            assert gw.wait_for_log(r"version 2", 10, mark)
            for thread in threads:
                thread.join(10)
            assert sorted(results) == [200, 503]  # the parked one: its pool was replaced
            assert call(gw.port, path="/echo")[0] == 200  # and the target was not ejected
            assert "ejected" not in "".join(gw.log[mark:])
        finally:
            gw.stop()


@pytest.mark.parametrize(("overall", "expected"), [("", 200), (", overall_timeout: 200ms", 504)])
def test_resilience_overall_timeout_stops_retries(tmp_path, chaos, overall, expected):
    frozen, good = chaos("frozen"), chaos("good")
    gw = gateway(
        tmp_path,
        indent(f"""
        targets: ["{frozen.address}", "{good.address}"]
        retry: {{attempts: 2, on: [timeout], backoff: 1ms, budget: 1.0,
                 per_try_timeout: 300ms{overall}}}
    """),
    )
    try:
        frozen.freeze()
        # the first try goes to the frozen target (round robin starts there) and times out;
        # within the overall timeout it is retried on the good one, past it the client gets 504
        assert call(gw.port)[0] == expected
    finally:
        frozen.thaw()
        gw.stop()
