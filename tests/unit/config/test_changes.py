"""config.changes: one change checked against an index gives what validating the whole
candidate config gives, on random sequences of changes (the full path is the reference)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isekai.config.changes import Change, ConfigIndex, apply_changes
from isekai.config.loader import file_documents, validate_dynamic
from isekai.errors import ConfigError, RouteConflictError

FILE = """\
upstreams:
  users: {targets: ["127.0.0.1:9001"]}
policies:
  tag: {type: headers, request: {set: {X-Gateway: isekai}}}
listeners: [{name: public, bind: ":0", policies: [tag]}]
routes:
  - {name: file-route, match: {path: /file}, upstream: users}
  - {name: ping, match: {path: /ping, methods: [GET]}, respond: {body: pong}}
"""

ROUTE_NAMES = ["a", "b", "c", "d"]
UPSTREAM_NAMES = ["app", "api", "users2"]
POLICY_NAMES = ["cors", "chaos", "tag2"]

route_docs = st.fixed_dictionaries(
    {
        "match": st.fixed_dictionaries(
            {
                "path": st.sampled_from(
                    ["/x", "/x/{id}", "/x/{other}", "/y/*", "/ping", "/file", "x"]
                )
            },
            optional={
                "methods": st.sampled_from([["GET"], ["POST"], ["GET", "POST"]]),
                "host": st.sampled_from(["a.example", "*.example"]),
            },
        ),
        "upstream": st.sampled_from(["users", "app", "api", "missing"]),
    },
    optional={
        "timeout": st.sampled_from(["1s", "0", "soon"]),
        "policies": st.lists(
            st.one_of(
                st.sampled_from(["tag", *POLICY_NAMES, "missing"]),
                st.just({"type": "fault", "delay": {"duration": "1s"}}),
                st.just({"type": "nope"}),
            ),
            max_size=3,
        ),
    },
)
policy_docs = st.sampled_from(
    [
        {"type": "cors", "origins": ["https://a.example"]},
        {"type": "cors", "origins": ["*"], "credentials": True},
        {"type": "fault", "abort": {"status": 503}, "deadline": "2s"},
        {"type": "ip_filter", "deny": ["10.0.0.0/8"]},
        {"type": "ip_filter"},
        {"type": "headers", "response": {"remove": ["Server"]}},
        {"type": "unknown"},
        {"origins": ["*"]},
    ]
)
upstream_docs = st.fixed_dictionaries(
    {"targets": st.sampled_from([["127.0.0.1:9000"], ["127.0.0.1:9000", "127.0.0.1:9002"], []])},
    optional={"max_connections": st.sampled_from([1, 0, 10])},
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("route"), st.sampled_from(ROUTE_NAMES), route_docs),
        st.tuples(st.just("route"), st.sampled_from(ROUTE_NAMES), st.none()),
        st.tuples(st.just("upstream"), st.sampled_from(UPSTREAM_NAMES), upstream_docs),
        st.tuples(st.just("upstream"), st.sampled_from(UPSTREAM_NAMES), st.none()),
        st.tuples(st.just("policy"), st.sampled_from(POLICY_NAMES), policy_docs),
        st.tuples(st.just("policy"), st.sampled_from(POLICY_NAMES), st.none()),
    ),
    max_size=25,
)


def _strip(config):
    # the index field is a position at load time; everything else must be equal
    routes = tuple(dataclasses.replace(r, index=0) for r in config.routes)
    return routes, dict(config.upstreams), list(config.policies.items())


def _full(stored, kind, name, doc):
    # the candidate as a whole-config validation sees it: the changed route placed last
    routes = [d for n, d in stored["route"].items() if not (kind == "route" and n == name)]
    named = {key: dict(stored[key]) for key in ("upstream", "policy")}
    if kind == "route" and doc is not None:
        routes.append({**doc, "name": name})
    elif kind in named:
        if doc is None:
            named[kind].pop(name, None)
        else:
            named[kind][name] = doc
    return validate_dynamic(
        FILE, "gw.yaml", routes=routes, upstreams=named["upstream"], policies=named["policy"]
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_changes_match_whole_config_validation(ops):
    base = validate_dynamic(FILE, "gw.yaml")
    file_routes = [doc["name"] for doc in file_documents(FILE, "gw.yaml")[0]]
    index = ConfigIndex(base, file_routes)
    stored: dict[str, dict[str, dict]] = {"route": {}, "upstream": {}, "policy": {}}
    for kind, name, doc in ops:
        if doc is None and name not in stored[kind]:
            continue  # the API answers 404 before validating
        try:
            expected = _full(stored, kind, name, doc)
        except ConfigError as exc:
            expected = exc
        try:
            payload = {**doc, "name": name} if kind == "route" and doc is not None else doc
            change = index.prepare(kind, name, payload)
        except ConfigError as exc:
            assert isinstance(expected, ConfigError), (kind, name, doc, exc)
            assert type(exc) is type(expected)
            assert (exc.path, exc.message, exc.file) == (
                expected.path,
                expected.message,
                expected.file,
            )
            continue
        assert not isinstance(expected, ConfigError), (kind, name, doc, expected)
        before = index.config
        config = index.commit([change])
        assert _strip(config) == _strip(expected)
        assert _strip(apply_changes(before, [change])) == _strip(expected)  # master, workers
        table = stored[kind]
        if doc is None:
            del table[name]
        elif kind == "route":
            table.pop(name, None)  # a changed route goes last, in the index as in the candidate
            table[name] = {**doc, "name": name}
        else:
            table[name] = doc


def test_changes_route_conflict_names_the_other_route_and_changes_nothing():
    index = ConfigIndex(validate_dynamic(FILE, "gw.yaml"), ["file-route", "ping"])
    doc = {"name": "dup", "match": {"path": "/file"}, "upstream": "users"}
    with pytest.raises(RouteConflictError) as caught:
        index.prepare("route", "dup", doc)
    assert caught.value.path == "routes[2].match"
    assert caught.value.message == "same host, path and methods as routes[0] ('file-route')"
    assert [r.name for r in index.config.routes] == ["file-route", "ping"]


def test_changes_deleting_an_upstream_in_use_names_the_route():
    index = ConfigIndex(validate_dynamic(FILE, "gw.yaml"), ["file-route", "ping"])
    up = index.prepare("upstream", "app", {"targets": ["127.0.0.1:9000"]})
    index.commit([up])
    index.commit(
        [index.prepare("route", "r", {"name": "r", "match": {"path": "/r"}, "upstream": "app"})]
    )
    with pytest.raises(ConfigError) as caught:
        index.prepare("upstream", "app", None)
    assert caught.value.path == "routes[2].upstream"
    assert "no upstream named 'app' (upstreams: users)" in caught.value.message
    index.commit([index.prepare("route", "r", None)])
    index.commit([index.prepare("upstream", "app", None)])
    assert list(index.config.upstreams) == ["users"]


def test_changes_bad_upstream_name_is_refused_like_a_file_key():
    index = ConfigIndex(validate_dynamic(FILE, "gw.yaml"))
    with pytest.raises(ConfigError, match="bad upstream name"):
        index.prepare("upstream", "no spaces", {"targets": ["127.0.0.1:1"]})


def test_changes_apply_changes_keeps_places_and_appends_new_routes():
    config = validate_dynamic(FILE, "gw.yaml")
    index = ConfigIndex(config)
    put = index.prepare(
        "route", "ping", {"name": "ping", "match": {"path": "/pong"}, "respond": {}}
    )
    new = index.prepare("route", "z", {"name": "z", "match": {"path": "/z"}, "respond": {}})
    changed = apply_changes(config, [put, new, Change("route", "file-route", None)])
    assert [r.name for r in changed.routes] == ["ping", "z"]
    assert changed.routes[0].match.path == "/pong"
    assert config.routes[1].match.path == "/ping"  # the original is untouched


def test_changes_deleting_a_policy_in_use_names_the_first_user():
    index = ConfigIndex(validate_dynamic(FILE, "gw.yaml"), ["file-route", "ping"])
    index.commit([index.prepare("policy", "cors", {"type": "cors", "origins": ["*"]})])
    assert index.config.policies["cors"].name == "cors"
    route = {"name": "r", "match": {"path": "/r"}, "upstream": "users", "policies": ["tag", "cors"]}
    index.commit([index.prepare("route", "r", route)])
    with pytest.raises(ConfigError) as caught:
        index.prepare("policy", "cors", None)
    assert (caught.value.path, caught.value.file) == ("routes[2].policies[1]", "<api>")
    assert caught.value.message == "no policy named 'cors' (policies: tag)"
    with pytest.raises(ConfigError) as caught:
        index.prepare("policy", "tag", None)  # a file listener uses it first
    assert caught.value.path == "listeners[0].policies[0]"
    index.commit([index.prepare("route", "r", None)])
    index.commit([index.prepare("policy", "cors", None)])
    assert list(index.config.policies) == ["tag"]


def test_changes_route_naming_a_missing_policy_is_refused_as_the_loader_does():
    index = ConfigIndex(validate_dynamic(FILE, "gw.yaml"), ["file-route", "ping"])
    route = {"name": "r", "match": {"path": "/r"}, "respond": {}, "policies": ["tag", "nope"]}
    with pytest.raises(ConfigError) as caught:
        index.prepare("route", "r", route)
    assert caught.value.path == "routes[2].policies[1]"
    assert caught.value.message == "no policy named 'nope' (policies: tag)"


def test_changes_policy_documents_are_read_by_the_loader():
    index = ConfigIndex(validate_dynamic(FILE, "gw.yaml"))
    with pytest.raises(ConfigError) as caught:
        index.prepare("policy", "p", {"type": "fault", "abort": {"status": 700}})
    assert caught.value.path == "policies.p.abort.status"
    with pytest.raises(ConfigError, match="bad policy name"):
        index.prepare("policy", "no spaces", {"type": "fault", "abort": {"status": 500}})
    change = index.prepare("policy", "p", {"type": "fault", "abort": {"status": 500}})
    assert change.item.type == "fault" and change.item.name == "p"
    assert apply_changes(index.config, [change]).policies["p"] is change.item
