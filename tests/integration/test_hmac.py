"""The ``hmac`` policy through a real gateway process in front of a real echo upstream:
requests signed with RFC 9421 HTTP Message Signatures by the bundled signer (and by hand),
every accept path and every refusal (status, JSON envelope, challenge headers), replays with
the in-memory store and with Redis across two workers, and a Redis that dies mid-test."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import shutil
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isekai.policies.hmac_signing import sign_request
from tests.support.gateway import Gateway, connection_owners, wait_for
from tests.support.observe import free_port
from tests.support.services import unavailable
from tests.support.upstream import Upstream

SECRET = "s3cret-for-the-acme-partner-0123"
WIDE_SECRET = bytes(range(64))  # the hmac-sha512 key, written as hex in the config
OTHER = "a-different-secret-of-enough-length"


def config_text(upstream_port: int, policy: str, *, workers: int = 1) -> str:
    """A gateway with the policy ``signed`` (YAML mapping lines) on the route ``/echo/*``."""
    return (
        f"workers: {workers}\n"
        'listeners: [{name: main, bind: "127.0.0.1:0"}]\n'
        "consumers:\n"
        "  - {name: acme, tier: premium, tags: [partner]}\n"
        f'upstreams: {{echo: {{targets: ["127.0.0.1:{upstream_port}"]}}}}\n'
        "policies:\n"
        "  signed:\n" + textwrap.indent(textwrap.dedent(policy), "    ") + "routes:\n"
        '  - {name: signed, match: {path: "/echo/*"}, upstream: echo, policies: [signed]}\n'
        '  - {name: open, match: {path: "/open/*"}, upstream: echo}\n'
        "admin: {enabled: false}\n"
    )


MEMORY_POLICY = f"""\
type: hmac
keys:
  - {{id: acme-1, secret: "${{HMAC_SECRET}}", consumer: acme}}
  - {{id: wide, secret: "{WIDE_SECRET.hex()}", encoding: hex, algorithm: hmac-sha512}}
skew: 5m
nonce_ttl: 10m
max_body: 64KiB
upstream_headers: {{claims: {{keyid: X-Key-Id}}}}
"""


@pytest.fixture
def run_gateway(tmp_path):
    started: list[Gateway] = []

    def start(text: str, name: str = "gateway.yaml") -> Gateway:
        path = tmp_path / name
        path.write_text(text)
        gw = Gateway(path, env={"HMAC_SECRET": SECRET})
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One gateway with the in-memory policy for the tests that only send requests (every
    request signs with a fresh nonce, so they do not disturb each other)."""
    with Upstream() as upstream:
        path = tmp_path_factory.mktemp("hmac") / "gateway.yaml"
        path.write_text(config_text(upstream.port, MEMORY_POLICY))
        gw = Gateway(path, env={"HMAC_SECRET": SECRET})
        try:
            yield gw
        finally:
            gw.stop()


def send(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    chunked: bool = False,
    host: str = "127.0.0.1",
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        if chunked:
            conn.putrequest(method, path)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            data = body or b""
            for i in range(0, len(data), 1000):
                piece = data[i : i + 1000]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def signed(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    headers: dict[str, str] | None = None,
    keyid: str = "acme-1",
    secret: bytes | str = SECRET,
    host: str = "127.0.0.1",
    **options,
) -> dict[str, str]:
    """Headers of a request signed by the bundled signer (plus ``headers``)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    out = dict(headers or {})
    out.update(
        sign_request(
            method,
            f"http://{authority}{path}",
            out,
            body,
            keyid=keyid,
            secret=secret,
            **options,
        )
    )
    return out


def refused(response: tuple[int, dict[str, str], bytes], status: int = 401) -> str:
    """The error message of a refusal, after checking its status, envelope and challenge."""
    got, headers, body = response
    assert got == status, (got, body)
    data = json.loads(body)
    assert data["success"] is False and data["policy"] == "hmac" and data["request_id"]
    if status == 401:
        assert headers["www-authenticate"] == 'Signature realm="isekai"'
        assert headers["accept-signature"].startswith('sig1=("@method" "@request-target"')
    return data["error"]


def echoed(response: tuple[int, dict[str, str], bytes]) -> dict:
    status, _, body = response
    assert status == 200, body
    return json.loads(body)


def upstream_header(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


# -- accepted -----------------------------------------------------------------------------------


def test_get_without_body_is_accepted_and_identified(gateway):
    headers = signed(gateway.port, "GET", "/echo/items?page=2")
    record = echoed(send(gateway.port, "GET", "/echo/items?page=2", headers))
    assert record["target"] == "/echo/items?page=2"
    assert upstream_header(record, "X-Consumer-ID") == ["acme"]
    assert upstream_header(record, "X-Key-Id") == ["acme-1"]
    # the signature fields go upstream as they came (the upstream may verify again)
    assert upstream_header(record, "Signature") == [headers["Signature"]]


def test_post_with_body_and_content_digest(gateway):
    body = json.dumps({"order": 42, "items": ["a", "b"]}).encode()
    headers = signed(
        gateway.port, "POST", "/echo/orders", body, headers={"Content-Type": "application/json"}
    )
    assert headers["Content-Digest"].startswith("sha-256=:")
    record = echoed(send(gateway.port, "POST", "/echo/orders", headers, body))
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_body_is_read_and_checked(gateway):
    body = bytes(range(256)) * 40  # 10 KiB in chunks of 1000
    headers = signed(gateway.port, "PUT", "/echo/blob", body)
    record = echoed(send(gateway.port, "PUT", "/echo/blob", headers, body, chunked=True))
    assert record["body_length"] == len(body)
    # and a chunked body that differs from its digest is refused
    headers = signed(gateway.port, "PUT", "/echo/blob", body)
    message = refused(
        send(gateway.port, "PUT", "/echo/blob", headers, body[:-1] + b"!", chunked=True)
    )
    assert "Content-Digest does not match" in message


def test_query_parameters_covered_one_by_one(gateway):
    path = "/echo/search?q=caf%C3%A9+au+lait&limit=10&empty="
    components = ["@method", "@path", "@query", '@query-param;name="q"', "@query-param;name=empty"]
    headers = signed(gateway.port, "GET", path, components=components)
    assert '"@query-param";name="q"' in headers["Signature-Input"]
    echoed(send(gateway.port, "GET", path, headers))
    # the same signature on another value of q does not verify
    other = path.replace("lait", "lai")
    assert "does not match" in refused(send(gateway.port, "GET", other, headers))


def test_sha512_key_and_sha512_digest(gateway):
    body = b"x" * 5000
    headers = signed(
        gateway.port,
        "POST",
        "/echo/wide",
        body,
        keyid="wide",
        secret=WIDE_SECRET,
        alg="hmac-sha512",
        digest="sha-512",
    )
    assert headers["Content-Digest"].startswith("sha-512=:")
    record = echoed(send(gateway.port, "POST", "/echo/wide", headers, body))
    assert upstream_header(record, "X-Key-Id") == ["wide"]
    assert upstream_header(record, "X-Consumer-ID") == []  # this key has no consumer


def test_a_plain_python_client_without_the_bundled_signer(gateway):
    """What docs/hmac.md shows: the signature base written out by hand."""
    port = gateway.port
    body = b'{"hello": "world"}'
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    created = int(time.time())
    params = (
        f'("@method" "@target-uri" "content-digest");created={created};keyid="acme-1"'
        f';nonce="n-{created}"'
    )
    base = (
        '"@method": POST\n'
        f'"@target-uri": http://127.0.0.1:{port}/echo/hello\n'
        f'"content-digest": {digest}\n'
        f'"@signature-params": {params}'
    )
    mac = base64.b64encode(hmac.new(SECRET.encode(), base.encode(), hashlib.sha256).digest())
    headers = {
        "Content-Digest": digest,
        "Signature-Input": f"sig1={params}",
        "Signature": f"sig1=:{mac.decode()}:",
    }
    echoed(send(port, "POST", "/echo/hello", headers, body))


def test_ipv6_client(run_gateway, upstream):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"::1 cannot be bound here: {exc}")
    text = config_text(upstream.port, MEMORY_POLICY).replace("127.0.0.1:0", "[::1]:0")
    gw = run_gateway(text)
    headers = signed(gw.port, "GET", "/echo/six", host="::1")
    record = echoed(send(gw.port, "GET", "/echo/six", headers, host="::1"))
    assert upstream_header(record, "X-Consumer-ID") == ["acme"]
    assert "replay" in refused(send(gw.port, "GET", "/echo/six", headers, host="::1"))


# -- refused ------------------------------------------------------------------------------------


def test_unsigned_and_half_signed_requests(gateway):
    port = gateway.port
    assert "not signed" in refused(send(port, "GET", "/echo/x"))
    headers = signed(port, "GET", "/echo/x")
    only_input = {"Signature-Input": headers["Signature-Input"]}
    assert refused(send(port, "GET", "/echo/x", only_input)) == "Signature is missing"
    only_sig = {"Signature": headers["Signature"]}
    assert refused(send(port, "GET", "/echo/x", only_sig)) == "Signature-Input is missing"
    # a route without the policy is not affected
    assert send(port, "GET", "/open/x")[0] == 200


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("Signature-Input", "sig1=(", "Signature-Input is malformed"),
        ("Signature-Input", 'sig1=("@method";created=1', "Signature-Input is malformed"),
        ("Signature-Input", "SIG=()", "Signature-Input is malformed"),
        ("Signature-Input", "sig1=(), ", "Signature-Input is malformed"),
        ("Signature-Input", "sig1=1", "is not an inner list"),
        ("Signature-Input", 'sig1=("@method"), sig1=()', "repeated"),
        ("Signature", "sig1=abc", "is not a byte sequence"),
        ("Signature", "sig1=:not base64!:", "Signature is malformed"),
        ("Signature", "sig2=:AAAA:", "has no member 'sig1'"),
    ],
)
def test_malformed_structured_fields(gateway, field, value, expected):
    headers = signed(gateway.port, "GET", "/echo/x", label="sig1")
    headers[field] = value
    assert expected in refused(send(gateway.port, "GET", "/echo/x", headers))


def test_unknown_keyid_wrong_secret_and_alg_mismatch(gateway):
    port = gateway.port
    headers = signed(port, "GET", "/echo/x", keyid="nobody")
    assert refused(send(port, "GET", "/echo/x", headers)) == "unknown keyid 'nobody'"
    headers = signed(port, "GET", "/echo/x", secret=OTHER)
    assert "does not match" in refused(send(port, "GET", "/echo/x", headers))
    # alg is the key's, never the request's: hmac-sha512 named for an hmac-sha256 key
    headers = signed(port, "GET", "/echo/x", alg="hmac-sha512")
    assert "is not the algorithm of key 'acme-1'" in refused(send(port, "GET", "/echo/x", headers))
    # and without alg, a MAC made with the other algorithm does not verify
    headers = signed(port, "GET", "/echo/x", keyid="wide", secret=WIDE_SECRET, alg=None)
    assert "does not match" in refused(send(port, "GET", "/echo/x", headers))


def test_required_components_must_be_covered(gateway):
    port = gateway.port
    headers = signed(port, "GET", "/echo/x", components=["@method", "@path"])
    message = refused(send(port, "GET", "/echo/x", headers))
    assert message == "the signature must cover: @request-target"
    # @path and @query together bind the request target
    headers = signed(port, "GET", "/echo/x?a=1", components=["@method", "@path", "@query"])
    echoed(send(port, "GET", "/echo/x?a=1", headers))
    # a body needs its digest covered
    body = b"payload"
    headers = signed(port, "POST", "/echo/x", body, components=["@method", "@target-uri"])
    assert "content-digest" in refused(send(port, "POST", "/echo/x", headers, body))
    # unsupported component parameters and derived components are refused by name
    headers = signed(port, "GET", "/echo/x")
    headers["Signature-Input"] = headers["Signature-Input"].replace(
        '"@target-uri"', '"@target-uri" "date";sf'
    )
    assert "not supported" in refused(send(port, "GET", "/echo/x", headers))
    headers["Signature-Input"] = headers["Signature-Input"].replace('"date";sf', '"@status"')
    assert "unsupported derived component '@status'" in refused(
        send(port, "GET", "/echo/x", headers)
    )


def test_created_and_expires_checked_against_skew(gateway):
    port = gateway.port
    now = int(time.time())
    headers = signed(port, "GET", "/echo/x", created=now - 301)
    assert "too old" in refused(send(port, "GET", "/echo/x", headers))
    headers = signed(port, "GET", "/echo/x", created=now + 400)
    assert "in the future" in refused(send(port, "GET", "/echo/x", headers))
    headers = signed(port, "GET", "/echo/x", created=now - 10, expires=now - 5)
    assert refused(send(port, "GET", "/echo/x", headers)) == "the signature has expired"
    # within skew either way is fine
    headers = signed(port, "GET", "/echo/x", created=now + 60, expires=now + 120)
    echoed(send(port, "GET", "/echo/x", headers))


def test_missing_parameters(gateway):
    port = gateway.port
    headers = signed(port, "GET", "/echo/x")
    text = headers["Signature-Input"]
    for name in ("created", "keyid", "nonce"):
        start = text.index(f";{name}=")
        end = text.find(";", start + 1)
        headers["Signature-Input"] = text[:start] + (text[end:] if end > 0 else "")
        message = refused(send(port, "GET", "/echo/x", headers))
        assert message == f"the signature has no {name} parameter"


def test_digest_mismatch_missing_digest_and_body_too_large(gateway):
    port = gateway.port
    body = b"the real body"
    headers = signed(port, "POST", "/echo/x", body)
    message = refused(send(port, "POST", "/echo/x", headers, b"the fake body"))
    assert message == "Content-Digest does not match the body"
    # a body sent without any Content-Digest (and one not covering it)
    headers = signed(port, "POST", "/echo/x", components=["@method", "@target-uri"])
    assert "content-digest" in refused(send(port, "POST", "/echo/x", headers, body))
    # past max_body (64 KiB): 413 before any signature work
    big = b"z" * (65 * 1024)
    headers = signed(port, "POST", "/echo/x", big)
    status, _, payload = send(port, "POST", "/echo/x", headers, big)
    assert status == 413, payload


def test_the_same_signed_request_twice_is_a_replay(gateway):
    port = gateway.port
    body = b"pay 10 EUR"
    headers = signed(port, "POST", "/echo/pay", body)
    echoed(send(port, "POST", "/echo/pay", headers, body))
    message = refused(send(port, "POST", "/echo/pay", headers, body))
    assert message == "the signature's nonce was used before (replay)"
    # the same nonce under another key is another nonce
    headers = signed(port, "GET", "/echo/x", nonce="shared-nonce")
    echoed(send(port, "GET", "/echo/x", headers))
    headers = signed(
        port,
        "GET",
        "/echo/x",
        nonce="shared-nonce",
        keyid="wide",
        secret=WIDE_SECRET,
        alg="hmac-sha512",
    )
    echoed(send(port, "GET", "/echo/x", headers))


GARBAGE = st.text(
    alphabet=st.sampled_from('sig1=()";:,*?-_ abcAZ09+/\\\t@éx'), min_size=0, max_size=80
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(signature_input=GARBAGE, signature=GARBAGE)
def test_garbage_signature_fields_never_cause_500(gateway, signature_input, signature):
    headers = {"Signature-Input": signature_input, "Signature": signature}
    try:
        headers_bytes = {
            k: v.encode("latin-1", "replace").decode("latin-1") for k, v in headers.items()
        }
        status, _, body = send(gateway.port, "GET", "/echo/fuzz", headers_bytes)
    except (ValueError, http.client.HTTPException):
        return  # http.client refused to send it (a control character)
    assert status in (400, 401), body
    if status == 401:
        assert json.loads(body)["policy"] == "hmac"


# -- Redis: shared nonces across workers, and a Redis that goes away ----------------------------


def redis_policy(url: str, prefix: str) -> str:
    return f"""\
type: hmac
secret: "${{HMAC_SECRET}}"
keyid: acme-1
consumer: acme
nonce_store: redis
redis_url: "{url}"
redis_prefix: "{prefix}"
store_timeout: 500ms
"""


def connection_to_worker(gw: Gateway, wanted: int | None, avoid: int | None = None):
    """An open connection to the gateway held by worker ``wanted`` (any worker but ``avoid``
    when None) and that worker's pid; a bounded number of tries."""
    workers = gw.workers()
    for _ in range(100):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
        conn.connect()
        local_port = conn.sock.getsockname()[1]
        owner = None
        owners: dict[int, int] = {}
        for _ in range(100):
            owners = connection_owners(workers, gw.port)
            if local_port in owners:
                break
            time.sleep(0.02)
        owner = owners.get(local_port)
        if owner is not None and owner != avoid and wanted in (None, owner):
            return conn, owner
        conn.close()
    raise AssertionError(f"no connection landed on worker {wanted or 'but ' + str(avoid)}")


def send_on(conn, method: str, path: str, headers: dict[str, str]):
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def test_replay_to_another_worker_is_refused_with_redis(run_gateway, upstream, require_service):
    url = require_service("redis")
    prefix = f"isekai:test:{time.time_ns()}:"
    gw = run_gateway(config_text(upstream.port, redis_policy(url, prefix), workers=2))
    assert wait_for(lambda: len(gw.workers()) == 2, 10)
    first, first_pid = connection_to_worker(gw, None)
    second, second_pid = connection_to_worker(gw, None, avoid=first_pid)
    try:
        assert first_pid != second_pid
        headers = signed(gw.port, "POST", "/echo/pay", b"10 EUR")
        first.request("POST", "/echo/pay", body=b"10 EUR", headers=headers)
        response = first.getresponse()
        assert response.status == 200, response.read()
        response.read()
        # the very same request, fresh, on the other worker's connection
        second.request("POST", "/echo/pay", body=b"10 EUR", headers=headers)
        response = second.getresponse()
        replay = (
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
        assert refused(replay) == "the signature's nonce was used before (replay)"
    finally:
        first.close()
        second.close()


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    server = shutil.which("redis-server")
    if server is None:
        unavailable("redis-server is not installed (the test starts a throwaway one)")
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    if not wait_for(answers, 10):
        proc.kill()
        proc.wait(5)
        raise RuntimeError("redis-server did not start")
    return proc


def test_redis_down_answers_503_and_recovers(run_gateway, upstream, tmp_path):
    port = free_port()
    redis = start_redis(port, tmp_path)
    try:
        url = f"redis://127.0.0.1:{port}/0"
        gw = run_gateway(config_text(upstream.port, redis_policy(url, "isekai:down:"), workers=2))
        headers = signed(gw.port, "GET", "/echo/a")
        echoed(send(gw.port, "GET", "/echo/a", headers))
        assert "replay" in refused(send(gw.port, "GET", "/echo/a", headers))
        redis.kill()
        redis.wait(5)
        for i in range(4):  # both workers, on their own connections: 503, never 500
            headers = signed(gw.port, "GET", f"/echo/down{i}")
            message = refused(send(gw.port, "GET", f"/echo/down{i}", headers), 503)
            assert message == "the nonce store is unavailable; try again"
        # a forged request is still a 401 (the signature is checked before the store)
        headers = signed(gw.port, "GET", "/echo/forged", secret=OTHER)
        assert "does not match" in refused(send(gw.port, "GET", "/echo/forged", headers))
        # the same port again: the client reconnects by itself
        redis = start_redis(port, tmp_path)

        def accepted() -> bool:
            fresh = signed(gw.port, "GET", "/echo/back")
            return send(gw.port, "GET", "/echo/back", fresh)[0] == 200

        assert wait_for(accepted, 10, 0.2)
    finally:
        redis.kill()
        redis.wait(5)


def test_redis_down_with_on_store_error_allow(run_gateway, upstream):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    policy = redis_policy(url, "isekai:allow:") + "on_store_error: allow\n"
    gw = run_gateway(config_text(upstream.port, policy))
    headers = signed(gw.port, "GET", "/echo/a")
    record = echoed(send(gw.port, "GET", "/echo/a", headers))
    assert upstream_header(record, "X-Consumer-ID") == ["acme"]
    assert "isekai serving" in gw.output()


def test_memory_store_warns_with_several_workers(run_gateway, upstream):
    gw = run_gateway(config_text(upstream.port, MEMORY_POLICY, workers=2))
    assert gw.wait_for_log(r"nonce_store: memory with 2 workers", 10)


def test_isekai_sign_command_signs_for_the_gateway(gateway, capsys, monkeypatch, tmp_path):
    from isekai.cli import main

    monkeypatch.setenv("PARTNER_SECRET", SECRET)
    url = f"http://127.0.0.1:{gateway.port}/echo/cli?x=1"
    args = ["sign", "POST", url, "--keyid", "acme-1", "--secret-env", "PARTNER_SECRET"]
    assert main([*args, "--data", "hello", "-H", "Content-Type: text/plain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = dict(line.split(": ", 1) for line in lines)
    assert set(headers) == {"Content-Digest", "Signature-Input", "Signature"}
    headers["Content-Type"] = "text/plain"
    record = echoed(send(gateway.port, "POST", "/echo/cli?x=1", headers, b"hello"))
    assert upstream_header(record, "X-Consumer-ID") == ["acme"]
    # usage errors are exit code 2 with a message, never a traceback
    monkeypatch.delenv("PARTNER_SECRET")
    assert main(args) == 2
    assert "set $PARTNER_SECRET" in capsys.readouterr().err
    (tmp_path / "secret").write_text("not hex")
    bad = ["sign", "GET", url, "--keyid", "k", "--secret-file", str(tmp_path / "secret")]
    assert main([*bad, "--encoding", "hex"]) == 2
    assert "not valid hex" in capsys.readouterr().err
