"""The `admin` and `store` config sections, and validate_dynamic for API-made items."""

from __future__ import annotations

import textwrap

import pytest

from isekai.config.loader import (
    API_SOURCE,
    file_documents,
    is_loopback,
    load_config_text,
    validate_dynamic,
)
from isekai.config.schema import Admin, AdminAuth, Config, RequestLogs, Store
from isekai.errors import ConfigError, RouteConflictError


def load(text: str, env: dict[str, str] | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), "gw.yaml", env=env or {})


def test_admin_and_store_defaults():
    config = load("routes: []")
    assert config.admin == Admin(
        enabled=True,
        bind="127.0.0.1:9080",
        host="127.0.0.1",
        port=9080,
        auth=AdminAuth(enabled=True, jwt_secret=None, jwt_expiry=3600.0, jwt_algorithm="HS256"),
        request_logs=RequestLogs(enabled=False, retention=7 * 86400.0, queue_size=10_000),
    )
    assert config.store == Store(url="sqlite:///isekai.db")
    assert Config().admin == config.admin


def test_admin_every_key():
    config = load(
        """
        admin:
          enabled: true
          bind: "[::1]:9090"
          auth:
            enabled: false
            jwt_secret: "${SECRET}"
            jwt_expiry: 30m
            jwt_algorithm: hs384
          request_logs: {enabled: true, retention: 1d12h, queue_size: 500}
        store:
          url: "sqlite:////var/lib/isekai/isekai.db"
        """,
        env={"SECRET": "k" * 48},
    )
    admin = config.admin
    assert (admin.host, admin.port, admin.bind) == ("::1", 9090, "[::1]:9090")
    assert admin.auth == AdminAuth(
        enabled=False, jwt_secret="k" * 48, jwt_expiry=1800.0, jwt_algorithm="HS384"
    )
    assert admin.request_logs == RequestLogs(enabled=True, retention=129600.0, queue_size=500)
    assert config.store.url == "sqlite:////var/lib/isekai/isekai.db"
    assert "k" * 48 not in repr(config)


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "127.1.2.3:9080", "[::1]:9080", "localhost:9"])
def test_admin_auth_off_is_allowed_on_loopback(bind):
    config = load(f'admin: {{bind: "{bind}", auth: {{enabled: false}}}}')
    assert config.admin.auth.enabled is False


MISTAKES = {
    "auth off on a public bind": (
        """
        admin:
          bind: "0.0.0.0:9080"
          auth:
            enabled: false
        """,
        "gw.yaml:5: admin.auth.enabled: auth can only be turned off when admin.bind is a "
        "loopback address (127.0.0.1, [::1] or localhost), not '0.0.0.0:9080'",
    ),
    "auth off on the default bind's host written as all interfaces": (
        'admin: {bind: ":9080", auth: {enabled: false}}',
        "admin.auth.enabled: auth can only be turned off",
    ),
    "short secret": (
        'admin: {auth: {jwt_secret: "short"}}',
        "gw.yaml:1: admin.auth.jwt_secret: must be at least 32 characters long for HS256, got 5",
    ),
    "short secret for HS512": (
        f'admin: {{auth: {{jwt_secret: "{"x" * 40}", jwt_algorithm: HS512}}}}',
        "admin.auth.jwt_secret: must be at least 64 characters long for HS512, got 40",
    ),
    "unsupported algorithm": (
        "admin: {auth: {jwt_algorithm: RS256}}",
        "admin.auth.jwt_algorithm: algorithm 'RS256' is not supported (supported: HS256, "
        "HS384, HS512)",
    ),
    "bad expiry": ("admin: {auth: {jwt_expiry: 0}}", "admin.auth.jwt_expiry: must be greater"),
    "bad bind": ('admin: {bind: "9080"}', "admin.bind: bad address '9080': missing ':port'"),
    "unknown admin key": (
        "admin: {port: 9080}",
        "admin.port: unknown key 'port'; allowed keys: enabled, bind, auth, request_logs",
    ),
    "unknown auth key": ("admin: {auth: {secret: x}}", "admin.auth.secret: unknown key 'secret'"),
    "bad queue size": (
        "admin: {request_logs: {queue_size: 0}}",
        "admin.request_logs.queue_size: must be at least 1, got 0",
    ),
    "bad retention": (
        "admin: {request_logs: {retention: forever}}",
        "admin.request_logs.retention: bad duration 'forever'",
    ),
    # the messages of the one store URL grammar, isekai.store.urls (what `run` opens with)
    "store url without a scheme": (
        'store: {url: "isekai.db"}',
        "store.url: unsupported store URL 'isekai.db': use sqlite:///path.db, sqlite:///:memory: "
        "or postgresql://user@host:5432/database",
    ),
    "unsupported store": (
        'store: {url: "mysql://db/isekai"}',
        "store.url: unsupported store URL mysql://: use sqlite:///path.db",
    ),
    "unknown store key": ("store: {path: x.db}", "store.path: unknown key 'path'"),
    "enabled not a boolean": ("admin: {enabled: maybe}", "admin.enabled: expected true or false"),
}


@pytest.mark.parametrize("case", MISTAKES, ids=list(MISTAKES))
def test_admin_and_store_mistakes_are_located(case):
    text, message = MISTAKES[case]
    with pytest.raises(ConfigError) as caught:
        load(text)
    assert message in str(caught.value)


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    assert not is_loopback("example.com")


BASE = """
upstreams:
  users: {targets: ["127.0.0.1:9000"], read_timeout: "${RT:-10s}"}
routes:
  - {name: a, match: {path: /a}, upstream: users}
"""


def test_validate_dynamic_appends_documents_after_the_file():
    config = validate_dynamic(
        BASE,
        "gw.yaml",
        routes=[{"name": "b", "match": {"path": "/b"}, "upstream": "orders", "timeout": 2}],
        upstreams={"orders": {"targets": ["127.0.0.1:9001"]}},
        env={},
    )
    assert [r.name for r in config.routes] == ["a", "b"]
    assert [r.index for r in config.routes] == [0, 1]
    assert list(config.upstreams) == ["users", "orders"]
    assert config.routes[1].timeout == 2.0
    assert config.upstreams["users"].read_timeout == 10.0
    assert config.source == "gw.yaml"


def test_validate_dynamic_without_documents_is_load_config_text():
    assert validate_dynamic(BASE, "gw.yaml", env={}) == load_config_text(BASE, "gw.yaml", env={})


@pytest.mark.parametrize(
    "text",
    [
        "listeners: [{name: p, bind: ':0'}]\n",
        "routes:\nupstreams:\n",
        "routes: []\nupstreams: {}\n",
    ],
)
def test_validate_dynamic_creates_or_fills_missing_sections(text):
    config = validate_dynamic(
        text,
        routes=[{"name": "b", "match": {"path": "/b"}, "upstream": "u"}],
        upstreams={"u": {"targets": ["a:1"]}},
    )
    assert [r.name for r in config.routes] == ["b"] and list(config.upstreams) == ["u"]


def test_validate_dynamic_resolves_merge_keys_of_the_file():
    text = """
    base: &base
      routes:
        - {name: a, match: {path: /a}, respond: {}}
    """
    # a top-level merge key is a mistake of its own ('base' is unknown), reported as for YAML
    with pytest.raises(ConfigError, match="unknown key 'base'"):
        validate_dynamic(
            textwrap.dedent(text), routes=[{"name": "b", "match": {"path": "/b"}, "respond": {}}]
        )


MISTAKES_IN_DOCUMENTS = {
    "missing upstream": (
        [{"name": "b", "match": {"path": "/b"}, "upstream": "nope"}],
        {},
        "routes[1].upstream",
        "no upstream named 'nope' (upstreams: users)",
    ),
    "conflict": (
        [{"name": "b", "match": {"path": "/a"}, "upstream": "users"}],
        {},
        "routes[1].match",
        "same host, path and methods as routes[0] ('a')",
    ),
    "duplicate name": (
        [{"name": "a", "match": {"path": "/x"}, "upstream": "users"}],
        {},
        "routes[1].name",
        "duplicate route name 'a' (also routes[0])",
    ),
    "unknown key": (
        [{"name": "b", "match": {"path": "/b"}, "upstream": "users", "x": 1}],
        {},
        "routes[1].x",
        "unknown key 'x'",
    ),
    "string where a list goes": (
        [{"name": "b", "match": {"path": "/b", "methods": "GET"}, "upstream": "users"}],
        {},
        "routes[1].match.methods",
        "expected a list of methods like [GET, POST], got a string ('GET')",
    ),
    "a boolean is not a string": (
        [{"name": True, "match": {"path": "/b"}, "upstream": "users"}],
        {},
        "routes[1].name",
        "expected a string, got a boolean (true)",
    ),
    "upstream without targets": (
        [],
        {"x": {"targets": []}},
        "upstreams.x.targets",
        "needs at least one target",
    ),
    "upstream name taken by the file": (
        [],
        {"users": {"targets": ["a:1"]}},
        "upstreams.users",
        "duplicate key 'users'",
    ),
}


@pytest.mark.parametrize("case", MISTAKES_IN_DOCUMENTS, ids=list(MISTAKES_IN_DOCUMENTS))
def test_validate_dynamic_reports_mistakes_in_documents_with_their_config_path(case):
    routes, upstreams, path, message = MISTAKES_IN_DOCUMENTS[case]
    with pytest.raises(ConfigError) as caught:
        validate_dynamic(BASE, "gw.yaml", routes=routes, upstreams=upstreams, env={})
    error = caught.value
    assert error.path == path
    assert message in error.message
    assert error.file == API_SOURCE and error.line is None
    if case == "conflict":
        assert isinstance(error, RouteConflictError)


def test_validate_dynamic_never_substitutes_variables_in_documents():
    config = validate_dynamic(
        BASE,
        routes=[{"name": "b", "match": {"path": "/b"}, "respond": {"body": "${HOME} $${X}"}}],
        env={"HOME": "/root"},
    )
    assert config.routes[1].respond.body == b"${HOME} $${X}"


def test_validate_dynamic_types_json_values_like_yaml_would():
    config = validate_dynamic(
        BASE,
        routes=[
            {
                "name": "b",
                "match": {"path": "/b"},
                "respond": {
                    "status": 201,
                    "headers": {"X-A": 1.5},
                    "json": {"n": None, "s": "yes"},
                },
            }
        ],
    )
    respond = config.routes[1].respond
    assert respond.status == 201
    assert ("X-A", "1.5") in respond.headers
    assert respond.body == b'{"n":null,"s":"yes"}'


def test_file_documents_keeps_values_as_written():
    routes, upstreams = file_documents(BASE)
    assert routes == [{"name": "a", "match": {"path": "/a"}, "upstream": "users"}]
    assert upstreams == {"users": {"targets": ["127.0.0.1:9000"], "read_timeout": "${RT:-10s}"}}
