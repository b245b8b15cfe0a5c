"""The request path end to end: a real gateway process in front of a real upstream."""

from __future__ import annotations

import hashlib
import http.client
import json

import pytest

from tests.support.client import connect, json_body, read_response, request
from tests.support.upstream import payload_digest


def config(port: int, extra_routes: str = "") -> str:
    return f"""
    listeners: [{{name: public, bind: "127.0.0.1:0"}}]
    upstreams:
      app: {{targets: ["127.0.0.1:{port}"], read_timeout: 5s}}
      dead: {{targets: ["127.0.0.1:1"]}}
    routes:
      - {{name: api, match: {{path: "/api/*"}}, upstream: app, strip_prefix: /api}}
      - {{name: users, match: {{path: "/users/{{id}}", methods: [GET]}}, upstream: app,
          rewrite: "/echo/people/{{id}}"}}
      - {{name: slow, match: {{path: "/slow/*"}}, upstream: app, timeout: 300ms}}
      - {{name: dead, match: {{path: "/dead"}}, upstream: dead}}
      - {{name: hello, match: {{path: "/hello"}}, respond: {{status: 200, body: "hi there"}}}}
      - {{name: info, match: {{path: "/info", host: "api.example.com"}},
          respond: {{status: 201, json: {{ok: true, n: 3}}, headers: {{x-mock: "1"}}}}}}
    {extra_routes}
    """


@pytest.fixture
def gw(start_gateway, upstream):
    return start_gateway(config(upstream.port))


def client(gw) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", gw.port, timeout=15)


def test_proxy_get_preserves_query_and_sets_forwarding_headers(gw, upstream):
    c = client(gw)
    c.request("GET", "/api/echo/x?a=1&b=%20two", headers={"X-Forwarded-For": "10.9.8.7"})
    resp = c.getresponse()
    seen = json.loads(resp.read())
    assert resp.status == 200
    assert seen["target"] == "/echo/x?a=1&b=%20two"
    headers = {k.lower(): v for k, v in seen["headers"]}
    # The client is not in trusted_proxies, so its X-Forwarded-For is replaced, not extended.
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == f"127.0.0.1:{gw.port}"
    assert headers["host"] == f"127.0.0.1:{upstream.port}"
    rid = resp.getheader("x-request-id")
    assert rid and headers["x-request-id"] == rid


def test_proxy_keeps_client_request_id(gw, upstream):
    c = client(gw)
    c.request("GET", "/api/echo", headers={"X-Request-ID": "abc-123"})
    resp = c.getresponse()
    seen = json.loads(resp.read())
    assert resp.getheader("x-request-id") == "abc-123"
    assert dict((k.lower(), v) for k, v in seen["headers"])["x-request-id"] == "abc-123"


def test_proxy_post_body_reaches_upstream_intact(gw, upstream):
    body = bytes(range(256)) * 100
    c = client(gw)
    c.request("POST", "/api/echo/post", body=body, headers={"Content-Type": "application/x-test"})
    seen = json.loads(c.getresponse().read())
    assert seen["method"] == "POST"
    assert seen["body_length"] == len(body)
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_proxy_chunked_request_body_is_streamed_chunked(gw, upstream):
    pieces = [b"a" * 1000, b"b" * 70000, b"c"]
    c = client(gw)
    c.request("PUT", "/api/echo/chunks", body=iter(pieces), encode_chunked=True)
    seen = json.loads(c.getresponse().read())
    headers = {k.lower(): v for k, v in seen["headers"]}
    assert headers["transfer-encoding"] == "chunked"
    assert seen["body_sha256"] == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_proxy_chunked_response_relayed_chunked(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"GET /api/chunked/200000 HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body, _ = read_response(sock)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert hashlib.sha256(body).hexdigest() == payload_digest(200000)


def test_proxy_close_delimited_response_becomes_chunked_for_http11(gw):
    status, headers, body = request(gw.port, b"GET /api/close/100000 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert hashlib.sha256(body).hexdigest() == payload_digest(100000)


def test_proxy_close_delimited_response_closes_http10_client(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"GET /api/close/5000 HTTP/1.0\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert len(body) == 5000


def test_proxy_reuses_upstream_connections(gw, upstream):
    c = client(gw)
    for i in range(1000):
        c.request("GET", f"/api/status/200?i={i}")
        resp = c.getresponse()
        resp.read()
        assert resp.status == 200
    assert len(upstream.requests) == 1000
    assert upstream.connections <= 2


def test_proxy_pipelined_requests_answered_in_order(gw, upstream):
    raw = (
        b"".join(b"GET /api/echo/%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(5))
        + b"GET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    with connect(gw.port) as sock:
        sock.sendall(raw)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    bodies = []
    rest = data
    while rest:
        head, _, rest = rest.partition(b"\r\n\r\n")
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        bodies.append(rest[:length])
        rest = rest[length:]
    assert [json.loads(b)["target"] for b in bodies[:5]] == [f"/echo/{i}" for i in range(5)]
    assert bodies[5] == b"hi there"


def test_proxy_strips_hop_by_hop_headers_both_ways(gw, upstream):
    raw = (
        b"GET /api/hop HTTP/1.1\r\nHost: t\r\nConnection: keep-alive, X-Drop-Me\r\n"
        b"X-Drop-Me: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\n"
        b"X-Keep: 2\r\n\r\n"
    )
    status, headers, body = request(gw.port, raw)
    assert status == 200 and body == b"ok"
    assert "x-secret" not in headers and "keep-alive" not in headers
    assert "proxy-connection" not in headers
    assert headers["x-visible"] == "yes"
    sent = {k.lower() for k, _ in upstream.requests[-1]["headers"]}
    assert "x-keep" in sent
    assert not sent & {"x-drop-me", "keep-alive", "te", "proxy-connection", "connection"}


def test_proxy_unknown_path_is_json_404(gw):
    status, headers, body = request(gw.port, b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 404
    doc = json_body(body)
    assert doc["success"] is False and doc["error"]
    assert doc["request_id"] == headers["x-request-id"]


def test_proxy_wrong_method_is_405_with_allow(gw):
    status, headers, body = request(gw.port, b"DELETE /users/7 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"
    assert json_body(body)["success"] is False


def test_proxy_refused_upstream_is_502(gw):
    status, _, body = request(gw.port, b"GET /dead HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 502
    assert "connect" in json_body(body)["error"]


@pytest.mark.parametrize("path", ["/api/malformed", "/api/reset"])
def test_proxy_broken_upstream_response_is_502(gw, path):
    status, _, body = request(gw.port, b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % path.encode())
    assert status == 502
    assert json_body(body)["success"] is False


def test_proxy_upstream_timeout_is_504(gw):
    status, _, body = request(gw.port, b"GET /slow/3000 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 504
    assert "timed out" in json_body(body)["error"]


def test_proxy_response_cut_short_aborts_client_connection(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"GET /api/partial HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head.lower()
    assert len(body) < 1000  # the client sees a short body and a closed connection


def test_proxy_head_has_no_body_and_connection_stays_usable(gw, upstream):
    c = client(gw)
    c.request("HEAD", "/api/bytes/5000")
    resp = c.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-length") == "5000"
    assert resp.read() == b""
    for _ in range(3):
        c.request("GET", "/api/bytes/10")
        resp = c.getresponse()
        assert resp.read() == b"0123456789"
    assert upstream.connections == 1


@pytest.mark.parametrize("code", [204, 304])
def test_proxy_bodyless_statuses(gw, code):
    c = client(gw)
    c.request("GET", f"/api/status/{code}")
    resp = c.getresponse()
    assert resp.status == code
    assert resp.read() == b""
    c.request("GET", "/hello")
    assert c.getresponse().read() == b"hi there"


def test_proxy_expect_100_continue(gw, upstream):
    with connect(gw.port) as sock:
        sock.sendall(
            b"POST /api/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        first = sock.recv(25)
        assert first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"hello")
        status, _, body, _ = read_response(sock, method="POST")
    assert status == 200
    assert json_body(body)["body_length"] == 5


def test_proxy_rewrite_uses_path_params(gw, upstream):
    status, _, body = request(gw.port, b"GET /users/42?full=1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status == 200
    assert json_body(body)["target"] == "/echo/people/42?full=1"


def test_direct_response_text_and_json(gw):
    status, headers, body = request(gw.port, b"GET /hello HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (status, body) == (200, b"hi there")
    assert headers["content-type"].startswith("text/plain")
    assert headers["x-request-id"]
    status, headers, body = request(
        gw.port, b"GET /info HTTP/1.1\r\nHost: API.example.com:8080\r\n\r\n"
    )
    assert status == 201
    assert json_body(body) == {"ok": True, "n": 3}
    assert headers["x-mock"] == "1"
    assert headers["content-type"] == "application/json"
    status, _, _ = request(gw.port, b"GET /info HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
    assert status == 404


def test_direct_response_head_has_no_body(gw):
    status, headers, body = request(
        gw.port, b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n", method="HEAD"
    )
    assert status == 200 and body == b""
    assert headers["content-length"] == "8"


def test_malformed_request_is_400_and_closed(gw):
    with connect(gw.port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    assert b"connection: close" in data.lower()


def test_proxy_rewrite_keeps_decoded_params_encoded_on_the_wire(gw, upstream):
    # a param is percent-decoded for the route; the rewritten path must not carry the CR LF
    status, _, body = request(
        gw.port, b"GET /users/a%0D%0AX-Injected:%20yes%20HTTP%2F1.1 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert status == 200
    target = json_body(body)["target"]
    assert target == "/echo/people/a%0D%0AX-Injected:%20yes%20HTTP/1.1"
    assert "x-injected" not in json.dumps(json_body(body)).lower().replace("x-injected:%20", "")
