"""The built-in policy families through a real gateway in front of a real upstream: every
accept and reject path of headers, cors, ip_filter and fault, and what reached the upstream."""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
import time

import pytest

from tests.support.client import request

ORIGIN = "https://app.example.com"


def big_allow(with_local: bool) -> list[str]:
    """10,000 networks (IPv4 /24s and /32s, some IPv6 /64s), 127.0.0.1 among them or not."""
    rng = random.Random(10_000)
    nets: set[str] = set()
    while len(nets) < 9_999:
        if rng.random() < 0.9:
            first = rng.choice([n for n in range(1, 224) if n != 127])
            prefix = rng.choice((24, 32))
            value = (first << 24) | rng.getrandbits(24)
            nets.add(str(ipaddress.IPv4Network((value, prefix), strict=False)))
        else:
            nets.add(str(ipaddress.IPv6Network((rng.getrandbits(128), 64), strict=False)))
    nets.add("127.0.0.1/32" if with_local else "127.0.1.0/24")
    return sorted(nets)


# name -> (type, options as the YAML has them); durations in seconds
POLICIES: dict[str, tuple[str, dict]] = {
    "tag": (
        "headers",
        {
            "request": {
                "remove": ["X-Drop"],
                "rename": {"X-Old": "X-New"},
                "set": {
                    "X-Gateway": "isekai",
                    "X-Client": "${client_ip}",
                    "X-Rid": "${request_id}",
                    "X-Route": "${route}",
                    "X-User": "u=${param.id}",
                    "X-Replaced": "new",
                },
                "add": {"X-Added": "one", "X-Replaced": "added"},
            },
            "response": {
                "remove": ["X-Upstream-Only"],
                "set": {"X-Served-By": "isekai ${route}", "Cache-Control": "no-store"},
                "add": {"X-Rid-Back": "${request_id}"},
            },
        },
    ),
    "web_cors": (
        "cors",
        {
            "origins": [ORIGIN, "*.example.org"],
            "methods": ["GET", "POST"],
            "headers": ["X-Token", "Content-Type"],
            "expose_headers": ["X-Total"],
            "credentials": True,
            "max_age": 600.0,
        },
    ),
    "any_cors": ("cors", {"origins": ["*"]}),
    "deny_local": ("ip_filter", {"deny": ["10.0.0.0/8", "127.0.0.0/8"]}),
    "allow_big_out": ("ip_filter", {"allow": big_allow(False)}),
    "allow_big_in": ("ip_filter", {"allow": big_allow(True)}),
    "chaos": ("fault", {"abort": {"status": 503, "percent": 100}, "when_header": "X-Chaos"}),
    "slow": ("fault", {"delay": {"duration": 0.3, "percent": 100}}),
}

# (name, path, methods, policies)
ROUTES = [
    ("users", "/users/{id}", ["GET"], ["tag"]),
    ("cors", "/cors/*", ["GET"], ["web_cors"]),
    ("cors_all", "/cors-all/*", None, ["web_cors"]),
    ("open", "/open/*", ["GET"], ["any_cors"]),
    ("denied", "/denied/*", None, ["deny_local"]),
    ("big_out", "/big-out/*", None, ["allow_big_out"]),
    ("big_in", "/big-in/*", None, ["allow_big_in"]),
    ("chaos", "/chaos/*", None, ["chaos"]),
    ("slow", "/slow-policy/*", None, ["slow"]),
]
SECONDS = ("max_age", "duration")


def _yaml_options(options: dict) -> dict:
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            value = _yaml_options(value)
        elif key in SECONDS:
            value = f"{round(value * 1000)}ms"
        out[key] = value
    return out


def yaml_config(port: int) -> str:
    """The gateway file: JSON is YAML, so every value is written as JSON."""
    lines = [
        'listeners: [{name: public, bind: "127.0.0.1:0"}]',
        f'upstreams: {{app: {{targets: ["127.0.0.1:{port}"], read_timeout: 5s}}}}',
        "policies:",
    ]
    for name, (kind, options) in POLICIES.items():
        lines.append(f"  {name}: {json.dumps({'type': kind, **_yaml_options(options)})}")
    lines.append("routes:")
    for name, path, methods, policies in ROUTES:
        match = {"path": path} if methods is None else {"path": path, "methods": methods}
        route = {"name": name, "match": match, "upstream": "app", "policies": policies}
        lines.append(f"  - {json.dumps(route)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.support.gateway import start_from_yaml
    from tests.support.upstream import Upstream

    with Upstream() as up:
        gw = start_from_yaml(tmp_path_factory.mktemp("families"), yaml_config(up.port))
        try:
            yield gw, up
        finally:
            gw.stop()


def call(setup, method: str, path: str, headers: dict | None = None):
    """(status, headers lower-case -> [values], body, the upstream's record or None)."""
    gw, up = setup
    before = len(up.requests)
    c = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)
    try:
        c.request(method, path, headers=headers or {})
        resp = c.getresponse()
        body = resp.read()
        fields: dict[str, list[str]] = {}
        for name, value in resp.getheaders():
            fields.setdefault(name.lower(), []).append(value)
    finally:
        c.close()
    seen = up.requests[before:]
    assert len(seen) <= 1
    return resp.status, fields, body, (seen[0] if seen else None)


def upstream_fields(record) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# -- headers --------------------------------------------------------------------------------------


def test_policy_families_headers_request_edits(setup):
    status, fields, _, record = call(
        setup,
        "GET",
        "/users/42",
        {"X-Drop": "gone", "X-Old": "renamed", "X-Replaced": "client", "Keep": "k"},
    )
    assert status == 200 and record is not None
    seen = upstream_fields(record)
    assert "x-drop" not in seen and "x-old" not in seen
    assert seen["x-new"] == ["renamed"]
    assert seen["keep"] == ["k"]
    assert seen["x-gateway"] == ["isekai"]
    assert seen["x-added"] == ["one"]
    assert sorted(seen["x-replaced"]) == ["added", "new"]  # set replaced the client's, add added


def test_policy_families_headers_placeholders(setup):
    status, fields, _, record = call(setup, "GET", "/users/7")
    seen = upstream_fields(record)
    assert status == 200
    assert seen["x-client"] == ["127.0.0.1"]
    assert seen["x-rid"] == seen["x-request-id"] == fields["x-request-id"]
    assert seen["x-route"] == ["users"]
    assert seen["x-user"] == ["u=7"]


def test_policy_families_headers_param_cannot_inject_fields(setup):
    status, _, _, record = call(setup, "GET", "/users/a%0d%0aX-Evil:%201%00%C3%A9")
    assert status == 200
    seen = upstream_fields(record)
    assert seen["x-user"] == ["u=a%0D%0AX-Evil:%201%00%C3%A9"]
    assert "x-evil" not in seen


def test_policy_families_headers_response_edits(setup):
    status, fields, _, _ = call(setup, "GET", "/users/1")
    assert status == 200
    assert fields["x-served-by"] == ["isekai users"]
    assert fields["cache-control"] == ["no-store"]
    assert fields["x-rid-back"] == fields["x-request-id"]


# -- cors -----------------------------------------------------------------------------------------


def preflight_headers(origin=ORIGIN, method="GET", headers=None):
    out = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        out["Access-Control-Request-Headers"] = headers
    return out


def test_policy_families_cors_preflight_on_get_only_route(setup):
    status, fields, body, record = call(
        setup, "OPTIONS", "/cors/items", preflight_headers(headers="X-Token, content-type")
    )
    assert status == 204 and body == b""
    assert record is None  # answered by the policy
    assert fields["access-control-allow-origin"] == [ORIGIN]
    assert fields["access-control-allow-methods"] == ["GET, POST"]
    assert fields["access-control-allow-headers"] == ["X-Token, Content-Type"]
    assert fields["access-control-allow-credentials"] == ["true"]
    assert fields["access-control-max-age"] == ["600"]
    assert fields["vary"] == ["Origin"]
    assert fields["x-request-id"]


def test_policy_families_cors_preflight_subdomain_pattern(setup):
    status, fields, _, record = call(
        setup, "OPTIONS", "/cors/x", preflight_headers(origin="http://a.b.example.org")
    )
    assert status == 204 and record is None
    assert fields["access-control-allow-origin"] == ["http://a.b.example.org"]


@pytest.mark.parametrize(
    ("path", "headers", "error"),
    [
        ("/cors/i", preflight_headers(origin="https://evil.example.com"), "origin not allowed"),
        ("/cors/i", preflight_headers(origin="https://example.org"), "origin not allowed"),
        # a route taking every method: the preflight reaches the policy, which refuses DELETE
        ("/cors-all/i", preflight_headers(method="DELETE"), "method not allowed"),
        ("/cors/i", preflight_headers(headers="X-Token, X-Secret"), "header not allowed"),
    ],
)
def test_policy_families_cors_preflight_refused(setup, path, headers, error):
    status, fields, body, record = call(setup, "OPTIONS", path, headers)
    assert status == 403
    assert record is None  # never reached the upstream
    answer = json.loads(body)
    assert answer["success"] is False and error in answer["error"]
    assert fields["content-type"] == ["application/json"]
    assert "access-control-allow-origin" not in fields


def test_policy_families_cors_actual_request_allowed_origin(setup):
    status, fields, _, record = call(setup, "GET", "/cors/items", {"Origin": ORIGIN})
    assert status == 200 and record is not None
    assert upstream_fields(record)["origin"] == [ORIGIN]
    assert fields["access-control-allow-origin"] == [ORIGIN]
    assert fields["access-control-allow-credentials"] == ["true"]
    assert fields["access-control-expose-headers"] == ["X-Total"]
    assert fields["vary"] == ["Origin"]


def test_policy_families_cors_actual_request_disallowed_origin(setup):
    status, fields, _, record = call(setup, "GET", "/cors/items", {"Origin": "https://evil.test"})
    assert status == 200 and record is not None  # passes: the browser enforces CORS
    assert not [name for name in fields if name.startswith("access-control-")]
    assert fields["vary"] == ["Origin"]


def test_policy_families_cors_request_without_origin_still_varies(setup):
    status, fields, _, record = call(setup, "GET", "/cors/items")
    assert status == 200 and record is not None
    assert "access-control-allow-origin" not in fields
    assert fields["vary"] == ["Origin"]


def test_policy_families_cors_star(setup):
    status, fields, _, _ = call(setup, "GET", "/open/x", {"Origin": "https://any.test"})
    assert status == 200
    assert fields["access-control-allow-origin"] == ["*"]
    assert "vary" not in fields
    status, fields, _, record = call(
        setup, "OPTIONS", "/open/x", preflight_headers(origin="https://any.test")
    )
    assert status == 204 and record is None
    assert fields["access-control-allow-origin"] == ["*"]


def test_policy_families_cors_preflight_for_unrouted_method_is_405(setup):
    # the route takes GET only: a preflight asking for PUT finds no route to answer it
    status, fields, _, record = call(setup, "OPTIONS", "/cors/x", preflight_headers(method="PUT"))
    assert status == 405 and record is None
    assert "access-control-allow-origin" not in fields


# -- ip_filter ------------------------------------------------------------------------------------


def test_policy_families_ip_filter_deny(setup):
    status, fields, body, record = call(setup, "GET", "/denied/x")
    assert status == 403 and record is None
    answer = json.loads(body)
    assert answer["success"] is False and answer["error"] == "client address not allowed"
    assert fields["content-type"] == ["application/json"]


def test_policy_families_ip_filter_10k_allow_list(setup):
    status, _, _, record = call(setup, "GET", "/big-out/x")
    assert status == 403 and record is None
    status, _, _, record = call(setup, "GET", "/big-in/x")
    assert status == 200 and record is not None


# -- fault ----------------------------------------------------------------------------------------


def test_policy_families_fault_abort_when_header_present(setup):
    status, fields, body, record = call(setup, "GET", "/chaos/x", {"X-Chaos": "1"})
    assert status == 503 and record is None
    assert json.loads(body)["error"] == "fault injected"
    assert fields["content-type"] == ["application/json"]


def test_policy_families_fault_passes_without_header(setup):
    status, _, _, record = call(setup, "GET", "/chaos/x")
    assert status == 200 and record is not None


def test_policy_families_fault_delay_measured(setup):
    started = time.monotonic()
    status, _, _, record = call(setup, "GET", "/slow-policy/x")
    elapsed = time.monotonic() - started
    assert status == 200 and record is not None
    assert elapsed >= 0.3
    # a delayed request does not hold up the others
    started = time.monotonic()
    status, _, _, _ = call(setup, "GET", "/users/1")
    assert status == 200 and time.monotonic() - started < 0.3


# -- state across reloads ------------------------------------------------------------------------


def test_policy_families_fault_counters_survive_reloads(upstream):
    from isekai.config.loader import load_config_text
    from tests.support.worker import ThreadedWorker, app_config

    def text(extra_route: str = "", percent: int = 100) -> str:
        return (
            app_config(upstream.port, routes=extra_route)
            + "\npolicies:\n"
            + f"  chaos: {{type: fault, abort: {{status: 418, percent: {percent}}},"
            + " when_header: X-Chaos}\n"
            + '  tag: {type: headers, request: {set: {X-Tag: "1"}}}\n'
        ).replace("strip_prefix: /app}", "strip_prefix: /app, policies: [chaos, tag]}")

    def fault(tw):
        return tw.call(lambda: tw.worker.policies.instances()["chaos"].target)

    with ThreadedWorker(text()) as tw:
        assert call((tw, upstream), "GET", "/app/x", {"X-Chaos": "1"})[0] == 418
        assert call((tw, upstream), "GET", "/app/x")[0] == 200
        first = fault(tw)
        assert (first.requests_seen, first.aborted) == (2, 1)
        # a reload that leaves the policy's config alone keeps the instance and its counts
        extra = '  - {name: other, match: {path: "/other"}, respond: {body: x}}'
        tw.call(tw.worker.swap, load_config_text(text(extra)))
        assert call((tw, upstream), "GET", "/app/x", {"X-Chaos": "1"})[0] == 418
        assert fault(tw) is first
        assert (first.requests_seen, first.aborted) == (3, 2)
        # a changed config makes a new instance, counting from zero
        tw.call(tw.worker.swap, load_config_text(text(extra, percent=0)))
        assert call((tw, upstream), "GET", "/app/x", {"X-Chaos": "1"})[0] == 200
        second = fault(tw)
        assert second is not first
        assert (second.requests_seen, second.aborted) == (1, 0)


def test_policy_families_cors_preflight_headers_over_several_lines(setup):
    # a list-valued field sent as two lines is one list: every name in it is checked
    gw, up = setup
    before = len(up.requests)
    raw = (
        b"OPTIONS /cors/items HTTP/1.1\r\nHost: t\r\nOrigin: " + ORIGIN.encode() + b"\r\n"
        b"Access-Control-Request-Method: GET\r\n"
        b"Access-Control-Request-Headers: x-token\r\n"
        b"Access-Control-Request-Headers: x-other\r\n\r\n"
    )
    status, _, body = request(gw.port, raw, method="OPTIONS")
    assert status == 403 and "header not allowed" in json.loads(body)["error"]
    assert len(up.requests) == before
