"""The ``metrics`` policy in the config: its keys and defaults, every refusal located by file,
line and config path, one declaration per metric name across all policies (file, admin API
changes), and the published JSON Schema saying the same."""

from __future__ import annotations

import textwrap

import pytest
from jsonschema import Draft202012Validator

from isekai._core.counters import LATENCY_BUCKETS
from isekai._core.protocol import ProxyRequest
from isekai.config import defaults, jsonschema
from isekai.config.changes import ConfigIndex
from isekai.config.loader import load_config_text
from isekai.config.metrics_policy import (
    LABEL_SOURCES,
    CustomCounter,
    CustomHistogram,
    MetricsConfig,
)
from isekai.config.nodes import API_SOURCE
from isekai.errors import ConfigError

EXAMPLE = """
upstreams:
  app: {targets: ["127.0.0.1:9000"]}
policies:
  per_tier:
    type: metrics
    counters:
      - name: api_requests_by_tier_total
        help: Requests by consumer tier and API version
        labels: {tier: "ctx:tier", version: "header:X-Api-Version", user: "param:id",
                 status: status_class}
        max_series: 50
    histograms:
      - name: api_request_seconds
        help: Latency by tier
        buckets: [0.01, 0.1, 1, 5]
        labels: {tier: "ctx:tier"}
routes:
  - {name: users, match: {path: "/users/{id}"}, upstream: app,
     policies: [per_tier, {type: metrics, histograms: [{name: body_size, value: response_bytes}]}]}
"""


def load(text):
    return load_config_text(textwrap.dedent(text).lstrip("\n"), "gw.yaml", env={})


def error_of(text):
    with pytest.raises(ConfigError) as caught:
        load(text)
    return str(caught.value)


def policy_error(body):
    return error_of(f"policies:\n  p: {body}\n")


def test_metrics_policy_example_reads_every_key():
    config = load(EXAMPLE)
    options = config.policies["per_tier"].options
    assert options == MetricsConfig(
        counters=(
            CustomCounter(
                name="api_requests_by_tier_total",
                help="Requests by consumer tier and API version",
                labels=(
                    ("tier", "ctx:tier"),
                    ("version", "header:X-Api-Version"),
                    ("user", "param:id"),
                    ("status", "status_class"),
                ),
                max_series=50,
            ),
        ),
        histograms=(
            CustomHistogram(
                name="api_request_seconds",
                help="Latency by tier",
                labels=(("tier", "ctx:tier"),),
                buckets=(0.01, 0.1, 1.0, 5.0),
            ),
        ),
    )
    inline = config.routes[0].policies[1].options.histograms[0]
    assert inline.value == "response_bytes"
    assert inline.buckets == defaults.METRIC_SIZE_BUCKETS
    assert inline.max_series == defaults.METRIC_MAX_SERIES == 1000


def test_metrics_policy_label_sources_are_those_core_reads():
    assert LABEL_SOURCES == ProxyRequest.LABEL_SOURCES


def test_metrics_policy_duration_buckets_default_to_the_builtin_latency_buckets():
    config = load("policies:\n  p: {type: metrics, histograms: [{name: t}]}\n")
    assert config.policies["p"].options.histograms[0].buckets == LATENCY_BUCKETS


REFUSED = {
    "no metric": (
        "{type: metrics}",
        "gw.yaml:2: policies.p: needs at least one metric in 'counters' or 'histograms'",
    ),
    "empty lists": (
        "{type: metrics, counters: [], histograms: []}",
        "gw.yaml:2: policies.p: needs at least one metric in 'counters' or 'histograms'",
    ),
    "bad name": (
        "{type: metrics, counters: [{name: 2xx_count}]}",
        "gw.yaml:2: policies.p.counters[0].name: not a valid metric name: '2xx_count' (letters, "
        "digits and '_', not starting with a digit)",
    ),
    "dash in name": (
        "{type: metrics, counters: [{name: api-requests}]}",
        "gw.yaml:2: policies.p.counters[0].name: not a valid metric name: 'api-requests'",
    ),
    "colon in name": (
        "{type: metrics, counters: [{name: 'job:requests:rate5m'}]}",
        "gw.yaml:2: policies.p.counters[0].name: metric name 'job:requests:rate5m': colons are "
        "reserved for recording rules; use '_'",
    ),
    "ours": (
        "{type: metrics, histograms: [{name: isekai_http_requests}]}",
        "gw.yaml:2: policies.p.histograms[0].name: metric names starting with 'isekai_' are the "
        "gateway's own: 'isekai_http_requests'",
    ),
    "ours in capitals": (
        "{type: metrics, counters: [{name: Isekai_mine}]}",
        "gw.yaml:2: policies.p.counters[0].name: metric names starting with 'isekai_' are the "
        "gateway's own: 'Isekai_mine'",
    ),
    "missing name": (
        "{type: metrics, counters: [{help: x}]}",
        "gw.yaml:2: policies.p.counters[0].name: missing required key 'name'",
    ),
    "unknown key": (
        "{type: metrics, counters: [{name: a, label: {x: route}}]}",
        "gw.yaml:2: policies.p.counters[0].label: unknown key 'label' (did you mean 'labels'?)",
    ),
    "bad label name": (
        "{type: metrics, counters: [{name: a, labels: {api-version: route}}]}",
        "gw.yaml:2: policies.p.counters[0].labels.api-version: not a valid label name: "
        "'api-version' (letters, digits and '_', not starting with a digit)",
    ),
    "reserved le": (
        "{type: metrics, histograms: [{name: a, labels: {le: route}}]}",
        "gw.yaml:2: policies.p.histograms[0].labels.le: 'le' is reserved for histogram buckets",
    ),
    "reserved dunder": (
        "{type: metrics, counters: [{name: a, labels: {__name__: route}}]}",
        "gw.yaml:2: policies.p.counters[0].labels.__name__: label names starting with '__' are "
        "reserved by Prometheus: '__name__'",
    ),
    "bad source": (
        "{type: metrics, counters: [{name: a, labels: {tier: 'query:tier'}}]}",
        "gw.yaml:2: policies.p.counters[0].labels.tier: not a label source: 'query:tier' (one of "
        "header:NAME, param:NAME, ctx:KEY, route, method, status, status_class or listener)",
    ),
    "empty header": (
        "{type: metrics, counters: [{name: a, labels: {tier: 'header:'}}]}",
        "gw.yaml:2: policies.p.counters[0].labels.tier: not a label source: 'header:'",
    ),
    "source not a string": (
        "{type: metrics, counters: [{name: a, labels: {tier: [route]}}]}",
        "gw.yaml:2: policies.p.counters[0].labels.tier: expected a label source like "
        "header:x-tier, got a list",
    ),
    "labels not a mapping": (
        "{type: metrics, counters: [{name: a, labels: [route]}]}",
        "gw.yaml:2: policies.p.counters[0].labels: expected a mapping of label names to sources "
        "like header:x-tier, got a list",
    ),
    "max_series zero": (
        "{type: metrics, counters: [{name: a, max_series: 0}]}",
        "gw.yaml:2: policies.p.counters[0].max_series: must be at least 1, got 0",
    ),
    "counter value": (
        "{type: metrics, counters: [{name: a, value: duration}]}",
        "gw.yaml:2: policies.p.counters[0].value: 'duration' is not one of: requests, "
        "request_bytes, response_bytes",
    ),
    "histogram value": (
        "{type: metrics, histograms: [{name: a, value: requests}]}",
        "gw.yaml:2: policies.p.histograms[0].value: 'requests' is not one of: duration, "
        "request_bytes, response_bytes",
    ),
    "buckets not increasing": (
        "{type: metrics, histograms: [{name: a, buckets: [0.1, 1, 1]}]}",
        "gw.yaml:2: policies.p.histograms[0].buckets[2]: bucket bounds must increase: 1 after 1",
    ),
    "buckets decreasing": (
        "{type: metrics, histograms: [{name: a, buckets: [5, 1]}]}",
        "gw.yaml:2: policies.p.histograms[0].buckets[1]: bucket bounds must increase: 1 after 5",
    ),
    "buckets infinite": (
        "{type: metrics, histograms: [{name: a, buckets: [1, .inf]}]}",
        "gw.yaml:2: policies.p.histograms[0].buckets[1]: expected a finite number, got .inf",
    ),
    "buckets empty": (
        "{type: metrics, histograms: [{name: a, buckets: []}]}",
        "gw.yaml:2: policies.p.histograms[0].buckets: needs at least one bucket bound",
    ),
    "bucket text": (
        "{type: metrics, histograms: [{name: a, buckets: [fast]}]}",
        "gw.yaml:2: policies.p.histograms[0].buckets[0]: expected a number, got a string",
    ),
    "histogram suffix": (
        "{type: metrics, histograms: [{name: latency_count}]}",
        "gw.yaml:2: policies.p.histograms[0].name: a histogram's name cannot end in '_count': "
        "the exposition adds _bucket, _sum and _count",
    ),
    "twice in one policy": (
        "{type: metrics, counters: [{name: hits}, {name: hits_total}]}",
        "gw.yaml:2: policies.p.counters[1].name: metric 'hits' is already declared at "
        "policies.p.counters[0]",
    ),
    "counter and histogram": (
        "{type: metrics, counters: [{name: t}], histograms: [{name: t}]}",
        "gw.yaml:2: policies.p.histograms[0].name: metric 't' is already declared at "
        "policies.p.counters[0]",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_metrics_policy_refusals(case):
    body, message = REFUSED[case]
    found = policy_error(body)
    assert found.startswith(message), found


BASE = """
upstreams:
  app: {targets: ["127.0.0.1:9000"]}
policies:
  a: {type: metrics, counters: [{name: hits}]}
routes:
  - {name: r, match: {path: /r}, upstream: app, policies: [a]}
"""


def test_metrics_policy_a_name_is_declared_once_across_policies():
    text = """
    upstreams:
      app: {targets: ["127.0.0.1:9000"]}
    policies:
      a: {type: metrics, counters: [{name: hits_total}]}
      b:
        type: metrics
        histograms:
          - {name: other}
          - {name: hits}
    routes:
      - {name: r, match: {path: /}, upstream: app}
    """
    assert error_of(text) == (
        "gw.yaml:9: policies.b.histograms[1].name: metric 'hits' is already declared at "
        "policies.a.counters[0]"
    )


def test_metrics_policy_inline_declarations_count_too():
    inline = "{type: metrics, counters: [{name: hits}]}"
    text = (
        BASE
        + f"  - {{name: s, match: {{path: /s}}, upstream: app,\n     policies: [a, {inline}]}}\n"
    )
    assert error_of(text) == (
        "gw.yaml:8: routes[1].policies[1].counters[0].name: metric 'hits' is already declared "
        "at policies.a.counters[0]"
    )
    # one named policy on many routes is one declaration
    assert len(load(text.replace(f", {inline}", "")).routes) == 2


def index_of(text):
    return ConfigIndex(load(text), ["r"])


def test_metrics_policy_admin_changes_keep_one_declaration_per_name():
    index = index_of(BASE)
    doc = {"type": "metrics", "histograms": [{"name": "latency"}, {"name": "hits"}]}
    with pytest.raises(ConfigError) as caught:
        index.prepare("policy", "b", doc)
    assert caught.value.path == "policies.b.histograms[1].name"
    assert caught.value.file == API_SOURCE
    assert str(caught.value).endswith("metric 'hits' is already declared at policies.a.counters[0]")
    # changing the declaring policy itself is no duplicate
    index.commit([index.prepare("policy", "a", {"type": "metrics", "counters": [{"name": "x"}]})])
    index.commit([index.prepare("policy", "b", doc)])
    route = {
        "name": "s",
        "match": {"path": "/s"},
        "upstream": "app",
        "policies": [{"type": "metrics", "counters": [{"name": "latency_total"}]}],
    }
    with pytest.raises(ConfigError) as caught:
        index.prepare("route", "s", route)
    assert caught.value.path == "routes[1].policies[0].counters[0].name"
    assert str(caught.value).endswith(
        "metric 'latency' is already declared at policies.b.histograms[0]"
    )


def test_metrics_policy_admin_change_reports_what_a_full_validation_reports():
    # a policy earlier in the mapping now declares a name a later one has: the later is reported
    text = BASE.replace("routes:", "  z: {type: metrics, counters: [{name: other}]}\nroutes:")
    index = index_of(text)
    with pytest.raises(ConfigError) as caught:
        index.prepare("policy", "a", {"type": "metrics", "counters": [{"name": "other"}]})
    assert caught.value.path == "policies.z.counters[0].name"
    with pytest.raises(ConfigError) as full:
        load(text.replace("[{name: hits}]", "[{name: other}]"))
    assert full.value.path == caught.value.path
    assert str(full.value).endswith(str(caught.value).split(": ", 2)[-1])


def test_metrics_policy_json_schema_agrees():
    schema = jsonschema.document_schema()
    validator = Draft202012Validator(schema)
    good = load(EXAMPLE) and {
        "policies": {
            "p": {
                "type": "metrics",
                "counters": [{"name": "hits", "labels": {"tier": "ctx:tier", "s": "status"}}],
                "histograms": [{"name": "t", "buckets": [0.1, 1]}],
            }
        }
    }
    assert list(validator.iter_errors(good)) == []
    for bad in (
        {"type": "metrics"},
        {"type": "metrics", "counters": [{"name": "isekai_x"}]},
        {"type": "metrics", "counters": [{"name": "a-b"}]},
        {"type": "metrics", "counters": [{"name": "a", "labels": {"le": "route"}}]},
        {"type": "metrics", "counters": [{"name": "a", "labels": {"__x": "route"}}]},
        {"type": "metrics", "counters": [{"name": "a", "labels": {"x": "query:y"}}]},
        {"type": "metrics", "counters": [{"name": "a", "max_series": 0}]},
    ):
        assert list(validator.iter_errors({"policies": {"p": bad}})), bad
