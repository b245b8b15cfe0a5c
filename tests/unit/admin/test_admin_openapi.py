"""The OpenAPI document, Swagger UI from local files, and a schemathesis run against a live app."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
from admin_helpers import admin, run
from live_admin import LiveAdmin
from openapi_spec_validator import OpenAPIV30SpecValidator, OpenAPIV31SpecValidator, validate

from isekai.admin.openapi import OPERATIONS, document, swagger_ui_dir, to_openapi_30
from isekai.admin.schemas import COMPONENTS, first_error
from tests.support import services


def test_openapi_document_is_valid_openapi_3_1():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_openapi_30_rendering_for_swagger_ui_is_valid_openapi_3_0():
    doc = to_openapi_30(document())
    assert doc["openapi"] == "3.0.3"
    validate(doc, cls=OpenAPIV30SpecValidator)
    assert '"null"' not in str(doc["components"]["schemas"]).replace("'", '"')


def test_openapi_covers_every_endpoint_with_its_request_schema():
    doc = document()
    for op in OPERATIONS:
        entry = doc["paths"][op.path][op.method.lower()]
        if op.body is not None:
            schema = entry["requestBody"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{op.body}"}
            assert doc["components"]["schemas"][op.body] == COMPONENTS[op.body]
        assert ("security" in entry) == (op.permission is None)


def test_openapi_served_document_is_the_generated_one(tmp_path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.get("/openapi.json")
            assert reply.status == 200
            assert reply.body == document()
            reply = await api.get("/docs/openapi-3.0.json")
            assert reply.body["openapi"] == "3.0.3"

    run(scenario())


def test_docs_serves_swagger_ui_from_local_files_only(tmp_path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            page = await api.get("/docs")
            assert page.status == 200
            assert page.headers["Content-Type"].startswith("text/html")
            html = page.raw.decode()
            refs = re.findall(r'(?:src|href)="([^"]+)"', html)
            assert refs and all(ref.startswith("/docs/") for ref in refs), refs
            assert "://" not in html
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
            for ref in refs:
                asset = await api.get(ref)
                assert asset.status == 200, ref
                assert len(asset.raw) > 100
            init = (await api.get("/docs/init.js")).raw.decode()
            assert "/docs/openapi-3.0.json" in init and "://" not in init
            assert (await api.get("/docs/static/nope.js")).status == 404

    run(scenario())
    assert (swagger_ui_dir() / "swagger-ui-bundle.js").is_file()


@pytest.mark.parametrize(
    "schema, document_, path",
    [
        ("Route", {"name": "x", "match": {"path": "/x"}}, "route"),
        ("Route", {"name": "x", "match": {}, "upstream": "u"}, "route.match.path"),
        ("Route", {"name": "x", "match": {"path": "/x"}, "upstream": "u", "zz": 1}, "route.zz"),
        ("Upstream", {"name": "x", "targets": []}, "upstream.targets"),
    ],
)
def test_schemas_first_error_points_at_the_field(schema, document_, path):
    found = first_error(schema, document_, schema.lower())
    assert found is not None and found[0] == path


EVERY_KEY = """
policies:
  tag:
    type: headers
    deadline: 2s
    request:
      {add: {X-A: 1}, set: {X-B: "${client_ip} ${param.id}"}, remove: [X-C], rename: {X-D: X-E}}
    response: {set: {X-Served-By: isekai}, remove: [Server], add: null}
  web_cors:
    type: cors
    origins: ["https://App.example.com:8443", "*.example.org", "https://*.example.net", "*"]
    methods: [get, PURGE]
    headers: [Authorization]
    expose_headers: [X-Total]
    credentials: false
    max_age: 0
  office: {type: ip_filter, allow: [10.0.0.1, "2001:db8::/32"], deny: null}
  chaos:
    type: fault
    abort: {status: 200, percent: 0.5}
    delay: {duration: 1.5, percent: 100}
    when_header: X-Chaos
listeners: [{name: public, bind: ":0", policies: [tag, {type: ip_filter, deny: ["::1"]}]}]
upstreams:
  users:
    targets: ["10.0.0.5:9000", "[::1]:9000", "users.internal:80"]
    scheme: HTTP
    connect_timeout: 2s
    read_timeout: 1m30s
    max_connections: 256
    max_keepalive_connections: 0
    keepalive_expiry: 0.5
  nulls: {targets: ["a:1"], scheme: null, read_timeout: 7d}
routes:
  - name: user.v2
    match: {path: "/api/users/{id}", host: "*.Example.com", methods: [get, PURGE]}
    upstream: users
    rewrite: "/users/{id}"
    timeout: 250ms
    websocket: true
    preserve_host: true
    policies: [web_cors, {type: fault, abort: {status: 503}}, chaos]
    limits: {max_body_size: 1MiB, body_idle_timeout: 10, websocket_idle_timeout: 5m}
  - name: static
    match: {path: /assets/*}
    upstream: users
    strip_prefix: true
  - name: prefix
    match: {path: /v1/x/*}
    upstream: users
    strip_prefix: /v1
    limits: {max_body_size: 512}
  - name: welcome
    match: {path: /, methods: null}
    respond:
      status: 201
      headers: {Cache-Control: no-store, X-Number: 5}
      json: {success: true, list: [1, 2.5, null]}
  - name: text
    match: {path: /ping}
    respond: {body: pong, status: null}
  - name: empty
    match: {path: /empty}
    respond: {}
"""


def test_schemas_accept_what_the_yaml_loader_accepts():
    from isekai.config.loader import file_documents, file_policies, load_config_text

    load_config_text(EVERY_KEY)
    routes, upstreams = file_documents(EVERY_KEY)
    for route in routes:
        assert first_error("Route", route, "route") is None, route
    for name, upstream in upstreams.items():
        assert first_error("Upstream", {"name": name, **upstream}, "upstream") is None, name
    for name, policy in file_policies(EVERY_KEY).items():
        assert first_error("Policy", {"name": name, **policy}, "policy") is None, name
        assert first_error("PolicyReplace", policy, "policy") is None, name


def test_schemas_policies_are_a_union_on_type_and_follow_registered_families():
    from dataclasses import dataclass

    from isekai.config import policies
    from isekai.config.meta import setting

    assert first_error("Policy", {"name": "p", "type": "nope"}, "policy") is not None
    assert first_error("Policy", {"type": "cors", "origins": ["*"]}, "policy") is not None
    assert first_error("PolicyReplace", {"type": "cors", "origins": ["*"]}, "policy") is None
    assert first_error("PolicyReplace", {"type": "cors", "origin": ["*"]}, "policy") is not None

    @dataclass(frozen=True, slots=True)
    class TraceConfig:
        """Trace some requests."""

        sample: float = setting("number", "Share traced.", minimum=0, maximum=1)

    family = type("Trace", (), {"type": "trace", "config": TraceConfig, "policy": print})()
    policies.register_family(family)
    try:
        doc = document()
        assert "TraceConfig" in doc["components"]["schemas"]
        validate(doc, cls=OpenAPIV31SpecValidator)
        assert first_error("PolicyReplace", {"type": "trace", "sample": 0.5}, "policy") is None
        assert first_error("PolicyReplace", {"type": "trace", "sample": 2}, "policy") is not None
    finally:
        policies.unregister_family("trace")
    assert "TraceConfig" not in document()["components"]["schemas"]
    assert first_error("PolicyReplace", {"type": "trace", "sample": 0.5}, "policy") is not None


SCHEMATHESIS_CONFIG = """
# 422: the config loader judges what JSON Schema cannot say (the upstream exists, two routes
# tie, a rewrite names a parameter of the path, the URL's name is the body's name);
# 412: If-Match holds a well-formed tag of another version. Both depend on state, not shape.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "412", "422", "429", "5xx"]

[phases.stateful]
max-steps = 40

# A NUL (U+0000) in any JSON string is answered 400 before validation. The published schemas say
# so for every string they describe, but a merge patch is any object (its keys and nested values
# are free), which JSON Schema cannot restrict short of a recursive definition: no NUL generated.
[generation]
allow-x00 = false

"""


@pytest.mark.timeout(600)
def test_schemathesis_finds_no_failures(tmp_path):
    """Every check of schemathesis, all phases, authenticated as an admin, bounded in size."""
    # this interpreter's own scripts (the venv's bin), whether or not it is on PATH
    executable = Path(sysconfig.get_path("scripts")) / "schemathesis"
    if not executable.is_file():
        services.unavailable(f"schemathesis is not installed in {executable.parent} (.[dev])")
    config = tmp_path / "schemathesis.toml"
    config.write_text(textwrap.dedent(SCHEMATHESIS_CONFIG))
    with LiveAdmin(tmp_path) as live:
        command = [
            str(executable),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{live.url}/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {live.token}",
            "--max-examples",
            "15",
            "--seed",
            "20261126",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            # logging out, and changing the caller's own password, end the token every other
            # call here uses (revocation is tested in test_admin_security.py)
            "--exclude-operation-id",
            "logout",
            "--exclude-operation-id",
            "updateUser",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=420, cwd=tmp_path)
    output = result.stdout + result.stderr
    summary = "\n".join(output.splitlines()[-40:])
    sys.stdout.write(summary + "\n")
    assert result.returncode == 0, output[-20000:]
    found = re.search(r"(\d+) generated, (\d+) passed", output)
    assert found is not None, summary
    assert int(found.group(1)) >= 500 and found.group(1) == found.group(2), summary
    assert live.applied > 0  # some generated changes got through validation and were applied
