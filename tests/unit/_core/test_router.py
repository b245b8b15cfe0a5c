"""Router: unit cases for each rule, plus a differential property test against a brute-force
reference matcher that ranks every matching route by specificity."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import isekai._core.router as router_mod
from isekai._core.router import Router
from isekai.config.units import parse_path_pattern
from isekai.errors import ConfigError, RouteConflictError


def make(*routes):
    r = Router()
    for host, methods, pattern, value in routes:
        r.add(host, methods, parse_path_pattern(pattern), value)
    return r


def test_router_module_is_compiled():
    assert router_mod.__file__.endswith(".so")


def test_router_static_match():
    r = make((None, ("GET",), "/a/b", "ab"), (None, ("GET",), "/a", "a"))
    assert r.match(b"", b"GET", b"/a/b") == ("ab", None)
    assert r.match(b"", b"GET", b"/a") == ("a", None)
    assert r.match(b"", b"GET", b"/a/c") is None
    assert r.match(b"", b"GET", b"/b") is None
    assert len(r) == 2


def test_router_root_pattern():
    r = make((None, None, "/", "root"))
    assert r.match(b"h", b"GET", b"/") == ("root", None)
    assert r.match(b"h", b"GET", b"/x") is None


def test_router_rejects_non_origin_form_paths():
    r = make((None, None, "/*", "all"))
    assert r.match(b"", b"OPTIONS", b"*") is None
    assert r.match(b"", b"GET", b"") is None
    assert r.match(b"", b"GET", b"http://x/") is None


def test_router_param_match():
    r = make((None, ("GET",), "/users/{id}/posts/{post}", 1))
    assert r.match(b"", b"GET", b"/users/42/posts/7") == (1, {"id": "42", "post": "7"})
    assert r.match(b"", b"GET", b"/users//posts/7") is None


def test_router_params_decoded():
    r = make((None, None, "/f/{name}", 1))
    assert r.match(b"", b"GET", b"/f/caf%C3%A9%20x") == (1, {"name": "café x"})
    assert r.match(b"", b"GET", b"/f/%zz%4") == (1, {"name": "%zz%4"})
    assert r.match(b"", b"GET", b"/f/%FF") == (1, {"name": "\ufffd"})
    assert r.match(b"", b"GET", b"/f/a+b") == (1, {"name": "a+b"})


def test_router_matching_uses_raw_bytes():
    r = make((None, None, "/a", 1))
    assert r.match(b"", b"GET", b"/%61") is None


def test_router_wildcard_match():
    r = make((None, None, "/static/*", "s"))
    assert r.match(b"", b"GET", b"/static/x") == ("s", {"*": "x"})
    assert r.match(b"", b"GET", b"/static/x/y/") == ("s", {"*": "x/y/"})
    assert r.match(b"", b"GET", b"/static/") == ("s", {"*": ""})
    assert r.match(b"", b"GET", b"/static/%2Fa") == ("s", {"*": "/a"})
    assert r.match(b"", b"GET", b"/static") is None
    assert r.match(b"", b"GET", b"/staticx") is None


def test_router_wildcard_with_params():
    r = make((None, None, "/u/{id}/*", 1))
    assert r.match(b"", b"GET", b"/u/7/a/b") == (1, {"id": "7", "*": "a/b"})


def test_router_trailing_slash_significant():
    r = make((None, None, "/a/", "slash"), (None, None, "/b", "bare"))
    assert r.match(b"", b"GET", b"/a/") == ("slash", None)
    assert r.match(b"", b"GET", b"/a") is None
    assert r.match(b"", b"GET", b"/b/") is None


def test_router_empty_segments_do_not_collapse():
    r = make((None, None, "/a/b", 1), (None, None, "/a/{x}/c", 2))
    assert r.match(b"", b"GET", b"/a//b") is None
    assert r.match(b"", b"GET", b"//a/b") is None
    assert r.match(b"", b"GET", b"/a//c") is None


def test_router_priority_static_over_param_over_wildcard():
    r = make(
        (None, None, "/u/me", "static"),
        (None, None, "/u/{id}", "param"),
        (None, None, "/u/*", "wild"),
    )
    assert r.match(b"", b"GET", b"/u/me") == ("static", None)
    assert r.match(b"", b"GET", b"/u/7") == ("param", {"id": "7"})
    assert r.match(b"", b"GET", b"/u/7/x") == ("wild", {"*": "7/x"})
    assert r.match(b"", b"GET", b"/u/") == ("wild", {"*": ""})


def test_router_priority_is_leftmost_specificity():
    r = make((None, None, "/{a}/x", "param-first"), (None, None, "/s/{b}", "static-first"))
    assert r.match(b"", b"GET", b"/s/x") == ("static-first", {"b": "x"})


def test_router_backtracking_on_path():
    r = make((None, None, "/a/b/c", 1), (None, None, "/a/{x}/d", 2))
    assert r.match(b"", b"GET", b"/a/b/d") == (2, {"x": "b"})


def test_router_backtracking_on_method():
    r = make((None, ("GET",), "/u/me", "me"), (None, ("POST",), "/u/{id}", "post"))
    assert r.match(b"", b"POST", b"/u/me") == ("post", {"id": "me"})
    assert r.match(b"", b"GET", b"/u/me") == ("me", None)


def test_router_method_specific_beats_any_method():
    r = make((None, None, "/x", "any"), (None, ("POST",), "/x", "post"))
    assert r.match(b"", b"POST", b"/x") == ("post", None)
    assert r.match(b"", b"DELETE", b"/x") == ("any", None)


def test_router_405_allow():
    r = make(
        (None, ("POST", "GET"), "/x", 1),
        (None, ("DELETE",), "/{p}", 2),
        (None, ("PUT",), "/*", 3),
        (None, ("PATCH",), "/y", 4),
    )
    assert r.match(b"", b"OPTIONS", b"/x") == (None, b"DELETE, GET, HEAD, POST, PUT")


def test_router_405_allow_spans_host_groups():
    r = make(("a.com", ("GET",), "/x", 1), ("*.com", ("PUT",), "/x", 2), (None, ("POST",), "/x", 3))
    assert r.match(b"a.com", b"DELETE", b"/x") == (None, b"GET, HEAD, POST, PUT")
    assert r.match(b"b.com", b"DELETE", b"/x") == (None, b"POST, PUT")
    assert r.match(b"", b"DELETE", b"/x") == (None, b"POST")


def test_router_head_implied_by_get():
    r = make((None, ("GET",), "/x", "get"))
    assert r.match(b"", b"HEAD", b"/x") == ("get", None)
    assert r.match(b"", b"POST", b"/x") == (None, b"GET, HEAD")


def test_router_head_routed_separately():
    r = make((None, ("HEAD",), "/x", "head"), (None, ("GET",), "/x", "get"))
    assert r.match(b"", b"HEAD", b"/x") == ("head", None)
    assert r.match(b"", b"GET", b"/x") == ("get", None)
    r = make((None, ("GET",), "/x", "get"), (None, ("HEAD",), "/x", "head"))
    assert r.match(b"", b"HEAD", b"/x") == ("head", None)


def test_router_head_implied_beats_any_method():
    r = make((None, None, "/x", "any"), (None, ("GET",), "/x", "get"))
    assert r.match(b"", b"HEAD", b"/x") == ("get", None)


def test_router_methods_upper_cased_and_deduplicated():
    r = make((None, ("get", "GET"), "/x", 1))
    assert r.match(b"", b"GET", b"/x") == (1, None)
    assert r.match(b"", b"PUT", b"/x") == (None, b"GET, HEAD")


def test_router_host_exact():
    r = make(("api.example.com", None, "/x", "api"))
    assert r.match(b"api.example.com", b"GET", b"/x") == ("api", None)
    assert r.match(b"www.example.com", b"GET", b"/x") is None
    assert r.match(b"", b"GET", b"/x") is None


def test_router_host_wildcard():
    r = make(("*.example.com", None, "/x", "w"))
    assert r.match(b"a.example.com", b"GET", b"/x") == ("w", None)
    assert r.match(b"a.b.example.com", b"GET", b"/x") == ("w", None)
    assert r.match(b"example.com", b"GET", b"/x") is None
    assert r.match(b"aexample.com", b"GET", b"/x") is None


def test_router_host_any():
    r = make((None, None, "/x", "any"))
    assert r.match(b"whatever.org", b"GET", b"/x") == ("any", None)
    assert r.match(b"", b"GET", b"/x") == ("any", None)


def test_router_host_group_order():
    r = make(
        (None, None, "/x", "any"),
        ("*.com", None, "/x", "com"),
        ("*.b.com", None, "/x", "b.com"),
        ("a.b.com", None, "/x", "exact"),
    )
    assert r.match(b"a.b.com", b"GET", b"/x") == ("exact", None)
    assert r.match(b"c.b.com", b"GET", b"/x") == ("b.com", None)
    assert r.match(b"b.com", b"GET", b"/x") == ("com", None)
    assert r.match(b"b.org", b"GET", b"/x") == ("any", None)


def test_router_host_group_beats_path_specificity():
    r = make(("a.com", None, "/*", "host"), (None, None, "/x", "path"))
    assert r.match(b"a.com", b"GET", b"/x") == ("host", {"*": "x"})


def test_router_host_group_falls_through_on_method():
    r = make(("a.com", ("GET",), "/x", "host"), (None, ("POST",), "/x", "any"))
    assert r.match(b"a.com", b"POST", b"/x") == ("any", None)


def test_router_port_stripping():
    r = make(("a.com", None, "/x", 1), ("[::1]", None, "/x", 6))
    assert r.match(b"a.com:8080", b"GET", b"/x") == (1, None)
    assert r.match(b"a.com:", b"GET", b"/x") == (1, None)
    assert r.match(b"a.com.", b"GET", b"/x") == (1, None)
    assert r.match(b"[::1]:8080", b"GET", b"/x") == (6, None)
    assert r.match(b"[::1]", b"GET", b"/x") == (6, None)
    assert r.match(b"[::2]:8080", b"GET", b"/x") is None


def test_router_case_insensitive_host():
    r = make(("API.Example.com", None, "/x", 1), ("*.Example.ORG", None, "/x", 2))
    assert r.match(b"api.EXAMPLE.com", b"GET", b"/x") == (1, None)
    assert r.match(b"A.example.org:1", b"GET", b"/x") == (2, None)


def test_router_case_sensitive_path_and_method():
    r = make((None, ("GET",), "/A", 1))
    assert r.match(b"", b"GET", b"/a") is None
    assert r.match(b"", b"get", b"/A") == (None, b"GET, HEAD")


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((None, ("GET",), "/u/{id}"), (None, ("GET", "POST"), "/u/{name}")),
        ((None, None, "/u/*"), (None, None, "/u/*")),
        (("A.com", ("PUT",), "/x"), ("a.com", ("put",), "/x")),
        (("*.a.com", None, "/"), ("*.A.com", None, "/")),
        ((None, ("HEAD",), "/x"), (None, ("GET", "HEAD"), "/x")),
    ],
)
def test_router_conflict_errors(first, second):
    r = make((*first, 1))
    with pytest.raises(RouteConflictError):
        r.add(second[0], second[1], parse_path_pattern(second[2]), 2)
    assert len(r) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ((None, ("GET",), "/u/{id}"), (None, ("POST",), "/u/{id}")),
        ((None, ("GET",), "/u/{id}"), (None, None, "/u/{id}")),
        ((None, ("GET",), "/u/{id}"), (None, ("HEAD",), "/u/{id}")),
        ((None, None, "/u/*"), (None, None, "/u/{id}")),
        ((None, None, "/u"), (None, None, "/u/")),
        (("a.com", None, "/x"), (None, None, "/x")),
        (("*.a.com", None, "/x"), ("a.com", None, "/x")),
    ],
)
def test_router_non_conflicts(first, second):
    r = make((*first, 1), (*second, 2))
    assert len(r) == 2


def test_router_failed_add_leaves_router_unchanged():
    r = make((None, ("GET",), "/a", 1))
    with pytest.raises(RouteConflictError):
        r.add(None, ("GET",), parse_path_pattern("/a"), 2)
    with pytest.raises(RouteConflictError):
        r.add(None, ("GET",), parse_path_pattern("/a"), 2)
    assert r.match(b"", b"PUT", b"/a") == (None, b"GET, HEAD")
    assert r.match(b"", b"GET", b"/a") == (1, None)


def test_router_conflict_error_is_config_error():
    assert issubclass(RouteConflictError, ConfigError)


@pytest.mark.parametrize(
    "pattern",
    ["", "a", "/a//b", "//", "/a/*/b", "/a*", "/{id}x", "/{}", "/{a}/{a}", "/{*}", "/{a{b}}"],
)
def test_router_bad_patterns(pattern):
    # the one grammar is the config's: the router is given parsed patterns only
    with pytest.raises(ValueError):
        parse_path_pattern(pattern)
    with pytest.raises(TypeError, match="parsed path pattern"):
        Router().add(None, None, pattern, 1)


@pytest.mark.parametrize("host", ["", "*", "a.*.com", "*.", "a.com:80", "[::1", "ä.com", "a..b"])
def test_router_bad_hosts(host):
    with pytest.raises(ConfigError):
        Router().add(host, None, parse_path_pattern("/"), 1)


@pytest.mark.parametrize("methods", [(), ("G ET",), ("",), "GET"])
def test_router_bad_methods(methods):
    with pytest.raises(ConfigError):
        Router().add(None, methods, parse_path_pattern("/"), 1)


def test_router_many_params_limit():
    pattern = "".join(f"/{{p{i}}}" for i in range(32))
    r = make((None, None, pattern, 1))
    path = "".join(f"/{i}" for i in range(32)).encode()
    value, params = r.match(b"", b"GET", path)
    assert params == {f"p{i}": str(i) for i in range(32)}
    with pytest.raises(ValueError, match="more than 32 parameters"):
        parse_path_pattern(pattern + "/{p32}")


def test_router_plain_result_is_reused():
    r = make((None, None, "/a", object()))
    assert r.match(b"", b"GET", b"/a") is r.match(b"", b"GET", b"/a")


def test_router_many_static_siblings():
    r = Router()
    for i in range(200):
        r.add(None, ("GET",), parse_path_pattern(f"/r{i}/{{id}}"), i)
    assert r.match(b"", b"GET", b"/r150/9") == (150, {"id": "9"})
    assert r.match(b"", b"GET", b"/r200/9") is None


# ---------------------------------------------------------------------------------------------
# Differential property test against a brute-force reference


def ref_host_key(host: bytes) -> bytes:
    if host.startswith(b"["):
        i = host.find(b"]")
        h = host if i < 0 else host[: i + 1]
    else:
        h = host.split(b":", 1)[0]
        if h.endswith(b"."):
            h = h[:-1]
    return h.lower()


class RefRouter:
    """Enumerate every route that matches, rank by (host group, per-segment kinds, method)."""

    def __init__(self):
        self.routes = []

    @staticmethod
    def _host(host):
        if host is None:
            return ("any", b"")
        h = host.lower()
        if h.startswith("*."):
            return ("wild", h[1:].encode())
        return ("exact", h.encode())

    @staticmethod
    def _segs(pattern):
        out = []
        for s in pattern[1:].split("/"):
            if s == "*":
                out.append((2, None))
            elif s.startswith("{"):
                out.append((1, s[1:-1]))
            else:
                out.append((0, s.encode()))
        return out

    def add(self, host, methods, pattern, value):
        hk = self._host(host)
        segs = self._segs(pattern)
        shape = tuple((k, v if k == 0 else None) for k, v in segs)
        ms = None if methods is None else frozenset(m.upper().encode() for m in methods)
        for r in self.routes:
            if r["host"] == hk and r["shape"] == shape:
                if (ms is None and r["methods"] is None) or (
                    ms is not None and r["methods"] is not None and ms & r["methods"]
                ):
                    raise RouteConflictError("tie")
        self.routes.append(
            {"host": hk, "shape": shape, "segs": segs, "methods": ms, "value": value}
        )

    def _group_rank(self, route, hkey):
        kind, key = route["host"]
        if kind == "any":
            return (2, 0)
        if kind == "exact":
            return (0, 0) if hkey == key else None
        if hkey.endswith(key) and len(hkey) > len(key):
            return (1, -len(key))
        return None

    @staticmethod
    def _match_path(segs, req):
        params = {}
        if segs[-1][0] == 2:
            if len(req) < len(segs):
                return None
        elif len(req) != len(segs):
            return None
        for i, (kind, v) in enumerate(segs):
            if kind == 2:
                tail = b"/".join(req[i:])
                params["*"] = unquote_to_bytes(tail).decode("utf-8", "replace")
                break
            if kind == 0 and req[i] != v:
                return None
            if kind == 1:
                if req[i] == b"":
                    return None
                params[v] = unquote_to_bytes(req[i]).decode("utf-8", "replace")
        return params

    def _allowed(self, route):
        ms = set(route["methods"])
        if b"GET" in ms:
            ms.add(b"HEAD")
        return ms

    def _method_rank(self, route, method):
        ms = route["methods"]
        if ms is None:
            return 1
        if method in ms:
            return 0
        if method == b"HEAD" and b"GET" in ms:
            for other in self.routes:
                if (
                    other["host"] == route["host"]
                    and other["shape"] == route["shape"]
                    and other["methods"] is not None
                    and b"HEAD" in other["methods"]
                ):
                    return None
            return 0
        return None

    def match(self, host, method, path):
        if not path.startswith(b"/"):
            return None
        req = path[1:].split(b"/")
        hkey = ref_host_key(host)
        best = None
        allow = set()
        path_hit = False
        for r in self.routes:
            g = self._group_rank(r, hkey)
            if g is None:
                continue
            params = self._match_path(r["segs"], req)
            if params is None:
                continue
            path_hit = True
            mr = self._method_rank(r, method)
            if mr is None:
                allow |= self._allowed(r)
                continue
            key = (g, tuple(k for k, _ in r["segs"]), mr)
            if best is None or key < best[0]:
                best = (key, r, params)
        if best is not None:
            _, r, params = best
            return (r["value"], params or None)
        if path_hit:
            return (None, b", ".join(sorted(allow)))
        return None


ROUTE_HOSTS = [None, None, "x.com", "*.x.com", "*.y.x.com", "Y.X.com"]
ROUTE_METHODS = [None, ("GET",), ("HEAD",), ("POST",), ("GET", "POST"), ("get",), ("GET", "HEAD")]
REQ_HOSTS = [
    b"",
    b"x.com",
    b"X.COM:8080",
    b"a.x.com",
    b"y.x.com",
    b"a.y.x.com",
    b"x.com.",
    b"z.com",
]
REQ_METHODS = [b"GET", b"HEAD", b"POST", b"PUT"]
REQ_SEGS = ["a", "b", "c", "", "%61", "caf%C3%A9", "%FF"]


@st.composite
def patterns(draw):
    body = draw(st.lists(st.sampled_from(["a", "b", "{}"]), max_size=3))
    names = iter(draw(st.permutations(["p", "q", "r"])))
    body = ["{" + next(names) + "}" if s == "{}" else s for s in body]
    end = draw(st.sampled_from(["", "/", "/*"]))
    if not body:
        return "/" if end != "/*" else "/*"
    return "/" + "/".join(body) + end


routes_strategy = st.lists(
    st.tuples(st.sampled_from(ROUTE_HOSTS), st.sampled_from(ROUTE_METHODS), patterns()),
    max_size=12,
)


@st.composite
def request_paths(draw, routes):
    if routes and draw(st.booleans()):
        # Derive a path from a route so that matches are common.
        pattern = draw(st.sampled_from(routes))[2]
        segs = []
        for s in pattern[1:].split("/"):
            if s.startswith("{"):
                segs.append(draw(st.sampled_from(REQ_SEGS)))
            elif s == "*":
                segs.extend(draw(st.lists(st.sampled_from(REQ_SEGS), min_size=1, max_size=3)))
            else:
                segs.append(s)
        return ("/" + "/".join(segs)).encode()
    segs = draw(st.lists(st.sampled_from(REQ_SEGS), min_size=1, max_size=5))
    return ("/" + "/".join(segs)).encode()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routes=routes_strategy, data=st.data())
def test_router_matches_reference(routes, data):
    router = Router()
    ref = RefRouter()
    added = []
    for i, (host, methods, pattern) in enumerate(routes):
        try:
            ref.add(host, methods, pattern, i)
        except RouteConflictError:
            with pytest.raises(RouteConflictError):
                router.add(host, methods, parse_path_pattern(pattern), i)
            continue
        router.add(host, methods, parse_path_pattern(pattern), i)
        added.append((host, methods, pattern))
    assert len(router) == len(added)
    for _ in range(10):
        host = data.draw(st.sampled_from(REQ_HOSTS))
        method = data.draw(st.sampled_from(REQ_METHODS))
        path = data.draw(request_paths(added))
        assert router.match(host, method, path) == ref.match(host, method, path), (
            host,
            method,
            path,
        )


def test_router_remove_returns_the_value_and_frees_the_path():
    r = make(
        (None, ("GET",), "/a/{id}", "get"),
        (None, ("POST",), "/a/{id}", "post"),
        (None, None, "/b/*", "b"),
    )
    assert r.remove(None, ("GET",), parse_path_pattern("/a/{other}")) == "get"
    assert r.match(b"", b"GET", b"/a/1") == (None, b"POST")
    assert r.match(b"", b"HEAD", b"/a/1") == (None, b"POST")  # the implied HEAD went too
    assert r.remove(None, ("POST",), parse_path_pattern("/a/{id}")) == "post"
    assert r.match(b"", b"POST", b"/a/1") is None  # 404, not an empty 405
    assert r.remove(None, None, parse_path_pattern("/b/*")) == "b"
    assert r.match(b"", b"GET", b"/b/x") is None
    assert len(r) == 0
    r.add(None, ("GET",), parse_path_pattern("/a/{id}"), "again")
    assert r.match(b"", b"GET", b"/a/1") == ("again", {"id": "1"})


@pytest.mark.parametrize(
    "host, methods, pattern",
    [
        (None, ("GET",), "/missing"),
        ("x.com", ("GET", "POST"), "/a"),  # added for x.com with GET only
        ("x.com", ("POST",), "/a"),
        ("x.com", None, "/a"),
        ("*.x.com", ("GET",), "/a"),
    ],
)
def test_router_remove_of_what_was_not_added_is_key_error(host, methods, pattern):
    r = make(("x.com", ("GET",), "/a", "a"))
    with pytest.raises(KeyError):
        r.remove(host, methods, parse_path_pattern(pattern))
    assert r.match(b"x.com", b"GET", b"/a") == ("a", None) and len(r) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(routes=routes_strategy, data=st.data())
def test_router_remove_equals_never_added(routes, data):
    # removing routes leaves a router that answers every request like one built without them
    router, added = Router(), []
    for i, (host, methods, pattern) in enumerate(routes):
        try:
            router.add(host, methods, parse_path_pattern(pattern), i)
        except RouteConflictError:
            continue
        added.append((host, methods, pattern, i))
    removed = data.draw(st.sets(st.sampled_from(range(len(added))))) if added else set()
    for k in removed:
        host, methods, pattern, i = added[k]
        assert router.remove(host, methods, parse_path_pattern(pattern)) == i
    kept = [route for k, route in enumerate(added) if k not in removed]
    fresh = make(*kept)
    assert len(router) == len(fresh)
    for _ in range(10):
        host = data.draw(st.sampled_from(REQ_HOSTS))
        method = data.draw(st.sampled_from(REQ_METHODS))
        path = data.draw(request_paths([(h, m, p) for h, m, p, _ in added]))
        assert router.match(host, method, path) == fresh.match(host, method, path)


@settings(max_examples=300, deadline=None)
@given(host=st.binary(max_size=20), path=st.binary(max_size=30), method=st.binary(max_size=8))
def test_router_arbitrary_bytes_never_crash(host, path, method):
    r = make(
        ("a.com", ("GET",), "/a/{x}", 1), ("*.b", None, "/*", 2), (None, ("POST",), "/{y}/", 3)
    )
    result = r.match(host, method, path)
    assert result is None or isinstance(result, tuple)


def test_router_none_host_is_empty_host():
    r = make(("a.com", None, "/x", 1), (None, None, "/x", 2))
    assert r.match(None, b"GET", b"/x") == (2, None)


def test_router_none_path_or_method_is_type_error():
    r = make((None, None, "/x", 1))
    with pytest.raises(TypeError):
        r.match(b"", None, b"/x")
    with pytest.raises(TypeError):
        r.match(b"", b"GET", None)
    with pytest.raises(TypeError):
        r.match(b"", b"GET", "/x")
