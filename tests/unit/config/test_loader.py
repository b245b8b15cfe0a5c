import dataclasses
import importlib.resources
import json
import os
import textwrap

import pytest

from isekai.config import defaults
from isekai.config.loader import load_config, load_config_text
from isekai.config.schema import (
    Config,
    Limits,
    Listener,
    Respond,
    Route,
    RouteMatch,
    Target,
    Upstream,
)
from isekai.errors import ConfigError, RouteConflictError


def _text(yaml_text):
    return textwrap.dedent(yaml_text).lstrip("\n")


def load(yaml_text, env=None):
    return load_config_text(_text(yaml_text), "gw.yaml", env=env or {})


def error_of(yaml_text, env=None, kind=ConfigError):
    with pytest.raises(kind) as info:
        load(yaml_text, env)
    return str(info.value)


# -- good configs -------------------------------------------------------------------------------


def test_loader_minimal_config_gets_default_listener_limits_and_settings():
    config = load(
        """
        routes:
          - name: ping
            match: {path: /ping}
            respond: {body: pong}
        """
    )
    assert config.listeners == (
        Listener(name="public", bind="0.0.0.0:8080", host="0.0.0.0", port=8080),
    )
    assert config.limits == Limits()
    assert config.limits.max_request_line == 8192
    assert config.limits.max_body_size == 10 * 1024 * 1024
    assert dict(config.upstreams) == {}
    assert config.workers == 1
    assert config.shutdown_timeout == 30.0
    assert config.trusted_proxies == ()
    assert config.source == "gw.yaml"


def test_loader_full_config_builds_the_expected_objects():
    config = load(
        """
        listeners:
          - name: public
            bind: ":8080"
          - {name: local, bind: "[::1]:0"}
        upstreams:
          users:
            targets: ["10.0.0.5:9000", "users.internal:80"]
            connect_timeout: 250ms
            read_timeout: 1m
            max_connections: 64
            keepalive_expiry: 90
        routes:
          - name: user
            match:
              path: /api/users/{id}
              host: API.Example.com
              methods: [get, HEAD, PURGE]
            upstream: users
            rewrite: /users/{id}
            timeout: 10s
          - name: everything
            match: {path: /api/*, host: "*.example.com"}
            upstream: users
            strip_prefix: /api
        limits:
          max_request_line: 4KiB
          max_header_count: 50
          header_read_timeout: 5s
          max_body_size: 1MB
        workers: 4
        shutdown_timeout: 0
        trusted_proxies: [10.0.0.0/8, "::1"]
        """
    )
    assert config.listeners == (
        Listener(name="public", bind=":8080", host="0.0.0.0", port=8080),
        Listener(name="local", bind="[::1]:0", host="::1", port=0),
    )
    assert list(config.upstreams) == ["users"]
    assert config.upstreams["users"] == Upstream(
        name="users",
        targets=(Target("10.0.0.5", 9000), Target("users.internal", 80)),
        connect_timeout=0.25,
        read_timeout=60.0,
        max_connections=64,
        max_keepalive_connections=64,  # the default 128 is capped at max_connections
        keepalive_expiry=90.0,
    )
    assert config.routes == (
        Route(
            name="user",
            match=RouteMatch(
                path="/api/users/{id}", host="api.example.com", methods=("GET", "HEAD", "PURGE")
            ),
            upstream="users",
            rewrite="/users/{id}",
            timeout=10.0,
            index=0,
        ),
        Route(
            name="everything",
            match=RouteMatch(path="/api/*", host="*.example.com"),
            upstream="users",
            strip_prefix="/api",
            index=1,
        ),
    )
    assert config.limits == Limits(
        max_request_line=4096, max_header_count=50, header_read_timeout=5.0, max_body_size=10**6
    )
    assert config.workers == 4
    assert config.shutdown_timeout == 0.0
    assert config.trusted_proxies == ("10.0.0.0/8", "::1/128")


def test_loader_config_is_immutable():
    config = load("routes: []")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.workers = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.upstreams["x"] = None  # type: ignore[index]
    assert isinstance(config.routes, tuple)


def test_loader_upstream_defaults_come_from_defaults_module():
    config = load(
        """
        upstreams:
          users: {targets: ["127.0.0.1:9000"]}
        """
    )
    users = config.upstreams["users"]
    assert users.scheme == defaults.UPSTREAM_SCHEME == "http"
    assert users.connect_timeout == defaults.CONNECT_TIMEOUT == 5.0
    assert users.read_timeout == defaults.READ_TIMEOUT == 30.0
    assert users.max_connections == 1024
    assert users.max_keepalive_connections == 128
    assert users.keepalive_expiry == 60.0


def test_loader_workers_auto_is_the_cpu_count():
    assert load("workers: auto").workers == (os.cpu_count() or 1)


def test_loader_null_values_count_as_absent():
    config = load(
        """
        listeners:
        routes:
        limits:
        """
    )
    assert config == Config(source="gw.yaml")


def test_loader_respond_json_is_compact_with_json_content_type():
    config = load(
        """
        routes:
          - name: welcome
            match: {path: /}
            respond:
              json: {success: true, message: hi, data: {n: [1, 2.5, null]}}
        """
    )
    respond = config.routes[0].respond
    assert respond == Respond(
        status=200,
        headers=(("content-type", "application/json"),),
        body=b'{"success":true,"message":"hi","data":{"n":[1,2.5,null]}}',
    )
    assert json.loads(respond.body) == {
        "success": True,
        "message": "hi",
        "data": {"n": [1, 2.5, None]},
    }


def test_loader_respond_body_is_text_unless_content_type_given():
    config = load(
        """
        routes:
          - name: ping
            match: {path: /ping}
            respond: {body: pong}
          - name: html
            match: {path: /page}
            respond:
              status: 404
              headers: {Content-Type: text/html, X-Retry: 3}
              body: <p>nope</p>
          - name: empty
            match: {path: /empty}
            respond: {status: 204}
          - name: null-json
            match: {path: /null}
            respond: {json: null}
        """
    )
    ping, html, empty, null = (route.respond for route in config.routes)
    assert ping == Respond(headers=(("content-type", "text/plain; charset=utf-8"),), body=b"pong")
    assert html == Respond(
        status=404, headers=(("Content-Type", "text/html"), ("X-Retry", "3")), body=b"<p>nope</p>"
    )
    assert empty == Respond(status=204)
    assert null.body == b"null"


def test_loader_strip_prefix_true_is_the_literal_part_of_the_path():
    config = load(
        """
        upstreams:
          api: {targets: ["127.0.0.1:9000"]}
        routes:
          - {name: a, match: {path: /api/*}, upstream: api, strip_prefix: true}
          - {name: b, match: {path: "/v1/users/{id}"}, upstream: api, strip_prefix: true}
          - {name: c, match: {path: /exact}, upstream: api, strip_prefix: true}
          - {name: d, match: {path: /off}, upstream: api, strip_prefix: false}
        """
    )
    assert [route.strip_prefix for route in config.routes] == ["/api", "/v1/users", "/exact", None]


def test_loader_routes_that_differ_in_host_or_methods_do_not_conflict():
    config = load(
        """
        routes:
          - {name: a, match: {path: "/u/{id}", methods: [GET]}, respond: {body: a}}
          - {name: b, match: {path: "/u/{name}", methods: [POST]}, respond: {body: b}}
          - {name: c, match: {path: "/u/{id}", host: a.example.com}, respond: {body: c}}
          - {name: d, match: {path: "/u/{id}", host: "*.example.com"}, respond: {body: d}}
          - {name: e, match: {path: /u/me}, respond: {body: e}}
          - {name: f, match: {path: /u/*}, respond: {body: f}}
        """
    )
    assert [route.index for route in config.routes] == [0, 1, 2, 3, 4, 5]


def test_loader_env_substitution_with_and_without_default():
    text = """
        listeners:
          - name: ${NAME}
            bind: "${HOST:-127.0.0.1}:${PORT:-8080}"
        upstreams:
          users:
            targets: ["${USERS:-localhost:9000}"]
            max_connections: ${MAX_CONN:-10}
            read_timeout: ${READ}
        workers: ${WORKERS:-1}
        """
    config = load(text, env={"NAME": "edge", "PORT": "9999", "READ": "2s", "WORKERS": "3"})
    assert config.listeners[0] == Listener(
        name="edge", bind="127.0.0.1:9999", host="127.0.0.1", port=9999
    )
    assert config.upstreams["users"].targets == (Target("localhost", 9000),)
    assert config.upstreams["users"].max_connections == 10
    assert config.upstreams["users"].read_timeout == 2.0
    assert config.workers == 3
    # an empty variable takes the default, as in the shell
    config = load(text, env={"NAME": "edge", "READ": "1s", "PORT": ""})
    assert config.listeners[0].port == 8080


def test_loader_env_substitution_types_the_value_after_substitution():
    config = load(
        """
        upstreams:
          users:
            targets: ["127.0.0.1:9000"]
            max_connections: "${CONN}"
        routes:
          - name: "${ROUTE}"
            match: {path: /x}
            respond:
              status: ${STATUS:-201}
              body: "cost: $${NOT_A_VAR} ${PRICE}"
        """,
        env={"CONN": "12", "ROUTE": "404", "PRICE": "10"},
    )
    assert config.upstreams["users"].max_connections == 12  # quoted, still an integer field
    route = config.routes[0]
    assert route.name == "404"  # an integer-looking value is fine where a string is expected
    assert route.respond.status == 201
    assert route.respond.body == b"cost: ${NOT_A_VAR} 10"


def test_loader_value_that_substitutes_to_nothing_is_absent():
    text = """
        routes:
          - name: a
            match: {path: /a, host: "${HOST:-}"}
            respond:
              status: ${STATUS:-}
              body: "${BODY:-}"
        """
    route = load(text).routes[0]
    assert route.match.host is None
    assert route.respond == Respond(status=200, headers=(), body=b"")
    route = load(text, env={"HOST": "api.example.com", "STATUS": "201"}).routes[0]
    assert (route.match.host, route.respond.status) == ("api.example.com", 201)


def test_loader_merge_keys_and_anchors():
    config = load(
        """
        upstreams:
          users: &common
            targets: ["127.0.0.1:9000"]
            read_timeout: 5s
          orders:
            <<: *common
            targets: ["127.0.0.1:9001"]
        """
    )
    assert config.upstreams["orders"].read_timeout == 5.0
    assert config.upstreams["orders"].targets == (Target("127.0.0.1", 9001),)


def test_loader_default_yaml_loads():
    resource = importlib.resources.files("isekai").joinpath("default.yaml")
    with importlib.resources.as_file(resource) as path:
        config = load_config(path)
    assert config.listeners == (
        Listener("public", "0.0.0.0:8080", "0.0.0.0", 8080, policies=("served_by",)),
    )
    assert config.policies["served_by"].type == "headers"
    welcome, ping = config.routes
    assert welcome.name == "welcome" and welcome.match == RouteMatch(path="/")
    assert json.loads(welcome.respond.body) == {
        "success": True,
        "message": "Isekai is running",
        "data": {"next": "edit gateway.yaml; see docs/configuration.md"},
    }
    assert ping.match.path == "/ping" and ping.respond.body == b"pong"
    assert dict(config.upstreams) == {}


def test_loader_default_yaml_example_loads_when_uncommented(tmp_path):
    resource = importlib.resources.files("isekai").joinpath("default.yaml")
    lines = []
    for line in resource.read_text().splitlines():
        if line.startswith("  # ") and line[4:].lstrip().startswith(
            ("-", "match", "path", "methods", "upstream", "strip_prefix", "timeout", "policies")
            + ("web_cors", "type", "origins", "credentials")
        ):
            line = "  " + line[4:]
        elif line.startswith("# upstreams") or line.startswith("#   "):
            line = line[2:]
        lines.append(line)
    path = tmp_path / "gateway.yaml"
    path.write_text("\n".join(lines))
    config = load_config(path)
    api = config.routes[2]
    assert (api.name, api.upstream, api.strip_prefix, api.timeout) == (
        "api",
        "httpbin",
        "/api",
        10.0,
    )
    assert config.upstreams["httpbin"].targets == (Target("127.0.0.1", 9000),)
    assert api.policies == ("web_cors",) and config.policies["web_cors"].type == "cors"


def test_loader_reads_files_and_names_them_in_errors(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text("routes:\n  - name: x\n    match: {path: nope}\n    respond: {body: x}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert (error.file, error.line, error.path) == (str(path), 3, "routes[0].match.path")
    assert (
        str(error)
        == f"{path}:3: routes[0].match.path: the path pattern must start with '/', got 'nope'"
    )


def test_loader_missing_file_is_a_config_error(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config file: No such file or directory"


def test_loader_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_bytes(b"routes: []\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: the file is not valid UTF-8"


# -- mistakes: each is reported as file:line: path: message ------------------------------------

MISTAKES = {
    "empty file": ("", "gw.yaml: the file is empty; see docs/configuration.md for what goes in it"),
    "not a mapping": (
        "- routes\n",
        "gw.yaml:1: expected a mapping of settings (listeners, upstreams, routes, ...), got a list",
    ),
    "yaml syntax": (
        """
        routes:
          - name: a
            match: {path: /a
            respond: {body: x}
        """,
        "gw.yaml:4: invalid YAML: while parsing a flow mapping (from line 3), "
        "expected ',' or '}', but got ':'",
    ),
    "tab indentation": (
        "routes:\n\t- name: a\n",
        "gw.yaml:2: invalid YAML: found character '\\t' that cannot start any token "
        "(indent with spaces, not tabs)",
    ),
    "control character": (
        "routes: []\nworkers: \x00\n",
        "gw.yaml:2: invalid YAML: character '\\x00' is not allowed",
    ),
    "duplicate yaml key": (
        """
        routes:
          - name: a
            match: {path: /a}
            name: b
        """,
        "gw.yaml:4: routes[0].name: duplicate key 'name' (first at line 2)",
    ),
    "unknown top-level key": (
        """
        routes: []
        observabilty: {}
        """,
        "gw.yaml:2: observabilty: unknown key 'observabilty' (did you mean 'observability'?); "
        "allowed keys: listeners, upstreams, policies, consumers, routes, limits, workers, "
        "shutdown_timeout, trusted_proxies, pid_file, admin, store, security, observability",
    ),
    "unknown nested key": (
        """
        routes:
          - name: users
            match:
              pth: /users
        """,
        "gw.yaml:4: routes[0].match.pth: unknown key 'pth' (did you mean 'path'?); "
        "allowed keys: path, host, methods",
    ),
    "missing required key": (
        """
        routes:
          - name: users
            match: {host: api.example.com}
            respond: {body: hi}
        """,
        "gw.yaml:3: routes[0].match.path: missing required key 'path'",
    ),
    "wrong type": (
        """
        upstreams:
          users:
            targets: "10.0.0.5:9000"
        """,
        "gw.yaml:3: upstreams.users.targets: expected a list of targets ('host:port' or "
        "{address, weight}), got a string ('10.0.0.5:9000')",
    ),
    "number where a name is expected": (
        """
        routes:
          - name: 42
            match: {path: /}
            respond: {}
        """,
        "gw.yaml:2: routes[0].name: expected a string, got an integer (42); "
        "quote it to make it a string",
    ),
    "route with neither upstream nor respond": (
        """
        routes:
          - name: a
            match: {path: /a}
            respond: {body: a}
          - name: b
            match: {path: /b}
        """,
        "gw.yaml:5: routes[1]: needs 'upstream' (proxy to a service) "
        "or 'respond' (a fixed response)",
    ),
    "route with both upstream and respond": (
        """
        upstreams:
          users: {targets: ["127.0.0.1:9000"]}
        routes:
          - name: a
            match: {path: /a}
            upstream: users
            respond: {body: hi}
        """,
        "gw.yaml:7: routes[0]: a route has 'upstream' or 'respond', not both",
    ),
    "route naming a missing upstream": (
        """
        upstreams:
          orders: {targets: ["127.0.0.1:9000"]}
        routes:
          - name: a
            match: {path: /a}
            respond: {body: hi}
          - name: b
            match: {path: /b}
            upstream: orders
          - name: users
            match: {path: /users}
            upstream: users
        """,
        "gw.yaml:12: routes[2].upstream: no upstream named 'users' (upstreams: orders)",
    ),
    "bad duration": (
        """
        upstreams:
          users:
            targets: ["127.0.0.1:9000"]
            read_timeout: 10 seconds
        """,
        "gw.yaml:4: upstreams.users.read_timeout: bad duration '10 seconds': use a number with a "
        "unit (ms, s, m, h, d) like 250ms, 10s, 5m, 1h or 1m30s, or a plain number of seconds",
    ),
    "zero duration": (
        """
        limits:
          keepalive_timeout: 0s
        """,
        "gw.yaml:2: limits.keepalive_timeout: must be greater than 0",
    ),
    "bad size": (
        """
        limits:
          max_header_bytes: 32 kilobytes
        """,
        "gw.yaml:2: limits.max_header_bytes: bad size '32 kilobytes': use a number of bytes or a "
        "number with a unit (KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024) "
        "like 8KiB or 10MB",
    ),
    "bad target port": (
        """
        upstreams:
          users:
            targets:
              - 10.0.0.5:9000
              - 10.0.0.6:99999
        """,
        "gw.yaml:5: upstreams.users.targets[1]: bad address '10.0.0.6:99999': "
        "the port must be a number from 1 to 65535",
    ),
    "empty targets": (
        """
        upstreams:
          users:
            targets: []
        """,
        "gw.yaml:3: upstreams.users.targets: needs at least one target",
    ),
    "duplicate target": (
        """
        upstreams:
          users:
            targets: ["users.internal:80", "Users.Internal:80"]
        """,
        "gw.yaml:3: upstreams.users.targets[1]: duplicate target 'Users.Internal:80'",
    ),
    "unsupported scheme": (
        """
        upstreams:
          users:
            targets: ["127.0.0.1:443"]
            scheme: https
        """,
        "gw.yaml:4: upstreams.users.scheme: scheme 'https' is not supported yet (supported: http)",
    ),
    "more idle connections than connections": (
        """
        upstreams:
          users:
            targets: ["127.0.0.1:9000"]
            max_connections: 10
            max_keepalive_connections: 20
        """,
        "gw.yaml:5: upstreams.users.max_keepalive_connections: cannot be more than "
        "max_connections (10)",
    ),
    "bad bind": (
        """
        listeners:
          - name: public
            bind: "::1:8080"
        """,
        "gw.yaml:3: listeners[0].bind: bad address '::1:8080': put an IPv6 address in brackets, "
        "like [::1]:80",
    ),
    "duplicate listener name": (
        """
        listeners:
          - {name: public, bind: ":8080"}
          - {name: public, bind: ":8081"}
        """,
        "gw.yaml:3: listeners[1].name: duplicate listener name 'public' (also listeners[0])",
    ),
    "duplicate listener bind": (
        """
        listeners:
          - {name: a, bind: ":8080"}
          - {name: b, bind: "0.0.0.0:8080"}
        """,
        "gw.yaml:3: listeners[1].bind: '0.0.0.0:8080' is already bound by listeners[0]",
    ),
    "duplicate route name": (
        """
        routes:
          - name: users
            match: {path: /a}
            respond: {body: a}
          - name: users
            match: {path: /b}
            respond: {body: b}
        """,
        "gw.yaml:5: routes[1].name: duplicate route name 'users' (also routes[0])",
    ),
    "wildcard not last": (
        """
        routes:
          - name: files
            match:
              path: /files/*/meta
            respond: {body: x}
        """,
        "gw.yaml:4: routes[0].match.path: '*' must be the last segment, as in /static/*",
    ),
    "parameter not a whole segment": (
        """
        routes:
          - name: files
            match: {path: "/files/v{version}"}
            respond: {body: x}
        """,
        "gw.yaml:3: routes[0].match.path: segment 'v{version}': a parameter must be a whole "
        "segment, as in /users/{id}",
    ),
    "duplicate parameter": (
        """
        routes:
          - name: pair
            match: {path: "/a/{id}/b/{id}"}
            respond: {body: x}
        """,
        "gw.yaml:3: routes[0].match.path: parameter {id} appears twice",
    ),
    "bad host": (
        """
        routes:
          - name: a
            match: {path: /, host: "api.*.com"}
            respond: {body: x}
        """,
        "gw.yaml:3: routes[0].match.host: bad host 'api.*.com': a wildcard is only allowed as "
        "the whole first label, as in *.example.com",
    ),
    "unknown method": (
        """
        routes:
          - name: a
            match:
              path: /
              methods: [GET, fetch]
            respond: {body: x}
        """,
        "gw.yaml:5: routes[0].match.methods[1]: unknown method 'fetch': use GET, HEAD, POST, PUT, "
        "DELETE, PATCH, OPTIONS, TRACE, CONNECT or an extension method token in upper case",
    ),
    "status out of range": (
        """
        routes:
          - name: a
            match: {path: /}
            respond:
              status: 700
        """,
        "gw.yaml:5: routes[0].respond.status: must be from 100 to 599, got 700",
    ),
    "status not an integer": (
        """
        routes:
          - name: a
            match: {path: /}
            respond:
              status: ok
        """,
        "gw.yaml:5: routes[0].respond.status: expected an integer, got a string ('ok')",
    ),
    "body and json": (
        """
        routes:
          - name: a
            match: {path: /}
            respond:
              body: hi
              json: {hi: true}
        """,
        "gw.yaml:6: routes[0].respond.json: use 'body' or 'json', not both",
    ),
    "body on a 204": (
        """
        routes:
          - name: a
            match: {path: /}
            respond: {status: 204, body: hi}
        """,
        "gw.yaml:4: routes[0].respond.body: a 204 response has no body",
    ),
    "framing header": (
        """
        routes:
          - name: a
            match: {path: /}
            respond:
              headers:
                Content-Length: 5
        """,
        "gw.yaml:6: routes[0].respond.headers.Content-Length: Content-Length is set by the gateway",
    ),
    "rewrite with an unknown parameter": (
        """
        upstreams:
          users: {targets: ["127.0.0.1:9000"]}
        routes:
          - name: a
            match: {path: "/users/{id}"}
            upstream: users
            rewrite: "/v2/{user_id}"
        """,
        "gw.yaml:7: routes[0].rewrite: {user_id} is not a parameter of match.path (parameters: id)",
    ),
    "strip_prefix not a prefix": (
        """
        upstreams:
          api: {targets: ["127.0.0.1:9000"]}
        routes:
          - name: a
            match: {path: /api/*}
            upstream: api
            strip_prefix: /v1
        """,
        "gw.yaml:7: routes[0].strip_prefix: '/v1' is not a prefix of the literal part of "
        "match.path ('/api/')",
    ),
    "timeout on a respond route": (
        """
        routes:
          - name: a
            match: {path: /}
            respond: {body: x}
            timeout: 5s
        """,
        "gw.yaml:5: routes[0].timeout: 'timeout' only applies to routes with an 'upstream'",
    ),
    "bad cidr": (
        """
        trusted_proxies:
          - 10.0.0.0/8
          - 10.0.0.1/8
        """,
        "gw.yaml:3: trusted_proxies[1]: bad CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set; "
        "did you mean 10.0.0.0/8?",
    ),
    "workers zero": ("workers: 0\n", "gw.yaml:1: workers: must be at least 1, got 0"),
    "workers not a number": (
        "routes: []\nworkers: lots\n",
        "gw.yaml:2: workers: expected a positive integer or 'auto', got 'lots'",
    ),
    "undefined variable": (
        """
        listeners:
          - name: public
            bind: ":${PORT}"
        """,
        "gw.yaml:3: listeners[0].bind: environment variable PORT is not set "
        "(write ${PORT:-default} to give a default)",
    ),
    "bad variable name": (
        """
        workers: ${1WORKERS}
        """,
        "gw.yaml:1: workers: bad variable reference '${1WORKERS}': write ${NAME} or "
        "${NAME:-default}, NAME being letters, digits and '_'",
    ),
    "required key with no value": (
        """
        routes:
          - name: a
            match:
        """,
        "gw.yaml:3: routes[0].match: 'match' needs a value",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_loader_reports_mistakes_with_file_line_and_path(case):
    text, expected = MISTAKES[case]
    assert error_of(text) == expected


def test_loader_error_carries_its_parts():
    with pytest.raises(ConfigError) as info:
        load("routes:\n  - name: a\n    match: {path: /}\n    respond: {status: 99}\n")
    error = info.value
    assert (error.file, error.line, error.path) == ("gw.yaml", 4, "routes[0].respond.status")
    assert error.message == "must be from 100 to 599, got 99"


def test_loader_route_conflict_names_both_routes():
    message = error_of(
        """
        routes:
          - name: users
            match: {path: "/users/{id}", methods: [GET]}
            respond: {body: a}
          - name: other
            match: {path: /other}
            respond: {body: b}
          - name: user-by-name
            match: {path: "/users/{name}", methods: [POST, GET]}
            respond: {body: c}
        """,
        kind=RouteConflictError,
    )
    assert (
        message == "gw.yaml:9: routes[2].match: same host, path and methods as routes[0] ('users')"
    )


def test_loader_route_conflict_any_method_overlaps_every_method():
    message = error_of(
        """
        routes:
          - {name: a, match: {path: /x, host: API.example.com, methods: [DELETE]}, respond: {}}
          - {name: b, match: {path: /x, host: api.example.com}, respond: {}}
        """,
        kind=RouteConflictError,
    )
    assert message == "gw.yaml:3: routes[1].match: same host, path and methods as routes[0] ('a')"


def test_loader_recursive_json_alias_is_an_error():
    message = error_of(
        """
        routes:
          - name: a
            match: {path: /}
            respond:
              json: &loop [1, *loop]
        """
    )
    assert message == (
        "gw.yaml:5: routes[0].respond.json[1]: an alias refers back to a value that contains it"
    )


def test_loader_route_websocket_and_limits():
    config = load_config_text(
        """
        pid_file: /run/isekai.pid
        limits: {websocket_idle_timeout: 20s}
        upstreams: {app: {targets: ["127.0.0.1:9000"]}}
        routes:
          - name: ws
            match: {path: /ws}
            upstream: app
            websocket: true
            limits: {max_body_size: 1KiB, body_idle_timeout: 2s, websocket_idle_timeout: 1m}
        """.strip().replace("\n        ", "\n"),
        "gw.yaml",
    )
    route = config.routes[0]
    assert route.websocket is True
    assert route.limits.max_body_size == 1024
    assert route.limits.body_idle_timeout == 2.0
    assert route.limits.websocket_idle_timeout == 60.0
    assert config.limits.websocket_idle_timeout == 20.0
    assert config.pid_file == "/run/isekai.pid"


@pytest.mark.parametrize(
    "route, expected",
    [
        (
            "{name: w, match: {path: /w}, respond: {body: x}, websocket: true}",
            "gw.yaml:3: routes[0].websocket: 'websocket' only applies to routes with an 'upstream'",
        ),
        (
            "{name: w, match: {path: /w}, upstream: app, websocket: 3}",
            "gw.yaml:3: routes[0].websocket: expected true or false, got an integer (3)",
        ),
        (
            "{name: w, match: {path: /w}, upstream: app, limits: {header_read_timeout: 1s}}",
            "gw.yaml:3: routes[0].limits.header_read_timeout: unknown key 'header_read_timeout' "
            "(did you mean 'body_idle_timeout'?); allowed keys: max_body_size, "
            "body_idle_timeout, websocket_idle_timeout",
        ),
    ],
)
def test_loader_route_websocket_and_limits_mistakes(route, expected):
    text = f'upstreams: {{app: {{targets: ["127.0.0.1:9000"]}}}}\nroutes:\n  - {route}\n'
    with pytest.raises(ConfigError) as info:
        load_config_text(text, "gw.yaml")
    assert str(info.value) == expected
