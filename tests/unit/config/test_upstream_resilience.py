"""The upstream resilience keys (balancer, hash_on, limits, health, outlier, breaker, retry) and
weighted targets: loaded with the contract's defaults, refused with file:line and a config path,
published in the JSON Schema the admin API validates with, and documented."""

import json
import re
import textwrap

import pytest
from jsonschema import Draft202012Validator

from isekai.config import defaults, jsonschema, reference, units
from isekai.config.jsonschema import classes
from isekai.config.loader import file_documents, load_config_text, read_document
from isekai.config.schema import Target, Upstream
from isekai.config.upstream import Breaker, HealthCheck, Outlier, Retry
from isekai.errors import ConfigError


def _upstream(body: str, env=None) -> Upstream:
    text = "upstreams:\n  users:\n" + textwrap.indent(textwrap.dedent(body), "    ")
    return load_config_text(text, "gw.yaml", env=env or {}).upstreams["users"]


def _error(body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _upstream(body)
    return str(caught.value)


ISSUE_SHAPE = """\
targets: ["10.0.0.5:9000", {address: "10.0.0.6:9000", weight: 3}]
balancer: consistent_hash
hash_on: header:X-User
health: {path: /healthz, interval: 5s, timeout: 1s, healthy_threshold: 2, unhealthy_threshold: 3}
outlier: {consecutive_failures: 5, base_ejection: 30s}
breaker: {failure_ratio: 0.5, window: 10s, min_requests: 20, open_for: 30s, half_open_requests: 3}
retry: {attempts: 2, on: [connect_failure, reset, 502, 503, 504], backoff: 25ms, budget: 0.2}
"""


# -- loading ------------------------------------------------------------------------------------


def test_upstream_resilience_keys_default_to_off():
    upstream = _upstream('targets: ["127.0.0.1:9000"]\n')
    assert upstream.targets == (Target("127.0.0.1", 9000, 1),)
    assert upstream.balancer == "round_robin"
    assert upstream.hash_on is None
    assert upstream.hash_algorithm == "ring"
    assert upstream.panic_threshold == 0
    assert (upstream.max_requests, upstream.max_pending, upstream.max_retries) == (None,) * 3
    assert (upstream.health, upstream.outlier, upstream.breaker, upstream.retry) == (None,) * 4


def test_upstream_resilience_issue_shape_loads_as_written():
    upstream = _upstream(ISSUE_SHAPE)
    assert upstream.targets == (Target("10.0.0.5", 9000), Target("10.0.0.6", 9000, weight=3))
    assert upstream.targets[1].address == "10.0.0.6:9000"
    assert (upstream.balancer, upstream.hash_on) == ("consistent_hash", "header:X-User")
    assert upstream.health == HealthCheck(path="/healthz")
    assert upstream.outlier == Outlier()
    assert upstream.breaker == Breaker()
    assert upstream.retry == Retry()
    assert upstream.retry.on == ("connect_failure", "reset", 502, 503, 504)
    assert all(type(c) is int for c in upstream.retry.on[2:])


def test_upstream_resilience_empty_mappings_take_the_contract_defaults():
    upstream = _upstream(
        'targets: ["a:1"]\nhealth: {path: /h}\noutlier: {}\nbreaker: {}\nretry: {}\n'
    )
    health, outlier, breaker, retry = (
        upstream.health,
        upstream.outlier,
        upstream.breaker,
        upstream.retry,
    )
    assert (health.interval, health.timeout) == (5.0, 1.0)
    assert (health.healthy_threshold, health.unhealthy_threshold) == (2, 3)
    assert (health.expected_status, health.host) == ((), None)
    assert (outlier.consecutive_failures, outlier.base_ejection) == (5, 30.0)
    assert (outlier.max_ejection, outlier.max_ejection_percent) == (300.0, 100)
    assert (breaker.failure_ratio, breaker.window, breaker.min_requests) == (0.5, 10.0, 20)
    assert (breaker.open_for, breaker.half_open_requests) == (30.0, 3)
    assert breaker.failure_statuses == (500, 502, 503, 504)
    assert (retry.attempts, retry.backoff, retry.max_backoff) == (2, 0.025, 0.25)
    assert (retry.budget, retry.min_concurrency, retry.max_body) == (0.2, 3, 64 * 1024)
    assert (retry.per_try_timeout, retry.overall_timeout) == (None, None)
    assert retry.retry_non_idempotent is False


def test_upstream_resilience_every_key_written_out():
    upstream = _upstream(
        """\
        targets: ["[::1]:9000", {address: "Users.Internal:80", weight: 1000}]
        balancer: Least_Conn
        panic_threshold: 50
        max_requests: 1000
        max_pending: 100
        max_retries: 10
        health: {path: "/status?full=1", interval: 10s, timeout: 2s, healthy_threshold: 1,
                 unhealthy_threshold: 1, expected_status: [200, 204], host: "users.internal:8080"}
        outlier: {consecutive_failures: 1, base_ejection: 1s, max_ejection: 5m,
                  max_ejection_percent: 1}
        breaker: {failure_ratio: 1, window: 1m, min_requests: 1, open_for: 5s,
                  half_open_requests: 1, failure_statuses: [599]}
        retry: {attempts: 10, on: [timeout], backoff: 0, max_backoff: 0, budget: 0,
                min_concurrency: 0, per_try_timeout: 500ms, overall_timeout: 3s,
                retry_non_idempotent: true, max_body: 0}
        """
    )
    assert upstream.targets == (Target("::1", 9000), Target("users.internal", 80, 1000))
    assert upstream.targets[0].address == "[::1]:9000"
    assert upstream.balancer == "least_conn"
    assert (upstream.panic_threshold, upstream.max_requests) == (50.0, 1000)
    assert (upstream.max_pending, upstream.max_retries) == (100, 10)
    assert upstream.health == HealthCheck(
        "/status?full=1", 10.0, 2.0, 1, 1, (200, 204), "users.internal:8080"
    )
    assert upstream.outlier == Outlier(1, 1.0, 300.0, 1)
    assert upstream.breaker == Breaker(1.0, 60.0, 1, 5.0, 1, (599,))
    assert upstream.retry == Retry(10, ("timeout",), 0.0, 0.0, 0.0, 0, 0.5, 3.0, True, 0)


@pytest.mark.parametrize("hash_on", ["client_ip", "path", "header:X-User", "cookie:session_id"])
def test_upstream_resilience_hash_on_grammar_is_kept_as_written(hash_on):
    body = f'targets: ["a:1"]\nbalancer: consistent_hash\nhash_on: "{hash_on}"\n'
    assert _upstream(body).hash_on == hash_on


def test_upstream_resilience_consistent_hash_keys_on_client_ip_by_default():
    upstream = _upstream('targets: ["a:1"]\nbalancer: consistent_hash\nhash_algorithm: MAGLEV\n')
    assert (upstream.hash_on, upstream.hash_algorithm) == ("client_ip", "maglev")


def test_upstream_resilience_env_references_are_substituted():
    upstream = _upstream(
        'targets: [{address: "${HOST}:9000", weight: "${W}"}]\nretry: {on: [reset, "${S}"]}\n',
        env={"HOST": "10.0.0.9", "W": "7", "S": "503"},
    )
    assert upstream.targets == (Target("10.0.0.9", 9000, 7),)
    assert upstream.retry.on == ("reset", 503)


# -- equality: the cluster registry keeps a cluster while its Upstream compares equal ----------


def test_upstream_resilience_equal_text_gives_equal_and_hashable_upstreams():
    first, second = _upstream(ISSUE_SHAPE), _upstream(ISSUE_SHAPE)
    assert first == second and hash(first) == hash(second)
    assert first.retry is not second.retry


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("weight: 3", "weight: 4"),
        ("half_open_requests: 3", "half_open_requests: 4"),
        ("502, 503, 504]", "502, 503]"),
        ("header:X-User", "header:X-Other"),
        ("path: /healthz", "path: /ready"),
    ],
)
def test_upstream_resilience_any_change_makes_the_upstream_differ(old, new):
    assert ISSUE_SHAPE.count(old) == 1
    assert _upstream(ISSUE_SHAPE) != _upstream(ISSUE_SHAPE.replace(old, new))


# -- mistakes: file:line: config path: message --------------------------------------------------

MISTAKES = {
    "weight zero": (
        'targets: ["a:1", {address: "b:1", weight: 0}]\n',
        "gw.yaml:3: upstreams.users.targets[1].weight: must be from 1 to 1000, got 0",
    ),
    "weight too large": (
        'targets:\n  - "a:1"\n  - address: "b:1"\n    weight: 1001\n',
        "gw.yaml:6: upstreams.users.targets[1].weight: must be from 1 to 1000, got 1001",
    ),
    "duplicate address across forms": (
        'targets:\n  - "10.0.0.5:9000"\n  - {address: "10.0.0.5:9000", weight: 2}\n',
        "gw.yaml:5: upstreams.users.targets[1]: duplicate target '10.0.0.5:9000'",
    ),
    "duplicate address as strings": (
        'targets: ["a:1", "A:1"]\n',
        "gw.yaml:3: upstreams.users.targets[1]: duplicate target 'A:1'",
    ),
    "target missing address": (
        "targets: [{weight: 2}]\n",
        "gw.yaml:3: upstreams.users.targets[0].address: missing required key 'address'",
    ),
    "target unknown key": (
        'targets: [{address: "a:1", wieght: 2}]\n',
        "gw.yaml:3: upstreams.users.targets[0].wieght: unknown key 'wieght' (did you mean "
        "'weight'?); allowed keys: address, weight",
    ),
    "target bad port": (
        'targets: [{address: "a:99999"}]\n',
        "gw.yaml:3: upstreams.users.targets[0].address: bad address 'a:99999': the port must be a "
        "number from 1 to 65535",
    ),
    "target not a string": (
        "targets: [8080]\n",
        "gw.yaml:3: upstreams.users.targets[0]: expected a target: 'host:port' or a mapping with "
        "address and weight, got an integer (8080)",
    ),
    "unknown balancer": (
        'targets: ["a:1"]\nbalancer: fastest\n',
        "gw.yaml:4: upstreams.users.balancer: unknown balancer 'fastest' (balancers: round_robin, "
        "least_conn, p2c, consistent_hash, ewma, random)",
    ),
    "hash_on without consistent_hash": (
        'targets: ["a:1"]\nbalancer: least_conn\nhash_on: client_ip\n',
        "gw.yaml:5: upstreams.users.hash_on: 'hash_on' only applies to balancer: consistent_hash "
        "(this one is least_conn)",
    ),
    "hash_algorithm with the default balancer": (
        'targets: ["a:1"]\nhash_algorithm: maglev\n',
        "gw.yaml:4: upstreams.users.hash_algorithm: 'hash_algorithm' only applies to balancer: "
        "consistent_hash (this one is round_robin)",
    ),
    "hash_on unknown source": (
        'targets: ["a:1"]\nbalancer: consistent_hash\nhash_on: query:id\n',
        "gw.yaml:5: upstreams.users.hash_on: expected client_ip, path, header:NAME or "
        "cookie:NAME, got 'query:id'",
    ),
    "hash_on bad header name": (
        'targets: ["a:1"]\nbalancer: consistent_hash\nhash_on: "header:X User"\n',
        "gw.yaml:5: upstreams.users.hash_on: bad header name 'X User' in 'header:X User'",
    ),
    "hash_on empty cookie name": (
        'targets: ["a:1"]\nbalancer: consistent_hash\nhash_on: "cookie:"\n',
        "gw.yaml:5: upstreams.users.hash_on: bad cookie name '' in 'cookie:'",
    ),
    "hash_algorithm unknown": (
        'targets: ["a:1"]\nbalancer: consistent_hash\nhash_algorithm: rendezvous\n',
        "gw.yaml:5: upstreams.users.hash_algorithm: unknown hash_algorithm 'rendezvous' "
        "(supported: ring, maglev)",
    ),
    "panic_threshold over 100": (
        'targets: ["a:1"]\npanic_threshold: 101\n',
        "gw.yaml:4: upstreams.users.panic_threshold: must be from 0 to 100, got 101",
    ),
    "max_requests zero": (
        'targets: ["a:1"]\nmax_requests: 0\n',
        "gw.yaml:4: upstreams.users.max_requests: must be at least 1, got 0",
    ),
    "max_pending not a number": (
        'targets: ["a:1"]\nmax_pending: lots\n',
        "gw.yaml:4: upstreams.users.max_pending: expected an integer, got a string ('lots')",
    ),
    "health without path": (
        'targets: ["a:1"]\nhealth: {interval: 5s}\n',
        "gw.yaml:4: upstreams.users.health.path: missing required key 'path'",
    ),
    "health path not origin-form": (
        'targets: ["a:1"]\nhealth: {path: healthz}\n',
        "gw.yaml:4: upstreams.users.health.path: the path must start with '/', got 'healthz'",
    ),
    "health path with a space": (
        'targets: ["a:1"]\nhealth: {path: "/health z"}\n',
        "gw.yaml:4: upstreams.users.health.path: path '/health z' may only hold visible ASCII; "
        "' ' is not allowed (no spaces, control characters or '#'; percent-encode others)",
    ),
    "health timeout not shorter than interval": (
        'targets: ["a:1"]\nhealth:\n  path: /h\n  interval: 2s\n  timeout: 2s\n',
        "gw.yaml:7: upstreams.users.health.timeout: must be shorter than interval (2s)",
    ),
    "health timeout over the default interval": (
        'targets: ["a:1"]\nhealth: {path: /h, timeout: 10s}\n',
        "gw.yaml:4: upstreams.users.health.timeout: must be shorter than the default interval (5s)",
    ),
    "health interval under the default timeout": (
        'targets: ["a:1"]\nhealth: {path: /h, interval: 500ms}\n',
        "gw.yaml:4: upstreams.users.health.interval: must be longer than the default timeout (1s)",
    ),
    "health expected_status out of range": (
        'targets: ["a:1"]\nhealth: {path: /h, expected_status: [200, 600]}\n',
        "gw.yaml:4: upstreams.users.health.expected_status[1]: must be from 100 to 599, got 600",
    ),
    "health expected_status twice": (
        'targets: ["a:1"]\nhealth:\n  path: /h\n  expected_status:\n    - 200\n    - 200\n',
        "gw.yaml:8: upstreams.users.health.expected_status[1]: status 200 is listed twice",
    ),
    "health host with a bad port": (
        'targets: ["a:1"]\nhealth: {path: /h, host: "users:0"}\n',
        "gw.yaml:4: upstreams.users.health.host: bad host 'users:0': the port must be a number "
        "from 1 to 65535",
    ),
    "health host not a host": (
        'targets: ["a:1"]\nhealth: {path: /h, host: "a b"}\n',
        "gw.yaml:4: upstreams.users.health.host: bad host 'a b': not a host name or IP address",
    ),
    "outlier consecutive_failures zero": (
        'targets: ["a:1"]\noutlier: {consecutive_failures: 0}\n',
        "gw.yaml:4: upstreams.users.outlier.consecutive_failures: must be at least 1, got 0",
    ),
    "outlier max_ejection_percent zero": (
        'targets: ["a:1"]\noutlier: {max_ejection_percent: 0}\n',
        "gw.yaml:4: upstreams.users.outlier.max_ejection_percent: must be from 1 to 100, got 0",
    ),
    "outlier base_ejection zero": (
        'targets: ["a:1"]\noutlier: {base_ejection: 0s}\n',
        "gw.yaml:4: upstreams.users.outlier.base_ejection: must be greater than 0",
    ),
    "breaker failure_ratio zero": (
        'targets: ["a:1"]\nbreaker: {failure_ratio: 0}\n',
        "gw.yaml:4: upstreams.users.breaker.failure_ratio: must be more than 0 (and at most 1), "
        "got 0",
    ),
    "breaker failure_ratio over one": (
        'targets: ["a:1"]\nbreaker: {failure_ratio: 1.5}\n',
        "gw.yaml:4: upstreams.users.breaker.failure_ratio: must be from 0 to 1, got 1.5",
    ),
    "breaker failure_statuses not 5xx": (
        'targets: ["a:1"]\nbreaker: {failure_statuses: [502, 404]}\n',
        "gw.yaml:4: upstreams.users.breaker.failure_statuses[1]: must be from 500 to 599, got 404",
    ),
    "breaker failure_statuses twice": (
        'targets: ["a:1"]\nbreaker: {failure_statuses: [502, 503, 502]}\n',
        "gw.yaml:4: upstreams.users.breaker.failure_statuses[2]: status 502 is listed twice",
    ),
    "retry on unknown word": (
        'targets: ["a:1"]\nretry:\n  on: [connect_failure, reset, refused]\n',
        "gw.yaml:5: upstreams.users.retry.on[2]: expected connect_failure, reset, timeout or a "
        "5xx status, got 'refused'",
    ),
    "retry on a 4xx": (
        'targets: ["a:1"]\nretry: {on: [reset, 404]}\n',
        "gw.yaml:4: upstreams.users.retry.on[1]: a retried status is a 5xx (500 to 599), got 404",
    ),
    "retry on a boolean": (
        'targets: ["a:1"]\nretry: {on: [reset, true]}\n',
        "gw.yaml:4: upstreams.users.retry.on[1]: expected connect_failure, reset, timeout or a "
        "5xx status, got a boolean (true)",
    ),
    "retry on twice": (
        'targets: ["a:1"]\nretry: {on: [reset, 503, reset]}\n',
        "gw.yaml:4: upstreams.users.retry.on[2]: 'reset' is listed twice",
    ),
    "retry on a status twice": (
        'targets: ["a:1"]\nretry: {on: [503, 503]}\n',
        "gw.yaml:4: upstreams.users.retry.on[1]: 503 is listed twice",
    ),
    "retry attempts zero": (
        'targets: ["a:1"]\nretry: {attempts: 0}\n',
        "gw.yaml:4: upstreams.users.retry.attempts: must be from 1 to 10, got 0",
    ),
    "retry attempts eleven": (
        'targets: ["a:1"]\nretry: {attempts: 11}\n',
        "gw.yaml:4: upstreams.users.retry.attempts: must be from 1 to 10, got 11",
    ),
    "retry budget over one": (
        'targets: ["a:1"]\nretry: {budget: 1.5}\n',
        "gw.yaml:4: upstreams.users.retry.budget: must be from 0 to 1, got 1.5",
    ),
    "retry per_try_timeout zero": (
        'targets: ["a:1"]\nretry: {per_try_timeout: 0}\n',
        "gw.yaml:4: upstreams.users.retry.per_try_timeout: must be greater than 0",
    ),
    "retry backoff negative": (
        'targets: ["a:1"]\nretry: {backoff: -1s}\n',
        "gw.yaml:4: upstreams.users.retry.backoff: bad duration '-1s': use a number with a unit "
        "(ms, s, m, h, d) like 250ms, 10s, 5m, 1h or 1m30s, or a plain number of seconds",
    ),
    "retry unknown key": (
        'targets: ["a:1"]\nretry: {attempt: 3}\n',
        "gw.yaml:4: upstreams.users.retry.attempt: unknown key 'attempt' (did you mean "
        "'attempts'?); allowed keys: attempts, on, backoff, max_backoff, budget, "
        "min_concurrency, per_try_timeout, overall_timeout, retry_non_idempotent, max_body",
    ),
    "retry not a mapping": (
        'targets: ["a:1"]\nretry: 3\n',
        "gw.yaml:4: upstreams.users.retry: expected a mapping, got an integer (3)",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_upstream_resilience_mistakes_have_file_line_and_path(case):
    body, expected = MISTAKES[case]
    assert _error(body) == expected


def test_upstream_resilience_api_documents_are_read_by_the_same_rules():
    doc = {"targets": ["a:1", {"address": "b:1", "weight": 0}]}
    with pytest.raises(ConfigError) as caught:
        read_document(Upstream, doc, "upstream", extra={"name": "x"})
    assert caught.value.path == "upstream.targets[1].weight"
    doc = {"targets": ["a:1"], "retry": {"on": ["reset", 404]}}
    with pytest.raises(ConfigError) as caught:
        read_document(Upstream, doc, "upstream", extra={"name": "x"})
    assert caught.value.path == "upstream.retry.on[1]"
    good = {"targets": [{"address": "b:1", "weight": 2}], "retry": {"on": ["reset", 503]}}
    upstream = read_document(Upstream, good, "upstream", extra={"name": "x"})
    assert upstream.targets == (Target("b", 1, 2),) and upstream.retry.on == ("reset", 503)


def test_upstream_resilience_file_documents_keep_the_mapping_form():
    text = (
        'upstreams:\n  users:\n    targets: ["a:1", {address: "${B}:2", weight: 3}]\n'
        "    retry: {on: [reset, 503]}\n"
    )
    _, upstreams = file_documents(text, "gw.yaml")
    assert upstreams["users"] == {
        "targets": ["a:1", {"address": "${B}:2", "weight": 3}],
        "retry": {"on": ["reset", 503]},
    }


# -- the JSON Schema agrees with the loader -----------------------------------------------------


def _validator():
    return Draft202012Validator(jsonschema.document_schema())


def _document(body: str) -> dict:
    return {"upstreams": {"users": json.loads(body)}}


ACCEPTED = [
    '{"targets": ["a:1", {"address": "b:1", "weight": 3}, {"address": "[::1]:2"}]}',
    '{"targets": ["a:1"], "balancer": "consistent_hash", "hash_on": "cookie:sid", '
    '"hash_algorithm": "maglev"}',
    '{"targets": ["a:1"], "balancer": "P2C"}',
    '{"targets": ["a:1"], "balancer": "${BALANCER}", "hash_on": "path"}',
    '{"targets": ["a:1"], "panic_threshold": 12.5, "max_requests": 1, "max_pending": 1, '
    '"max_retries": 1}',
    '{"targets": ["a:1"], "health": {"path": "/h?x=1", "host": "[::1]:8080", '
    '"expected_status": [200, 301]}}',
    '{"targets": ["a:1"], "outlier": {}, "breaker": {"failure_ratio": 1}, "retry": null}',
    '{"targets": ["a:1"], "retry": {"on": ["timeout", 599], "backoff": 0, "max_body": 0, '
    '"budget": 0, "min_concurrency": 0}}',
]

REFUSED = [
    '{"targets": [{"address": "a:1", "weight": 0}]}',
    '{"targets": [{"address": "a:1", "weight": 1001}]}',
    '{"targets": [{"address": "a:1", "port": 2}]}',
    '{"targets": [{"weight": 2}]}',
    '{"targets": ["a:1"], "balancer": "fastest"}',
    '{"targets": ["a:1"], "hash_on": "client_ip"}',
    '{"targets": ["a:1"], "balancer": "least_conn", "hash_algorithm": "ring"}',
    '{"targets": ["a:1"], "balancer": "consistent_hash", "hash_on": "header:a b"}',
    '{"targets": ["a:1"], "balancer": "consistent_hash", "hash_on": "query:x"}',
    '{"targets": ["a:1"], "panic_threshold": 101}',
    '{"targets": ["a:1"], "max_requests": 0}',
    '{"targets": ["a:1"], "health": {}}',
    '{"targets": ["a:1"], "health": {"path": "h"}}',
    '{"targets": ["a:1"], "health": {"path": "/a#b"}}',
    '{"targets": ["a:1"], "health": {"path": "/h", "expected_status": [99]}}',
    '{"targets": ["a:1"], "health": {"path": "/h", "expected_status": [200, 200]}}',
    '{"targets": ["a:1"], "health": {"path": "/h", "host": "a b"}}',
    '{"targets": ["a:1"], "outlier": {"max_ejection_percent": 101}}',
    '{"targets": ["a:1"], "breaker": {"failure_ratio": 0}}',
    '{"targets": ["a:1"], "breaker": {"failure_statuses": [404]}}',
    '{"targets": ["a:1"], "retry": {"on": ["refused"]}}',
    '{"targets": ["a:1"], "retry": {"on": [404]}}',
    '{"targets": ["a:1"], "retry": {"on": [true]}}',
    '{"targets": ["a:1"], "retry": {"on": ["reset", "reset"]}}',
    '{"targets": ["a:1"], "retry": {"attempts": 11}}',
    '{"targets": ["a:1"], "retry": {"budget": 2}}',
    '{"targets": ["a:1"], "retry": {"per_try_timeout": 0}}',
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_upstream_resilience_schema_and_loader_accept_the_same(body):
    document = _document(body)
    assert [e.message for e in _validator().iter_errors(document)] == []
    load_config_text(json.dumps(document), "doc.json", env={"BALANCER": "consistent_hash"})


@pytest.mark.parametrize("body", REFUSED)
def test_upstream_resilience_schema_and_loader_refuse_the_same(body):
    document = _document(body)
    assert not _validator().is_valid(document)
    with pytest.raises(ConfigError):
        load_config_text(json.dumps(document), "doc.json")


def test_upstream_resilience_schema_closes_the_nested_objects():
    upstream = jsonschema.document_schema()["$defs"]["Upstream"]["properties"]
    retry = upstream["retry"]["anyOf"][0]
    assert retry["additionalProperties"] is False
    assert set(retry["properties"]) == {
        "attempts",
        "on",
        "backoff",
        "max_backoff",
        "budget",
        "min_concurrency",
        "per_try_timeout",
        "overall_timeout",
        "retry_non_idempotent",
        "max_body",
    }
    target = upstream["targets"]["items"]["anyOf"][1]
    assert target["required"] == ["address"] and target["additionalProperties"] is False
    assert set(target["properties"]) == {"address", "weight"}


# -- the docs -----------------------------------------------------------------------------------


def test_upstream_resilience_reference_tables_show_each_key():
    found = classes()
    assert {"Target", "HealthCheck", "Outlier", "Breaker", "Retry"} <= set(found)
    upstream = reference.render_table(found["Upstream"])
    assert "| `max_requests` | integer ≥ 1 | no limit | Requests in flight" in upstream
    assert "| `targets` | list of `host:port` or [target](#target) |" in upstream
    retry = reference.render_table(found["Retry"])
    assert "| `attempts` | integer 1–10 | `2` |" in retry
    assert "| `on` | list of `connect_failure`, `reset`, `timeout` or a status 500–599 |" in retry
    assert "| `max_body` | size | `64KiB` |" in retry
    target = reference.render_table(found["Target"])
    assert target.splitlines()[2].startswith("| `address` | `host:port` | required |")
    assert "| `weight` | integer 1–1000 | `1` |" in target


def test_upstream_resilience_defaults_live_in_defaults_module():
    assert Retry().on == defaults.RETRY_ON
    assert Breaker().failure_statuses == defaults.BREAKER_FAILURE_STATUSES
    assert HealthCheck("/h").expected_status == defaults.HEALTH_EXPECTED_STATUS


GRAMMARS = [
    (
        units.check_hash_on,
        units.HASH_ON_PATTERN,
        ["client_ip", "path", "header:X-User", "cookie:sid", "header:a!#$%&'*+-.^_`|~"],
        ["Client_IP", "header:", "header:a b", "cookie:a;b", "query:x", "client_ip "],
    ),
    (
        units.check_request_target,
        units.REQUEST_TARGET_PATTERN,
        ["/", "/healthz", "/status?full=1&x=%20", "/a/b;c"],
        ["", "healthz", "/a b", "/a#b", "/\u00e9", "/a\tb", "*"],
    ),
    (
        units.check_host_port,
        units.HOST_PORT_PATTERN,
        ["users.internal", "Users.Internal:8080", "10.0.0.5", "[::1]", "[::1]:80", "a_b"],
        ["", "a b", "users:0", "users:65536", "[::1", "[zz]:80", "::1", "a:b:c"],
    ),
]


@pytest.mark.parametrize(("check", "pattern", "good", "bad"), GRAMMARS)
def test_upstream_resilience_patterns_accept_what_the_parsers_accept(check, pattern, good, bad):
    for text in good:
        assert check(text) == text
        assert re.search(pattern, text), text
    for text in bad:
        with pytest.raises(ValueError):
            check(text)


@pytest.mark.parametrize("zone", ["%x\r\nX-Injected: yes\r\nY", "%eth0", "%\u20ac"])
def test_upstream_ipv6_zone_ids_never_reach_the_wire(zone):
    """A zone ID (``%...``) is refused in a health check's Host and in a target: it could carry
    CR/LF into a request head, and means nothing to another host."""
    host = json.dumps(f"[fe80::1{zone}]")
    target = json.dumps(f"[fe80::1{zone}]:80")
    health = f'targets: ["127.0.0.1:80"]\nhealth: {{path: /h, host: {host}}}\n'
    assert "is not an IPv6 address" in _error(health)
    assert "is not an IPv6 address" in _error(f"targets: [{target}]\n")


@pytest.mark.parametrize(
    "address", ["169.254.169.254:80", "169.254.1.1:8080", "[fe80::1]:80", "[fd00:ec2::254]:80"]
)
def test_upstream_link_local_and_metadata_targets_need_allow_internal(address):
    message = _error(f'targets: ["127.0.0.1:80", "{address}"]\n')
    assert "upstreams.users.targets[1]" in message and "allow_internal" in message
    upstream = _upstream(f'targets: ["{address}"]\nallow_internal: true\n')
    assert upstream.allow_internal is True


@pytest.mark.parametrize("address", ["127.0.0.1:9080", "localhost:9080", "[::1]:9080"])
def test_upstream_target_may_not_be_the_admin_listener(address):
    message = _error(f'targets: ["{address}"]\n')  # the admin listener's default 127.0.0.1:9080
    assert "upstreams.users.targets[0]" in message and "is the admin listener" in message
    text = f'admin: {{enabled: false}}\nupstreams:\n  users: {{targets: ["{address}"]}}\n'
    assert load_config_text(text, "gw.yaml").upstreams["users"].targets[0].port == 9080


def test_upstream_admin_listener_target_refused_through_the_api_path():
    from isekai.config.changes import ConfigIndex
    from isekai.config.loader import validate_dynamic

    base = validate_dynamic('upstreams:\n  users: {targets: ["127.0.0.1:9001"]}\n', "gw.yaml")
    index = ConfigIndex(base, [])
    with pytest.raises(ConfigError) as caught:
        index.prepare("upstream", "sneaky", {"targets": ["127.0.0.1:9002", "localhost:9080"]})
    assert caught.value.path == "upstreams.sneaky.targets[1]"
    assert "is the admin listener (127.0.0.1:9080)" in str(caught.value)
