"""Policies in the config file: every family's keys, every refusal located by file, line and
path, placeholders and ${VAR}, references from routes and listeners, big lists, plugins."""

from __future__ import annotations

import dataclasses
import logging
import sys
import textwrap
from dataclasses import dataclass
from typing import ClassVar

import pytest
from jsonschema import Draft202012Validator

from isekai.config import jsonschema, policies
from isekai.config.loader import load_config_text, validate_dynamic
from isekai.config.meta import item, setting
from isekai.config.policies import (
    CorsConfig,
    FaultAbort,
    FaultConfig,
    FaultDelay,
    HeaderEdits,
    HeadersConfig,
    IpFilterConfig,
    PolicySpec,
    known_types,
)
from isekai.errors import ConfigError

EXAMPLE = """
policies:
  tag:      {type: headers, request: {set: {X-Gateway: isekai}, remove: [X-Secret]},
             response: {set: {X-Served-By: isekai}, remove: [Server]}}
  web_cors: {type: cors, origins: ["https://app.example.com", "*.example.org"],
             methods: [GET, POST], headers: [Authorization, Content-Type], credentials: true,
             max_age: 10m}
  office:   {type: ip_filter, allow: [10.0.0.0/8, "2001:db8::/32"]}      # or deny: [...]
  chaos:    {type: fault, abort: {status: 503, percent: 100}, when_header: X-Chaos}
upstreams:
  users: {targets: ["127.0.0.1:9000"]}
listeners: [{name: public, bind: ":8080", policies: [tag]}]
routes:
  - {name: api, match: {path: "/api/*"}, upstream: users, policies: [web_cors, chaos],
     preserve_host: true}
  - {name: internal, match: {path: "/internal/*"}, upstream: users,
     policies: [office, {type: fault, delay: {duration: 200ms, percent: 100}}]}
"""


def load(text, env=None):
    return load_config_text(textwrap.dedent(text).lstrip("\n"), "gw.yaml", env=env or {})


def error_of(text, env=None):
    with pytest.raises(ConfigError) as caught:
        load(text, env)
    return str(caught.value)


def policy(body, env=None):
    """The PolicySpec `p` of a file whose only policy is ``p: <body>`` (flow YAML)."""
    return load(f"policies:\n  p: {body}\n", env).policies["p"]


def policy_error(body, env=None):
    return error_of(f"policies:\n  p: {body}\n", env)


# -- the shapes -----------------------------------------------------------------------------------


def test_policies_the_example_builds_the_expected_specs():
    config = load(EXAMPLE)
    assert list(config.policies) == ["tag", "web_cors", "office", "chaos"]
    assert config.policies["tag"] == PolicySpec(
        "headers",
        HeadersConfig(
            request=HeaderEdits(set=(("X-Gateway", "isekai"),), remove=("X-Secret",)),
            response=HeaderEdits(set=(("X-Served-By", "isekai"),), remove=("Server",)),
        ),
        "tag",
    )
    assert config.policies["web_cors"].options == CorsConfig(
        origins=("https://app.example.com", "*.example.org"),
        methods=("GET", "POST"),
        headers=("Authorization", "Content-Type"),
        credentials=True,
        max_age=600.0,
    )
    assert config.policies["office"].options == IpFilterConfig(
        allow=("10.0.0.0/8", "2001:db8::/32")
    )
    assert config.policies["chaos"].options == FaultConfig(
        abort=FaultAbort(503, 100.0), when_header="X-Chaos"
    )
    assert config.policies["chaos"].deadline == 10.0
    assert config.listeners[0].policies == ("tag",)
    api, internal = config.routes
    assert api.policies == ("web_cors", "chaos") and api.preserve_host is True
    assert internal.preserve_host is False
    assert internal.policies[0] == "office"
    assert internal.policies[1] == PolicySpec(
        "fault", FaultConfig(delay=FaultDelay(0.2, 100.0)), None
    )


def test_policies_specs_are_hashable_and_compare_by_value():
    one, two = load(EXAMPLE), load(EXAMPLE)
    assert one.policies["web_cors"] == two.policies["web_cors"]
    assert len({one.policies["tag"], two.policies["tag"], one.policies["chaos"]}) == 2


def test_policies_defaults():
    config = load("routes: [{name: r, match: {path: /}, respond: {}}]")
    assert dict(config.policies) == {}
    assert config.routes[0].policies == () and config.routes[0].preserve_host is False
    assert config.listeners[0].policies == ()
    cors = policy("{type: cors, origins: ['*']}").options
    assert cors == CorsConfig(origins=("*",))
    assert cors.methods == ("GET", "HEAD", "POST") and cors.max_age is None
    assert cors.headers == () and cors.expose_headers == () and cors.credentials is False


def test_policies_headers_every_key():
    spec = policy(
        "{type: headers, deadline: 2s, request: {add: {X-A: 1, x-b: 'two words'}, "
        "set: {X-C: '${request_id}'}, remove: [X-D], rename: {X-Old: X-New}}, "
        "response: {add: {Via: isekai}}}"
    )
    assert spec.deadline == 2.0
    assert spec.options.request == HeaderEdits(
        add=(("X-A", "1"), ("x-b", "two words")),
        set=(("X-C", "${request_id}"),),
        remove=("X-D",),
        rename=(("X-Old", "X-New"),),
    )
    assert spec.options.response == HeaderEdits(add=(("Via", "isekai"),))


def test_policies_cors_every_key_and_normalisation():
    options = policy(
        "{type: cors, origins: ['HTTPS://App.Example.com:8443', 'http://[::1]:3000', "
        "'*.Example.org', 'https://*.example.net'], methods: [get, PURGE], headers: [X-Api-Key], "
        "expose_headers: [X-Total], credentials: true, max_age: 0}"
    ).options
    assert options.origins == (
        "https://app.example.com:8443",
        "http://[::1]:3000",
        "*.example.org",
        "https://*.example.net",
    )
    assert options.methods == ("GET", "PURGE")
    assert options.headers == ("X-Api-Key",) and options.expose_headers == ("X-Total",)
    assert options.credentials is True and options.max_age == 0.0


def test_policies_ip_filter_normalises_addresses():
    options = policy(
        "{type: ip_filter, allow: [10.0.0.1, '2001:DB8::/32'], deny: ['::1', 192.168.0.0/16]}"
    ).options
    assert options.allow == ("10.0.0.1/32", "2001:db8::/32")
    assert options.deny == ("::1/128", "192.168.0.0/16")
    assert policy("{type: ip_filter, deny: [10.0.0.0/8]}").options.allow == ()


def test_policies_fault_every_key():
    options = policy(
        "{type: fault, abort: {status: 200, percent: 0}, delay: {duration: 1.5, percent: 12.5}, "
        "when_header: X-Chaos}"
    ).options
    assert options == FaultConfig(FaultAbort(200, 0.0), FaultDelay(1.5, 12.5), "X-Chaos")
    assert policy("{type: fault, abort: {status: 599}}").options.abort.percent == 100.0


def test_policies_null_keys_are_absent():
    spec = policy("{type: cors, origins: ['*'], deadline: null, max_age: null, methods: null}")
    assert spec.deadline == 10.0 and spec.options.methods == ("GET", "HEAD", "POST")


def test_policies_env_substitution_still_works_in_policy_values():
    env = {"ORIGIN": "https://a.example", "STATUS": "503", "PCT": "2.5"}
    options = policy(
        "{type: cors, origins: ['${ORIGIN}']}",
        env,
    ).options
    assert options.origins == ("https://a.example",)
    fault = policy("{type: fault, abort: {status: '${STATUS}', percent: '${PCT}'}}", env)
    assert fault.options.abort == FaultAbort(503, 2.5)


# -- placeholders and ${VAR} ----------------------------------------------------------------------


def test_policies_placeholders_reach_the_policy_literally():
    env = {"REGION": "eu", "route": "not used", "client_ip": "not used"}
    spec = policy(
        "{type: headers, request: {set: {X-Client: '${client_ip}', X-Id: '${request_id}', "
        "X-Route: 'r=${route}', X-User: '${param.user_id}-${REGION}', X-Lit: '$${HOME}', "
        "X-Def: '${MISSING:-none}'}}}",
        env,
    )
    assert spec.options.request.set == (
        ("X-Client", "${client_ip}"),
        ("X-Id", "${request_id}"),
        ("X-Route", "r=${route}"),
        ("X-User", "${param.user_id}-eu"),
        ("X-Lit", "${HOME}"),
        ("X-Def", "none"),
    )


def test_policies_placeholders_are_only_kept_in_header_values():
    # elsewhere ${client_ip} is an environment variable like any other
    text = "routes: [{name: r, match: {path: /}, respond: {body: '${client_ip}'}}]"
    assert "environment variable client_ip is not set" in error_of(text)


@pytest.mark.parametrize(
    "value, message",
    [
        ("${params.id}", "bad reference '${params.id}': placeholders are ${client_ip}, "),
        ("${param.1x}", "bad reference '${param.1x}'"),
        ("${client.ip}", "bad reference '${client.ip}'"),
        ("${UNSET}", "environment variable UNSET is not set"),
        ("${client_ip", "unclosed '${client_ip'"),
        ("a\\nb", "must not contain CR, LF or NUL"),
    ],
)
def test_policies_bad_references_in_header_values(value, message):
    found = policy_error(f'{{type: headers, response: {{set: {{X-A: "{value}"}}}}}}')
    assert found.startswith("gw.yaml:2: policies.p.response.set.X-A: "), found
    assert message in found


def test_policies_placeholder_error_names_the_placeholders():
    found = policy_error("{type: headers, response: {set: {X-A: '${params.id}'}}}")
    assert "${client_ip}, ${request_id}, ${route}, ${param.NAME}" in found


# -- refusals, located ----------------------------------------------------------------------------

BLOCK = """\
policies:
  web:
    type: cors
    origins:
      - https://ok.example
      - "https://bad.example/x"
"""


def test_policies_errors_name_the_line_of_the_value():
    assert error_of(BLOCK).startswith("gw.yaml:6: policies.web.origins[1]: bad origin")
    text = BLOCK.replace("cors", "headers").replace(
        '    origins:\n      - https://ok.example\n      - "https://bad.example/x"\n',
        "    request:\n      set:\n        X-Ok: 1\n        host: example.com\n",
    )
    assert error_of(text) == (
        "gw.yaml:7: policies.web.request.set.host: host is managed by the gateway: request "
        "edits cannot change it (a route's preserve_host sends the client's Host)"
    )


REFUSED = {
    "unknown type": (
        "{type: oauth}",
        "policies.p.type: unknown policy type 'oauth' (known types: "
        + ", ".join(known_types())
        + ")",
    ),
    "missing type": ("{origins: ['*']}", "policies.p.type: missing required key 'type'"),
    "null type": ("{type: null}", "policies.p.type: 'type' needs a value"),
    "type not a string": ("{type: [cors]}", "policies.p.type: expected a policy type, got a list"),
    "not a mapping": ("cors", "policies.p: expected a policy: a mapping with 'type'"),
    "unknown key": (
        "{type: fault, abort: {status: 500}, when: X}",
        "policies.p.when: unknown key 'when'; allowed keys: type, deadline, abort, delay, "
        "when_header",
    ),
    "bad deadline": ("{type: fault, abort: {status: 500}, deadline: soon}", "bad duration 'soon'"),
    "zero deadline": (
        "{type: fault, abort: {status: 500}, deadline: 0s}",
        "policies.p.deadline: must be greater than 0",
    ),
    "no header edits": (
        "{type: headers, request: {}}",
        "policies.p: needs at least one header edit in 'request' or 'response'",
    ),
    "empty edits": (
        "{type: headers, request: {set: {}}, response: {remove: []}}",
        "policies.p: needs at least one header edit",
    ),
    "bad header name": (
        "{type: headers, request: {set: {'X A': b}}}",
        "policies.p.request.set.X A: bad header name 'X A'",
    ),
    "header twice": (
        "{type: headers, request: {set: {X-A: a, x-a: b}}}",
        "policies.p.request.set.x-a: header 'x-a' is given twice",
    ),
    "bad header value": (
        "{type: headers, request: {set: {X-A: [1]}}}",
        "policies.p.request.set.X-A: expected a header value, got a list",
    ),
    "bad removed name": (
        "{type: headers, response: {remove: ['X:A']}}",
        "policies.p.response.remove[0]: bad header name 'X:A'",
    ),
    "managed request remove": (
        "{type: headers, request: {remove: [X-A, Connection]}}",
        "policies.p.request.remove[1]: Connection is managed by the gateway: request edits",
    ),
    "managed rename target": (
        "{type: headers, request: {rename: {X-A: X-Forwarded-Proto}}}",
        "policies.p.request.rename.X-A: X-Forwarded-Proto is managed by the gateway",
    ),
    "managed response": (
        "{type: headers, response: {add: {Content-Length: 5}}}",
        "policies.p.response.add.Content-Length: Content-Length is managed by the gateway: "
        "response edits cannot change it",
    ),
    "unknown edit": (
        "{type: headers, request: {delete: [X-A]}}",
        "policies.p.request.delete: unknown key 'delete'; allowed keys: add, set, remove, rename",
    ),
    "cors without origins": ("{type: cors}", "policies.p.origins: missing required key 'origins'"),
    "cors empty origins": ("{type: cors, origins: []}", "needs at least one origin"),
    "cors origin twice": (
        "{type: cors, origins: [https://a.b, https://a.b]}",
        "policies.p.origins[1]: origin 'https://a.b' is listed twice",
    ),
    "cors star credentials": (
        "{type: cors, origins: [https://a.b, '*'], credentials: true}",
        "policies.p.origins: '*' cannot be used with credentials: true",
    ),
    "cors no scheme": ("{type: cors, origins: [a.example]}", "missing the scheme"),
    "cors path": ("{type: cors, origins: ['https://a.b/']}", "an origin has no path"),
    "cors space": ("{type: cors, origins: ['https://a b']}", "no spaces"),
    "cors port": ("{type: cors, origins: ['https://a.b:0']}", "port must be a number"),
    "cors inner wildcard": ("{type: cors, origins: ['https://a.*.b']}", "is not a host name"),
    "cors bad method": ("{type: cors, origins: ['*'], methods: [get me]}", "unknown method"),
    "cors bad header": (
        "{type: cors, origins: ['*'], headers: ['a b']}",
        "policies.p.headers[0]: bad header name",
    ),
    "cors negative max_age": (
        "{type: cors, origins: ['*'], max_age: -1s}",
        "policies.p.max_age: bad duration",
    ),
    "cors max_age too long": (
        "{type: cors, origins: ['*'], max_age: 400d}",
        "policies.p.max_age: must be at most 365d, got 400d",
    ),
    "cors credentials not bool": (
        "{type: cors, origins: ['*'], credentials: yes please}",
        "policies.p.credentials: expected true or false",
    ),
    "ip_filter empty": ("{type: ip_filter, allow: []}", "policies.p: needs 'allow' or 'deny'"),
    "ip_filter host bits": (
        "{type: ip_filter, deny: [10.0.0.0/8, 10.1.1.1/16]}",
        "policies.p.deny[1]: bad CIDR '10.1.1.1/16'",
    ),
    "ip_filter not an address": ("{type: ip_filter, allow: [office]}", "bad CIDR 'office'"),
    "ip_filter not a list": ("{type: ip_filter, allow: 10.0.0.0/8}", "expected a list of CIDRs"),
    "fault nothing": ("{type: fault, when_header: X-A}", "policies.p: needs 'abort' or 'delay'"),
    "fault no status": (
        "{type: fault, abort: {percent: 5}}",
        "policies.p.abort.status: missing required key 'status'",
    ),
    "fault status low": (
        "{type: fault, abort: {status: 101}}",
        "policies.p.abort.status: must be from 200 to 599, got 101",
    ),
    "fault percent high": (
        "{type: fault, abort: {status: 500, percent: 100.5}}",
        "policies.p.abort.percent: must be from 0 to 100, got 100.5",
    ),
    "fault percent negative": (
        "{type: fault, delay: {duration: 1s, percent: -1}}",
        "policies.p.delay.percent: must be from 0 to 100, got -1",
    ),
    "fault percent text": (
        "{type: fault, delay: {duration: 1s, percent: half}}",
        "policies.p.delay.percent: expected a number, got a string ('half')",
    ),
    "fault percent huge": (
        "{type: fault, delay: {duration: 1s, percent: 1" + "0" * 400 + "}}",
        "policies.p.delay.percent: must be from 0 to 100, got 1000",
    ),
    "fault percent nan": (
        "{type: fault, delay: {duration: 1s, percent: .nan}}",
        "policies.p.delay.percent: expected a finite number",
    ),
    "fault zero delay": (
        "{type: fault, delay: {duration: 0ms}}",
        "policies.p.delay.duration: must be greater than 0",
    ),
    "fault no duration": (
        "{type: fault, delay: {percent: 5}}",
        "policies.p.delay.duration: missing required key 'duration'",
    ),
    "fault bad when_header": (
        "{type: fault, abort: {status: 500}, when_header: 'X A'}",
        "policies.p.when_header: bad header name 'X A'",
    ),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_policies_refusals(case):
    body, message = REFUSED[case]
    found = policy_error(body)
    assert found.startswith("gw.yaml:2: "), found
    assert message in found, found


def test_policies_a_bad_policy_name_is_refused():
    found = error_of("policies:\n  'a b': {type: cors, origins: ['*']}\n")
    assert found.startswith("gw.yaml:2: policies.a b: bad policy name 'a b'")


def test_policies_routes_and_listeners_name_existing_policies():
    text = """
    policies:
      a: {type: cors, origins: ['*']}
      b: {type: fault, abort: {status: 500}}
    upstreams: {u: {targets: ["127.0.0.1:1"]}}
    routes:
      - {name: r0, match: {path: /0}, upstream: u, policies: [a]}
      - name: r1
        match: {path: /1}
        upstream: u
        policies:
          - b
          - x
    """
    assert (
        error_of(text) == "gw.yaml:12: routes[1].policies[1]: no policy named 'x' (policies: a, b)"
    )
    text = """
    listeners:
      - {name: public, bind: ":0"}
      - name: inner
        bind: ":1"
        policies: [nope]
    """
    assert error_of(text) == (
        "gw.yaml:5: listeners[1].policies[0]: no policy named 'nope' (policies: none defined)"
    )


def test_policies_the_same_name_twice_in_a_list_is_refused():
    text = """
    policies: {a: {type: cors, origins: ['*']}}
    routes:
      - {name: r, match: {path: /}, respond: {}, policies: [a, {type: cors, origins: ['*']}, a]}
    """
    assert error_of(text) == (
        "gw.yaml:3: routes[0].policies[2]: policy 'a' is listed twice (also policies[0])"
    )
    text = (
        "policies: {a: {type: cors, origins: ['*']}}\n"
        "listeners: [{name: l, bind: ':1', policies: [a, a]}]"
    )
    assert "listeners[0].policies[1]: policy 'a' is listed twice" in error_of(text)


def test_policies_list_items_must_be_names_or_mappings():
    base = "routes: [{name: r, match: {path: /}, respond: {}, policies: [ITEM]}]"
    assert "routes[0].policies[0]: expected a policy name or a policy mapping, got a list" in (
        error_of(base.replace("ITEM", "[a]"))
    )
    assert "routes[0].policies[0]: bad policy name 'a b'" in error_of(base.replace("ITEM", "'a b'"))
    assert "routes[0].policies[0].type: unknown policy type 'x'" in (
        error_of(base.replace("ITEM", "{type: x}"))
    )
    assert "routes[0].policies: expected a list of policy names or policies" in (
        error_of(base.replace("[ITEM]", "a"))
    )


def test_policies_preserve_host_is_for_upstream_routes_only():
    found = error_of("routes: [{name: r, match: {path: /}, respond: {}, preserve_host: false}]")
    assert found == (
        "gw.yaml:1: routes[0].preserve_host: 'preserve_host' only applies to routes with an "
        "'upstream'"
    )
    found = error_of(
        "upstreams: {u: {targets: ['a:1']}}\n"
        "routes: [{name: r, match: {path: /}, upstream: u, preserve_host: 1}]"
    )
    assert "routes[0].preserve_host: expected true or false" in found


def test_policies_api_documents_join_the_file_ones():
    text = "policies: {a: {type: cors, origins: ['*']}}\n"
    config = validate_dynamic(
        text,
        "gw.yaml",
        policies={"b": {"type": "fault", "abort": {"status": 500}}},
        routes=[{"name": "r", "match": {"path": "/"}, "respond": {}, "policies": ["a", "b"]}],
    )
    assert list(config.policies) == ["a", "b"]
    with pytest.raises(ConfigError) as caught:
        validate_dynamic(text, "gw.yaml", policies={"b": {"type": "fault", "abort": {}}})
    assert (caught.value.file, caught.value.path) == ("<api>", "policies.b.abort.status")


# -- big lists ------------------------------------------------------------------------------------


def _ip_file(count: int) -> str:
    lines = ["policies:", "  office:", "    type: ip_filter", "    allow:"]
    lines += [f"      - 10.{i >> 8 & 255}.{i & 255}.0/24" for i in range(count)]
    lines += [f"      - 2001:db8:{i:x}::/48" for i in range(count // 10)]
    return "\n".join(lines) + "\n"


def test_policies_a_10000_entry_ip_list_loads_whole():
    # (how long it takes is bench/ business: `isekai validate` on big files is timed there)
    config = load_config_text(_ip_file(10_000), "gw.yaml", env={})
    assert len(config.policies["office"].options.allow) == 11_000
    assert config.policies["office"].options.allow[-1] == "2001:db8:3e7::/48"


# -- families from plugins ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    """A made-up third-party family: quotas per key."""

    limit: int = setting("int", "Requests per window.", minimum=1)
    window: float = setting("duration", "The window.", default=60.0)
    keys: tuple[str, ...] = setting(
        "list", "Header names making the key.", default=(), item=item("header_name")
    )


@dataclass(frozen=True)
class QuotaFamily:
    type: str = "quota"
    config: type = QuotaConfig
    family: ClassVar[str] = "quota"

    def policy(self, config):  # never called by the config
        raise AssertionError


@pytest.fixture
def plugins():
    """Registered families are forgotten after the test; entry points are looked up again."""
    saved = dict(policies._plugins), policies._loaded
    yield
    policies._plugins.clear()
    policies._plugins.update(saved[0])
    policies._loaded = saved[1]
    policies._version += 1


def test_policies_a_registered_family_is_read_by_the_same_reader(plugins):
    policies.register_family(QuotaFamily())
    assert "quota" in policies.known_types() and "headers" in policies.known_types()
    assert policies.config_class("quota") is QuotaConfig
    assert isinstance(policies.plugin_family("quota"), QuotaFamily)
    assert policies.plugin_family("cors") is None and policies.config_class("x") is None
    spec = policy("{type: quota, limit: 5, window: 1m, keys: [X-Api-Key], deadline: 1s}")
    assert spec == PolicySpec("quota", QuotaConfig(5, 60.0, ("X-Api-Key",)), "p", 1.0)
    assert "policies.p.limit: must be at least 1, got 0" in policy_error("{type: quota, limit: 0}")
    assert "policies.p.keys[0]: bad header name" in policy_error(
        "{type: quota, limit: 1, keys: ['a b']}"
    )
    assert "allowed keys: type, deadline, limit, window, keys" in policy_error(
        "{type: quota, limit: 1, burst: 2}"
    )
    known = "known types: " + ", ".join(known_types())
    assert "quota" in known
    assert known in policy_error("{type: x}")
    # the published schema knows it too
    schema = jsonschema.document_schema()
    assert {"$ref": "#/$defs/QuotaConfig"} in schema["$defs"]["PolicySpec"]["oneOf"]
    doc = {"policies": {"q": {"type": "quota", "limit": 2}}}
    assert not list(Draft202012Validator(schema).iter_errors(doc))
    policies.unregister_family("quota")
    assert "unknown policy type 'quota'" in policy_error("{type: quota, limit: 5}")


def test_policies_bad_families_are_refused(plugins):
    with pytest.raises(ValueError, match="builtin family"):
        policies.register_family(dataclasses.replace(QuotaFamily(), type="cors"))
    with pytest.raises(ValueError, match="lower-case"):
        policies.register_family(dataclasses.replace(QuotaFamily(), type="Quota"))
    with pytest.raises(ValueError, match="must be a dataclass"):
        policies.register_family(dataclasses.replace(QuotaFamily(), config=dict))

    @dataclass(frozen=True)
    class Bare:
        limit: int = 1

    with pytest.raises(ValueError, match="not declared with"):
        policies.register_family(dataclasses.replace(QuotaFamily(), config=Bare))
    policies.register_family(QuotaFamily())
    with pytest.raises(ValueError, match="already registered"):
        policies.register_family(QuotaFamily())


PLUGIN_MODULE = '''
from dataclasses import dataclass
from isekai.config.meta import setting


@dataclass(frozen=True, slots=True)
class EchoConfig:
    """Echo a header back."""

    header: str = setting("header_name", "The header echoed.")


class Echo:
    type = "echo"
    config = EchoConfig

    @staticmethod
    def policy(config):
        return None


echo = Echo()
clash = type("Clash", (), {"type": "cors", "config": EchoConfig, "policy": staticmethod(print)})()
'''


def test_policies_entry_point_families_load_once_and_bad_ones_are_skipped(
    plugins, tmp_path, monkeypatch, caplog
):
    (tmp_path / "isekai_echo_plugin.py").write_text(PLUGIN_MODULE)
    dist = tmp_path / "isekai_echo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: isekai-echo-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[isekai.policies]\n"
        "echo = isekai_echo_plugin:echo\n"
        "clash = isekai_echo_plugin:clash\n"
        "broken = isekai_echo_plugin_missing:thing\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "isekai_echo_plugin", raising=False)
    policies._loaded = False
    with caplog.at_level(logging.ERROR, logger="isekai.config"):
        assert "echo" in policies.known_types()
        policies.known_types()  # loaded once: nothing logged again
    assert "cors" in policies.known_types()
    spec = policy("{type: echo, header: X-Echo}")
    assert spec.type == "echo" and spec.options.header == "X-Echo"
    assert policies.config_class("cors") is CorsConfig  # the clash did not replace it
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 2, errors
    assert any("'clash'" in e and "builtin family" in e for e in errors)
    assert any("'broken'" in e and "isekai_echo_plugin_missing" in e for e in errors)


# -- reloads --------------------------------------------------------------------------------------


def test_policies_of_listeners_follow_a_reload_while_their_sockets_stay(caplog):
    from isekai.config.reload import keep_running, warn_restart_needed

    running = load(
        """
        policies: {a: {type: cors, origins: ['*']}}
        listeners: [{name: public, bind: ":8080", policies: [a]}, {name: old, bind: ":8081"}]
        """
    )
    new = load(
        """
        policies: {b: {type: fault, abort: {status: 503}}}
        listeners: [{name: public, bind: ":9090", policies: [b]}]
        workers: 2
        """
    )
    kept = keep_running(new, running)
    assert [(lst.name, lst.port, lst.policies) for lst in kept.listeners] == [
        ("public", 8080, ("b",)),
        ("old", 8081, ()),
    ]
    assert kept.workers == running.workers and list(kept.policies) == ["b"]
    warned: dict = {}
    with caplog.at_level(logging.WARNING, logger="isekai.reload"):
        warn_restart_needed(new, running, warned)
    assert "listeners, workers changed" in caplog.text
    caplog.clear()
    same_sockets = load(
        """
        policies: {b: {type: fault, abort: {status: 503}}}
        listeners: [{name: public, bind: ":8080", policies: [b]}, {name: old, bind: ":8081"}]
        """
    )
    with caplog.at_level(logging.WARNING, logger="isekai.reload"):
        warn_restart_needed(same_sockets, running, {})
    assert caplog.text == ""  # a policy change alone needs no restart


def test_policies_whole_config_messages_carry_stored_policies():
    from isekai.config.reload import config_from_message

    message = {
        "type": "config",
        "text": "policies: {a: {type: cors, origins: ['*']}}\n",
        "source": "gw.yaml",
        "routes": [{"name": "r", "match": {"path": "/"}, "respond": {}, "policies": ["a", "b"]}],
        "upstreams": {},
        "policies": {"b": {"type": "fault", "abort": {"status": 500}}},
    }
    config = config_from_message(message)
    assert list(config.policies) == ["a", "b"] and config.routes[0].policies == ("a", "b")
    assert list(config_from_message({**message, "routes": []}).policies) == ["a", "b"]


def test_policies_resolved_for_a_route_on_a_listener():
    config = load(EXAMPLE)
    api, internal = config.routes
    listener = config.listeners[0]
    assert config.resolve_policies(api.policies) == (
        config.policies["web_cors"],
        config.policies["chaos"],
    )
    chain = config.route_policies(internal, listener)
    assert [spec.name for spec in chain] == ["tag", "office", None]
    assert chain[2].type == "fault"
    assert config.route_policies(internal) == chain[1:]
