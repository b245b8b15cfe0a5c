"""cors family: origin compilation and matching, preflight answers, response fields, Vary."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from isekai._core.families import CorsPolicy
from isekai._core.policy import ResponseHead
from isekai._core.protocol import ProxyRequest
from isekai.policies import BUILDERS
from isekai.policies.cors import compile_origins


def cors(origins=("https://app.example.com",), **kw):
    values = {
        "origins": tuple(origins),
        "methods": ("GET", "HEAD", "POST"),
        "headers": (),
        "expose_headers": (),
        "credentials": False,
        "max_age": None,
    }
    values.update(kw)
    return BUILDERS["cors"](SimpleNamespace(**values))


def request(method=b"GET", **fields):
    req = ProxyRequest.__new__(ProxyRequest)
    req.method = method
    req.path = b"/"
    req.headers = []
    for name, value in fields.items():
        req.headers += [name.replace("_", "-").encode(), b": ", value.encode(), b"\r\n"]
    return req


def preflight(method="GET", headers=None, origin="https://app.example.com"):
    fields = {"Origin": origin, "Access_Control_Request_Method": method}
    if headers is not None:
        fields["Access_Control_Request_Headers"] = headers
    return request(b"OPTIONS", **fields)


def fields(answer):
    return {(n.decode() if isinstance(n, bytes) else n).lower(): v for n, v in answer.headers}


def test_cors_compile_origins():
    assert compile_origins(["*"]) == (True, frozenset(), ())
    assert compile_origins(["https://App.Example.com/", "*.example.org", "https://*.x.net"]) == (
        False,
        frozenset({"https://app.example.com"}),
        ((None, ".example.org"), ("https", ".x.net")),
    )
    with pytest.raises(ValueError):
        compile_origins(["https://a*.example.org"])


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("HTTPS://APP.EXAMPLE.COM", True),
        ("http://app.example.com", False),
        ("https://app.example.com:8443", False),
        ("https://a.example.org", True),
        ("http://a.example.org", True),
        ("https://a.b.example.org", True),
        ("https://example.org", False),
        ("https://.example.org", False),
        ("https://a_b.example.org", False),
        ("https://evil.com/.example.org", False),
        ("https://evilexample.org", False),
        ("https://s.secure.net", True),
        ("http://s.secure.net", False),
        ("null", False),
        ("", False),
    ],
)
def test_cors_origin_matching(origin, allowed):
    policy = cors(["https://app.example.com", "*.example.org", "https://*.secure.net"])
    assert policy.origin_allowed(origin) is allowed


def test_cors_star_allows_any_origin():
    policy = cors(["*"])
    assert policy.origin_allowed("https://anything.test") and policy.origin_allowed("null")


def test_cors_preflight_allowed_echoes_origin():
    policy = cors(
        headers=("X-Token", "Content-Type"), credentials=True, max_age=600.0, methods=("GET",)
    )
    answer = policy.run_request(preflight("GET", "x-token, content-type"))
    assert answer.status == 204 and answer.body == b""
    assert fields(answer) == {
        "access-control-allow-origin": b"https://app.example.com",
        "access-control-allow-methods": b"GET",
        "access-control-allow-headers": b"X-Token, Content-Type",
        "access-control-allow-credentials": b"true",
        "access-control-max-age": b"600",
        "vary": b"Origin",
    }


def test_cors_preflight_star_is_prebuilt_without_vary():
    policy = cors(["*"])
    first = policy.run_request(preflight("POST", origin="https://x.test"))
    second = policy.run_request(preflight("POST", origin="https://y.test"))
    assert first is second
    assert fields(first)["access-control-allow-origin"] == b"*"
    assert "vary" not in fields(first) and "access-control-allow-credentials" not in fields(first)


@pytest.mark.parametrize(
    ("req", "error"),
    [
        (preflight(origin="https://evil.test"), "origin not allowed"),
        (preflight("DELETE"), "method not allowed"),
        (preflight("GET", "x-secret"), "header not allowed"),
        (preflight("GET", "x-token, x-secret"), "header not allowed"),
    ],
)
def test_cors_preflight_refused_403(req, error):
    answer = cors(headers=("X-Token",)).run_request(req)
    assert answer.status == 403
    body = json.loads(answer.body)
    assert body["success"] is False and error in body["error"]
    assert fields(answer)["content-type"] == b"application/json"
    assert fields(answer)["vary"] == b"Origin"


def test_cors_wildcard_methods_and_headers_echo_the_request():
    policy = cors(methods=("*",), headers=("*",))
    answer = policy.run_request(preflight("PURGE", "x-anything"))
    assert answer.status == 204
    assert fields(answer)["access-control-allow-methods"] == b"PURGE"
    assert fields(answer)["access-control-allow-headers"] == b"x-anything"


def test_cors_non_preflight_requests_continue():
    policy = cors()
    assert policy.run_request(request(b"GET", Origin="https://app.example.com")) is None
    assert policy.run_request(request(b"OPTIONS", Origin="https://app.example.com")) is None
    assert policy.run_request(request(b"OPTIONS", Access_Control_Request_Method="GET")) is None


def head(*pairs):
    return ResponseHead(200, [p for n, v in pairs for p in (n, b": ", v, b"\r\n")])


def test_cors_response_allowed_origin():
    policy = cors(credentials=True, expose_headers=("X-Total", "X-Page"))
    h = head((b"Content-Type", b"text/plain"))
    policy.run_response(request(Origin="https://app.example.com"), h)
    assert dict(h.headers()) == {
        "Content-Type": "text/plain",
        "vary": "Origin",
        "access-control-allow-origin": "https://app.example.com",
        "access-control-allow-credentials": "true",
        "access-control-expose-headers": "X-Total, X-Page",
    }


def test_cors_response_disallowed_origin_passes_without_cors_fields():
    policy = cors()
    h = head()
    policy.run_response(request(Origin="https://evil.test"), h)
    assert h.headers() == [("vary", "Origin")]
    h = head()
    policy.run_response(request(), h)  # no Origin: the answer still depends on it
    assert h.headers() == [("vary", "Origin")]


def test_cors_response_vary_merged():
    policy = cors()
    h = head((b"Vary", b"Accept-Encoding"), (b"vary", b"Accept"))
    policy.run_response(request(Origin="https://app.example.com"), h)
    assert h.headers()[:2] == [("Vary", "Accept-Encoding, Origin"), ("vary", "Accept")]
    for existing in (b"origin", b"Accept, Origin", b"*"):
        h = head((b"Vary", existing))
        policy.run_response(request(Origin="https://app.example.com"), h)
        assert [v for n, v in h.headers() if n.lower() == "vary"] == [existing.decode()]


def test_cors_response_star_has_no_vary():
    policy = cors(["*"])
    h = head()
    policy.run_response(request(Origin="https://x.test"), h)
    assert h.headers() == [("access-control-allow-origin", "*")]
    h = head()
    policy.run_response(request(), h)
    assert h.headers() == []


def test_cors_response_replaces_upstream_allow_origin():
    policy = cors()
    h = head((b"Access-Control-Allow-Origin", b"*"))
    policy.run_response(request(Origin="https://app.example.com"), h)
    assert [v for n, v in h.headers() if n.lower() == "access-control-allow-origin"] == [
        "https://app.example.com"
    ]


def test_cors_builder():
    policy = cors()
    assert isinstance(policy, CorsPolicy)
    assert policy.requests and policy.responses and not policy.is_async
    assert policy.type_name == "cors"
