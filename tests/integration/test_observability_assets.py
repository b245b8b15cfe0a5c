"""deploy/: the Grafana dashboards and the Prometheus rules are checked against the real thing.

- promtool (installed by `make test` through tests/tools.sh) validates the rules, the scrape
  config and every dashboard expression, and runs the rules' unit tests (alerts_test.yml).
- Every dashboard is Grafana JSON whose panels all carry a PromQL expression.
- Every `isekai_*` metric named by a dashboard or a rule has samples in a real scrape: a real
  gateway with 2 workers, an upstream, a dead upstream, a refusing policy, a policy that raises
  (a plugin family found through its entry point), the access log, the request log and tracing
  on, after known traffic (200, 404, 5xx from the upstream, 502 from the dead upstream, 403
  from the refusing policy, 500 from the raising one). Series that stay at zero may be left out
  of a scrape, so the traffic makes each of them count at least once.

A missing promtool skips locally and fails under CI=true.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import services
from tests.support.gateway import REPO, Gateway

DEPLOY = REPO / "deploy"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULES_TEST = DEPLOY / "prometheus" / "alerts_test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

# A metric name; a recording rule's name (`level:metric:operation`) is not one of ours.
METRIC = re.compile(r"(?<![\w:])isekai_[a-z0-9_]+(?![\w:])")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Values the dashboards' variables may take, to make their expressions plain PromQL.
VARIABLES = {
    "$__rate_interval": "1m",
    "$route": ".*",
    "$upstream": ".*",
    "$policy": ".*",
    "$slo": "99.9",
    "$latency_slo": "0.5",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    # the venv's bin first (tests/tools.sh puts it there); not resolved: a venv's python is a link
    beside = Path(sys.executable).parent / "promtool"
    found = str(beside) if beside.is_file() else shutil.which("promtool")
    if not found:
        services.unavailable("promtool not found: `make tools` (tests/tools.sh) installs it")
    return found


def run_promtool(promtool: str, *args: str) -> str:
    proc = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, cwd=str(REPO)
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARDS}


def panels(board: dict) -> list[dict]:
    out = []
    for panel in board["panels"]:
        out += [panel] if panel["type"] != "row" else panel.get("panels", [])
    return out


def dashboard_expressions(board: dict) -> list[str]:
    """Every PromQL text of a dashboard: panel targets, variable queries, annotations."""
    exprs = [t["expr"] for p in panels(board) for t in p["targets"]]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    exprs += [a["expr"] for a in board["annotations"]["list"] if a.get("expr")]
    return exprs


def rule_expressions() -> list[str]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def plain_promql(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown variable in {expr!r}"
    return expr


def test_observability_assets_rules_pass_promtool(promtool):
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", str(RULES))
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", str(RULES_TEST))
    assert "SUCCESS" in run_promtool(promtool, "check", "config", str(SCRAPE_CONFIG))


def test_observability_assets_dashboards_are_grafana_json_with_promql():
    boards = dashboards()
    assert {"isekai-traffic.json", "isekai-latency.json", "isekai-errors.json"} <= set(boards)
    assert {"isekai-upstreams.json", "isekai-policies.json", "isekai-slo.json"} <= set(boards)
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids), uids
    for name, board in boards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource", name
        assert variables["DS_PROMETHEUS"]["query"] == "prometheus", name
        assert board["schemaVersion"] >= 36, name  # Grafana 9.x/10.x
        found = panels(board)
        assert found, f"{name} has no panels"
        for panel in found:
            where = f"{name}: panel {panel['title']!r}"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["expr"].strip(), f"{where} has an empty expression"
                assert METRIC.search(target["expr"]) or "up{" in target["expr"], where
    slo = json.loads((DEPLOY / "grafana" / "dashboards" / "isekai-slo.json").read_text())
    assert {"slo", "latency_slo"} <= {v["name"] for v in slo["templating"]["list"]}
    assert any("label_values(" in e for b in boards.values() for e in dashboard_expressions(b))


def test_observability_assets_dashboard_expressions_parse(promtool, tmp_path):
    """promtool parses every dashboard expression (variables replaced by sample values),
    handed to it as recording rules."""
    rules = []
    for name, board in dashboards().items():
        for i, expr in enumerate(dashboard_expressions(board)):
            if expr.startswith("label_values("):  # Grafana's, not PromQL: its metric must parse
                expr = re.fullmatch(r"label_values\((\w+), *\w+\)", expr).group(1)
            rules.append(
                {
                    "record": f"dashboard:{name[:-5].replace('-', '_')}:{i}",
                    "expr": plain_promql(expr),
                }
            )
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(
        promtool, "check", "rules", str(path)
    )


def referenced_metrics() -> dict[str, set[str]]:
    """Metric name -> where it is used (dashboard files, alerts.yml)."""
    used: dict[str, set[str]] = {}
    for name, board in dashboards().items():
        for expr in dashboard_expressions(board):
            for metric in METRIC.findall(expr):
                used.setdefault(metric, set()).add(name)
    for expr in rule_expressions():
        for metric in METRIC.findall(expr):
            used.setdefault(metric, set()).add(RULES.name)
    return used


def test_observability_assets_reference_the_contract_metrics():
    used = referenced_metrics()
    # the main families, from dashboards and rules alike
    for metric in (
        "isekai_http_requests_total",
        "isekai_http_request_duration_seconds_bucket",
        "isekai_upstream_request_duration_seconds_bucket",
        "isekai_upstream_errors_total",
        "isekai_upstream_connect_failures_total",
        "isekai_upstream_pool_timeouts_total",
        "isekai_policy_answers_total",
        "isekai_log_records_dropped_total",
        "isekai_config_reloads_total",
        "isekai_worker_restarts_total",
    ):
        assert metric in used, metric
    assert RULES.name in used["isekai_http_requests_total"]


# -- a real scrape --------------------------------------------------------------------------


class TraceSink(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts every export: 200 with an empty protobuf body."""

    posts: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        TraceSink.posts.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def trace_sink():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TraceSink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


PLUGIN = """
from dataclasses import dataclass
from typing import ClassVar

from isekai import PolicyFamily


@dataclass(frozen=True, slots=True)
class ExplodeConfig:
    family: ClassVar[str] = "explode"


class Explode:
    def __init__(self, config):
        pass

    def on_request(self, request):
        raise RuntimeError("a policy bug, on purpose")


family = PolicyFamily(type="explode", config=ExplodeConfig, policy=Explode)
"""


def plugin_path(directory: Path) -> str:
    """A directory holding the `explode` policy family, found through the `isekai.policies`
    entry point of its dist-info (as if pip-installed) once it is on PYTHONPATH."""
    directory.mkdir()
    (directory / "explode_policy.py").write_text(PLUGIN)
    info = directory / "explode_policy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: explode-policy\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[isekai.policies]\nexplode = explode_policy:family\n")
    return os.pathsep.join((str(REPO), str(directory)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def scrape(port: int) -> tuple[dict[str, tuple[str, int]], dict[str, list]]:
    """(sample name -> (family type, number of samples), sample name -> its samples)."""
    status, body = call(port, "GET", "/metrics")
    assert status == 200, body[:500]
    found: dict[str, tuple[str, int]] = {}
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            kind, count = found.get(sample.name, (family.type, 0))
            found[sample.name] = (kind, count + 1)
            samples.setdefault(sample.name, []).append(sample)
    return found, samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    return sum(s.value for s in samples.get(name, ()) if labels.items() <= s.labels.items())


def missing_from(found: dict[str, tuple[str, int]], used: dict[str, set[str]]) -> list[str]:
    missing = []
    for metric, where in sorted(used.items()):
        kind, count = found.get(metric, ("", 0))
        if not count:
            missing.append(f"{metric} (used by {', '.join(sorted(where))})")
        elif metric.endswith(HISTOGRAM_SUFFIXES) and kind != "histogram":
            missing.append(f"{metric} is a {kind}, not a histogram's series")
    return missing


@pytest.mark.timeout(120)
def test_observability_assets_every_metric_used_is_in_a_real_scrape(tmp_path, upstream, trace_sink):
    used = referenced_metrics()
    metrics_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"""
workers: 2
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
admin:
  bind: "127.0.0.1:0"
  auth: {{enabled: false}}
  request_logs: {{enabled: true}}
store: {{url: "sqlite:///{tmp_path}/isekai.db"}}
observability:
  metrics: {{bind: "127.0.0.1:{metrics_port}"}}
  access_log: {{enabled: true, path: "{tmp_path}/access.log"}}
  tracing:
    enabled: true
    endpoint: "http://127.0.0.1:{trace_sink}"
    sample_ratio: 1
    export_interval: 200ms
policies:
  nobody: {{type: ip_filter, deny: [127.0.0.0/8, "::1"]}}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream.port}"]}}
  dead: {{targets: ["127.0.0.1:{free_port()}"], connect_timeout: 1s}}
routes:
  - {{name: echo, match: {{path: /echo}}, upstream: app}}
  - {{name: status, match: {{path: "/status/{{code}}"}}, upstream: app}}
  - {{name: down, match: {{path: /down}}, upstream: dead}}
  - {{name: locked, match: {{path: /locked}}, upstream: app, policies: [nobody]}}
  - {{name: boom, match: {{path: /boom}}, respond: {{body: x}}, policies: [{{type: explode}}]}}
"""
    )
    env = {"PYTHONPATH": plugin_path(tmp_path / "plugins")}
    gw = Gateway(config, startup_timeout=30, env=env)
    try:
        port = gw.ports["public"]
        traffic = [
            ("GET", "/echo", None, 200),
            ("POST", "/echo", b"x" * 1000, 200),
            ("GET", "/status/503", None, 503),
            ("GET", "/nowhere", None, 404),
            ("GET", "/down", None, 502),
            ("GET", "/locked", None, 403),
            ("GET", "/boom", None, 500),
        ]
        for method, path, body, expected in traffic * 3:
            status, answer = call(port, method, path, body)
            assert status == expected, (method, path, status, answer[:300])

        deadline = time.monotonic() + 30
        while True:  # workers ship their numbers periodically; writers and exporters batch
            try:
                found, samples = scrape(metrics_port)
            except OSError as exc:
                found, samples = {}, {}
                missing = [f"no GET /metrics on observability.metrics.bind: {exc}"]
            else:
                missing = missing_from(found, used)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not missing, "metrics used by deploy/ but absent from the scrape:\n  " + (
            "\n  ".join(missing)
        )
        # the labels and values the dashboards and rules select on
        requests = "isekai_http_requests_total"
        assert value(samples, requests, route="echo", method="POST", status_class="2xx") == 3
        assert value(samples, requests, route="_none", status_class="4xx") == 3
        assert value(samples, requests, route="status", status_class="5xx") == 3
        assert value(samples, requests, route="down", status_class="5xx") == 3
        assert value(samples, requests, route="locked", status_class="4xx") == 3
        assert value(samples, "isekai_upstream_errors_total", route="down", kind="connect") == 3
        assert value(samples, "isekai_internal_errors_total", route="boom") == 3
        assert value(samples, "isekai_policy_answers_total", policy="nobody") == 3
        assert value(samples, "isekai_upstream_connect_failures_total", upstream="dead") >= 1
        assert value(samples, "isekai_upstream_connections_created_total", upstream="app") >= 1
        duration = "isekai_http_request_duration_seconds_count"
        assert value(samples, duration, route="echo") == 6
        assert value(samples, "isekai_http_request_duration_seconds_bucket", le="+Inf") == 21
        states = {s.labels["state"] for s in samples["isekai_upstream_connections"]}
        assert states == {"idle", "active"}
        assert value(samples, "isekai_config_reloads_total", result="failed") == 0
        assert value(samples, "isekai_workers") == 2
    finally:
        gw.stop()
