"""headers family: template compilation, value encoding, edit order (request and response)."""

from __future__ import annotations

import pytest

from isekai._core.families import HeaderEdits, HeadersPolicy, Template, percent_visible
from isekai._core.policy import ResponseHead
from isekai._core.protocol import ProxyRequest
from isekai.policies import BUILDERS
from isekai.policies.headers import compile_edits, compile_template


def test_headers_template_literal_only():
    assert compile_template("plain value") == (("literal", b"plain value"),)
    assert compile_template("") == ()
    assert Template(compile_template("v1")).constant == b"v1"
    assert Template(()).constant == b""


def test_headers_template_placeholders():
    parts = compile_template("ip=${client_ip}; id=${request_id}; r=${route}; u=${param.user_id}")
    assert parts == (
        ("literal", b"ip="),
        ("client_ip", None),
        ("literal", b"; id="),
        ("request_id", None),
        ("literal", b"; r="),
        ("route", None),
        ("literal", b"; u="),
        ("param", "user_id"),
    )
    assert Template(parts).constant is None


def test_headers_template_unknown_placeholders_are_literal():
    assert compile_template("${x}${client_ip}$${route}") == (
        ("literal", b"${x}"),
        ("client_ip", None),
        ("literal", b"$"),
        ("route", None),
    )
    assert compile_template("${param.}") == (("literal", b"${param.}"),)


def test_headers_template_adjacent_placeholders():
    assert compile_template("${route}${route}") == (("route", None), ("route", None))


def test_headers_template_refuses_control_characters():
    with pytest.raises(ValueError):
        Template((("literal", b"a\r\nb"),))


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        (b"abc-123_~.!*", b"abc-123_~.!*"),
        (b"a\r\nb", b"a%0D%0Ab"),
        (b"a b", b"a%20b"),
        (b"\x00\x7f\x80\xff", b"%00%7F%80%FF"),
        ("é".encode(), b"%C3%A9"),
        (b"", b""),
    ],
)
def test_headers_param_values_are_percent_encoded(raw, encoded):
    assert percent_visible(raw) == encoded


def _request(fields, params=None, request_id=b"rid-1"):
    req = ProxyRequest.__new__(ProxyRequest)
    req.method = b"GET"
    req.path = b"/"
    req.headers = [p for name, value in fields for p in (name, b": ", value, b"\r\n")]
    req.params = params
    req.request_id = request_id
    return req


def _fields(req):
    parts = req.headers
    return [(parts[i], parts[i + 2]) for i in range(0, len(parts), 4)]


def test_headers_request_edits_in_order():
    edits = HeaderEdits(
        remove=["X-Drop"],
        rename=[("X-Old", "X-New"), ("X-Set", "X-Was-Set")],
        set=[("X-New", compile_template("set"))],
        add=[("X-Add", compile_template("a")), ("X-New", compile_template("added"))],
    )
    policy = HeadersPolicy(edits, HeaderEdits())
    assert policy.requests and not policy.responses
    req = _request([(b"x-drop", b"1"), (b"X-Old", b"old"), (b"X-DROP", b"2"), (b"Keep", b"k")])
    assert policy.run_request(req) is None
    fields = {(n.lower(), v) for n, v in _fields(req)}
    assert fields == {
        (b"keep", b"k"),
        (b"x-new", b"set"),
        (b"x-add", b"a"),
        (b"x-new", b"added"),
    }


def test_headers_request_param_and_request_id():
    edits = compile_edits(
        type(
            "E",
            (),
            {
                "remove": (),
                "rename": (),
                "set": (("X-User", "u=${param.id}"), ("X-Rid", "${request_id}")),
                "add": (("X-Missing", "[${param.nope}]"),),
            },
        )()
    )
    policy = HeadersPolicy(edits, HeaderEdits())
    req = _request([], params={"id": "a\r\nb é"}, request_id=b"abc-1")
    policy.run_request(req)
    assert dict(_fields(req)) == {
        b"X-User": b"u=a%0D%0Ab%20%C3%A9",
        b"X-Rid": b"abc-1",
        b"X-Missing": b"[]",
    }


def test_headers_response_edits():
    edits = HeaderEdits(
        remove=["server"],
        rename=[("x-internal", "X-Public")],
        set=[("Cache-Control", compile_template("no-store"))],
        add=[("X-Served-By", compile_template("isekai"))],
    )
    policy = HeadersPolicy(HeaderEdits(), edits)
    assert policy.responses and not policy.requests
    head = ResponseHead(
        200,
        [
            b"Server",
            b": ",
            b"nginx",
            b"\r\n",
            b"X-Internal",
            b": ",
            b"7",
            b"\r\n",
            b"cache-control",
            b": ",
            b"max-age=60",
            b"\r\n",
        ],
    )
    policy.run_response(_request([]), head)
    assert sorted(head.headers()) == sorted(
        [("X-Public", "7"), ("Cache-Control", "no-store"), ("X-Served-By", "isekai")]
    )


def test_headers_builder_from_config():
    from types import SimpleNamespace

    empty = SimpleNamespace(add=(), set=(), remove=(), rename=())
    config = SimpleNamespace(
        request=SimpleNamespace(add=(("X-A", "1"),), set=(), remove=("x-b",), rename=()),
        response=empty,
    )
    policy = BUILDERS["headers"](config)
    assert isinstance(policy, HeadersPolicy)
    assert policy.requests and not policy.responses
    assert policy.type_name == "headers"
