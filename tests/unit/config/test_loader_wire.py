"""Values that reach the wire are checked against their grammar, and the new store/pool keys."""

import textwrap

import pytest

from isekai.config import units
from isekai.config.loader import API_SOURCE, load_config_text, validate_dynamic
from isekai.errors import ConfigError

UPSTREAM = 'upstreams: {app: {targets: ["127.0.0.1:9000"]}}\n'


def error_of(text):
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text).lstrip("\n"), "gw.yaml", env={})
    return str(info.value)


WIRE_MISTAKES = {
    "header value outside latin-1": (
        'routes:\n  - {name: a, match: {path: /}, respond: {headers: {X-A: "a\\u2603b"}}}\n',
        "gw.yaml:2: routes[0].respond.headers.X-A: header values may only hold visible ASCII, "
        "Latin-1, spaces and tabs; '☃' is not allowed (percent-encode or drop it)",
    ),
    "header value with DEL": (
        'routes:\n  - {name: a, match: {path: /}, respond: {headers: {X-A: "a\\x7fb"}}}\n',
        "gw.yaml:2: routes[0].respond.headers.X-A: header values may only hold visible ASCII, "
        "Latin-1, spaces and tabs; '\\x7f' is not allowed (percent-encode or drop it)",
    ),
    "header value with LF": (
        'routes:\n  - {name: a, match: {path: /}, respond: {headers: {X-A: "a\\nb"}}}\n',
        "gw.yaml:2: routes[0].respond.headers.X-A: header values must not contain CR, LF or NUL",
    ),
    "header name not a token": (
        'routes:\n  - {name: a, match: {path: /}, respond: {headers: {"X(A)": b}}}\n',
        "gw.yaml:2: routes[0].respond.headers.X(A): bad header name 'X(A)'",
    ),
    "path with a control character": (
        'routes:\n  - {name: a, match: {path: "/a\\tb"}, respond: {}}\n',
        "gw.yaml:2: routes[0].match.path: segment 'a\\tb' has characters not allowed in a URL "
        "path (no spaces, '?' or '#'; percent-encode others)",
    ),
    "host with an underscore": (
        "routes:\n  - {name: a, match: {path: /, host: a_b.example.com}, respond: {}}\n",
        "gw.yaml:2: routes[0].match.host: bad host 'a_b.example.com': not a valid host name "
        "(RFC 1123: labels of letters, digits and '-', not starting or ending with '-')",
    ),
    "rewrite with a space": (
        UPSTREAM + 'routes:\n  - {name: a, match: {path: /a}, upstream: app, rewrite: "/b c"}\n',
        "gw.yaml:3: routes[0].rewrite: rewrite '/b c' has characters not allowed in a URL path "
        "(no spaces or control characters; percent-encode others)",
    ),
    "strip_prefix with a query": (
        UPSTREAM
        + 'routes:\n  - {name: a, match: {path: /a/*}, upstream: app, strip_prefix: "/a?"}\n',
        "gw.yaml:3: routes[0].strip_prefix: strip_prefix '/a?' has characters not allowed in a URL "
        "path (no spaces, control characters, '?' or '#'; percent-encode others)",
    ),
    "store url without slashes": (
        'store: {url: "sqlite:isekai.db"}\n',
        "gw.yaml:1: store.url: unsupported store URL 'sqlite:isekai.db': use sqlite:///path.db, "
        "sqlite:///:memory: or postgresql://user@host:5432/database",
    ),
    "store url with a bad sqlite path": (
        'store: {url: "sqlite://host/x.db"}\n',
        "gw.yaml:1: store.url: bad SQLite URL 'sqlite://host/x.db': write "
        "sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite:///:memory:",
    ),
    "zero pool timeout": (
        'upstreams: {app: {targets: ["127.0.0.1:9000"], pool_timeout: 0s}}\n',
        "gw.yaml:1: upstreams.app.pool_timeout: must be greater than 0",
    ),
}


@pytest.mark.parametrize("case", list(WIRE_MISTAKES), ids=list(WIRE_MISTAKES))
def test_loader_wire_grammar_mistakes_are_located(case):
    text, expected = WIRE_MISTAKES[case]
    assert error_of(text) == expected


def test_loader_wire_latin1_header_values_are_accepted():
    text = 'routes:\n  - {name: a, match: {path: /}, respond: {headers: {X-A: "caf\\xe9\\tok"}}}\n'
    respond = load_config_text(text, "gw.yaml").routes[0].respond
    assert respond.headers[0] == ("X-A", "caf\xe9\tok")
    assert respond.headers[0][1].encode("latin-1") == b"caf\xe9\tok"


def test_loader_wire_api_document_mistake_names_the_api_and_path():
    route = {"name": "a", "match": {"path": "/"}, "respond": {"headers": {"X-A": "a\u2603b"}}}
    with pytest.raises(ConfigError) as info:
        validate_dynamic("routes: []\n", "gw.yaml", routes=[route])
    error = info.value
    assert (error.file, error.line, error.path) == (
        API_SOURCE,
        None,
        "routes[0].respond.headers.X-A",
    )
    assert "'☃' is not allowed" in error.message


def test_loader_wire_pool_timeout_default_and_value():
    config = load_config_text(
        "upstreams:\n"
        '  a: {targets: ["127.0.0.1:1"]}\n'
        '  b: {targets: ["127.0.0.1:2"], pool_timeout: 250ms}\n'
    )
    assert config.upstreams["a"].pool_timeout == 5.0
    assert config.upstreams["b"].pool_timeout == 0.25


def test_loader_wire_route_match_carries_the_parsed_pattern():
    text = UPSTREAM + 'routes:\n  - {name: a, match: {path: "/u/{id}/*"}, upstream: app}\n'
    match = load_config_text(text).routes[0].match
    assert match.pattern == units.parse_path_pattern("/u/{id}/*")
    assert match.pattern.segments == ("u", None, "*")
    assert match.pattern.params == ("id",)
