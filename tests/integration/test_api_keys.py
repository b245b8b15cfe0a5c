"""The ``api_key`` policy through a real gateway in front of a real upstream: every accept and
refusal path (status, JSON error, challenge), the header and query forms, hide_credentials,
the identity headers sent upstream, IPv6 clients; keys made, rotated and revoked through the
admin API (shown once, stored hashed, effective on every worker within a second), and their
usage counts."""

from __future__ import annotations

import http.client
import json
import time

import pytest

PEPPER = "test-pepper-0123456789abcdef"
ACME_KEY = "acme-yaml-key-0123456789"
OLD_KEY = "expired-yaml-key-0123456789"
SOON_KEY = "future-yaml-key-0123456789"
BETA_KEY = "beta-yaml-key-0123456789"


def call(
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One GET; (status, lower-case headers, body). Reuses ``conn`` when given."""
    own = conn is None
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        if own:
            conn.close()


def upstream_saw(body: bytes) -> tuple[str, dict[str, list[str]]]:
    """(target, headers by lower-case name) of the request the echo upstream answered."""
    record = json.loads(body)
    headers: dict[str, list[str]] = {}
    for name, value in record["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return record["target"], headers


def yaml_config(upstream_port: int, extra: str = "") -> str:
    future = time.time() + 3600
    return f"""
workers: 1
security: {{api_key_pepper: "{PEPPER}"}}
listeners:
  - {{name: public, bind: "127.0.0.1:0"}}
  - {{name: v6, bind: "[::1]:0"}}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
policies:
  keys: {{type: api_key}}
  keys_q: {{type: api_key, header: X-Key, query: api_key, realm: partners}}
  keys_shown: {{type: api_key, hide_credentials: false,
               upstream_headers: {{consumer: X-Who}}}}
consumers:
  - name: acme
    tier: premium
    tags: [partner]
    keys:
      - {{id: main, key: "{ACME_KEY}"}}
      - {{id: old, key: "{OLD_KEY}", expires_at: 1000}}
      - {{id: soon, key: "{SOON_KEY}", expires_at: {future}}}
  - name: beta
    keys: [{{id: b1, key: "{BETA_KEY}"}}]
  - {{name: nokeys}}
routes:
  - {{name: keyed, match: {{path: /k}}, upstream: app, policies: [keys]}}
  - {{name: query, match: {{path: /q}}, upstream: app, policies: [keys_q]}}
  - {{name: shown, match: {{path: /s}}, upstream: app, policies: [keys_shown]}}
  - {{name: open, match: {{path: /open}}, upstream: app}}
{extra}
"""


@pytest.fixture
def keyed(start_gateway, upstream):
    return start_gateway(yaml_config(upstream.port))


def check_refusal(status, headers, body, message_part: str, realm: str = "isekai") -> dict:
    assert status == 401, body
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["success"] is False
    assert error["policy"] == "api_key"
    assert message_part in error["error"]
    assert error["request_id"] == headers["x-request-id"]
    challenge = headers["www-authenticate"]
    assert challenge.startswith(f'ApiKey realm="{realm}"'), challenge
    return error


def test_api_keys_header_key_is_accepted_and_identity_goes_upstream(keyed):
    status, _, body = call(keyed.port, "/k?a=1", {"X-API-Key": ACME_KEY})
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert target == "/k?a=1"
    assert "x-api-key" not in seen  # hide_credentials (default)
    assert seen["x-consumer-id"] == ["acme"]
    # another consumer's key resolves to that consumer
    status, _, body = call(keyed.port, "/k", {"X-API-Key": BETA_KEY})
    assert status == 200
    assert upstream_saw(body)[1]["x-consumer-id"] == ["beta"]
    # a key that expires later works now
    assert call(keyed.port, "/k", {"X-API-Key": SOON_KEY})[0] == 200


def test_api_keys_client_sent_consumer_header_is_stripped(keyed):
    status, _, body = call(keyed.port, "/k", {"X-API-Key": BETA_KEY, "X-Consumer-ID": "acme"})
    assert status == 200
    assert upstream_saw(body)[1]["x-consumer-id"] == ["beta"]
    # also on a route without any credential policy: nobody can claim an identity
    status, _, body = call(keyed.port, "/open", {"X-Consumer-ID": "acme", "X-Who": "acme"})
    assert status == 200
    seen = upstream_saw(body)[1]
    assert "x-consumer-id" not in seen and "x-who" not in seen


def test_api_keys_missing_key_is_401_with_a_challenge(keyed):
    status, headers, body = call(keyed.port, "/k")
    check_refusal(status, headers, body, "an API key is required: send it in the X-API-Key header")
    assert headers["www-authenticate"] == 'ApiKey realm="isekai", header="X-API-Key"'
    # an empty header is no key
    status, headers, body = call(keyed.port, "/k", {"X-API-Key": ""})
    check_refusal(status, headers, body, "an API key is required")


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key-at-all-0000",  # unknown
        OLD_KEY,  # expired
        ACME_KEY + "x",  # almost
        ACME_KEY.upper(),
        "x" * 4000,  # long
        "\u00e9\u00e8",  # latin-1 bytes on the wire
        " ",
    ],
)
def test_api_keys_unknown_and_expired_keys_get_one_answer(keyed, key):
    status, headers, body = call(keyed.port, "/k", {"X-API-Key": key.encode("latin-1")})
    if key.strip() == "":
        check_refusal(status, headers, body, "an API key is required")
        return
    error = check_refusal(
        status, headers, body, "the API key is not valid (unknown, expired or revoked)"
    )
    assert error["error"] == "the API key is not valid (unknown, expired or revoked)"
    assert headers["www-authenticate"] == (
        'ApiKey realm="isekai", header="X-API-Key", error="invalid_key"'
    )


def test_api_keys_query_parameter_form_and_its_removal(keyed):
    # the configured header still works, and is removed
    status, _, body = call(keyed.port, "/q?x=1", {"X-Key": ACME_KEY})
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert target == "/q?x=1" and "x-key" not in seen
    # in the query: accepted, and the parameter is taken out (the others stay, in order)
    status, _, body = call(keyed.port, f"/q?x=1&api_key={ACME_KEY}&y=2")
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert target == "/q?x=1&y=2"
    assert seen["x-consumer-id"] == ["acme"]
    status, _, body = call(keyed.port, f"/q?api_key={BETA_KEY}")
    assert status == 200
    assert upstream_saw(body)[0] == "/q"
    # percent-encoded key
    encoded = ACME_KEY.replace("-", "%2D")
    assert call(keyed.port, f"/q?api_key={encoded}")[0] == 200
    # refusals name the query parameter and the realm
    status, headers, body = call(keyed.port, "/q?api_key=")
    check_refusal(
        status,
        headers,
        body,
        "send it in the X-Key header or the api_key query parameter",
        realm="partners",
    )
    assert headers["www-authenticate"] == (
        'ApiKey realm="partners", header="X-Key", query="api_key"'
    )
    status, headers, body = call(keyed.port, f"/q?api_key={OLD_KEY}")
    check_refusal(status, headers, body, "not valid", realm="partners")
    # the default policy does not read the query
    status, headers, body = call(keyed.port, f"/k?api_key={ACME_KEY}")
    check_refusal(status, headers, body, "an API key is required")


def test_api_keys_hide_credentials_false_passes_the_key_on(keyed):
    status, _, body = call(keyed.port, "/s", {"X-API-Key": ACME_KEY, "X-Who": "forged"})
    assert status == 200
    _, seen = upstream_saw(body)
    assert seen["x-api-key"] == [ACME_KEY]
    assert seen["x-who"] == ["acme"]  # the policy's own identity header, not the client's
    assert "x-consumer-id" not in seen


def test_api_keys_ipv6_client(keyed):
    port = keyed.ports["v6"]
    status, _, body = call(port, "/k", {"X-API-Key": ACME_KEY}, host="::1")
    assert status == 200, body
    assert upstream_saw(body)[1]["x-consumer-id"] == ["acme"]
    status, headers, body = call(port, "/k", {"X-API-Key": "nope-nope-nope-nope"}, host="::1")
    check_refusal(status, headers, body, "not valid")
    status, headers, body = call(port, "/k", host="::1")
    check_refusal(status, headers, body, "required")


def test_api_keys_refusals_are_counted_by_reason_in_metrics(start_gateway, upstream):
    from tests.support.observe import free_port, scrape, value

    metrics_port = free_port()
    extra = f"observability: {{metrics: {{bind: '127.0.0.1:{metrics_port}'}}}}"
    gw = start_gateway(yaml_config(upstream.port, extra))
    call(gw.port, "/k")
    call(gw.port, "/k", {"X-API-Key": "unknown-key-unknown-key"})
    call(gw.port, "/k", {"X-API-Key": "unknown-key-unknown-key-2"})
    for _ in range(3):
        call(gw.port, "/k", {"X-API-Key": OLD_KEY})
    assert call(gw.port, "/k", {"X-API-Key": ACME_KEY})[0] == 200
    samples = scrape(metrics_port)
    assert value(samples, "isekai_api_key_refusals_total", reason="missing") == 1
    assert value(samples, "isekai_api_key_refusals_total", reason="unknown") == 2
    assert value(samples, "isekai_api_key_refusals_total", reason="expired") == 3


def test_api_keys_a_bad_policy_is_a_located_config_error(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.yaml"
    path.write_text("policies:\n  keys: {type: api_key, query: 'a b'}\n")
    done = subprocess.run(
        [sys.executable, "-m", "isekai", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "bad.yaml:2" in done.stderr + done.stdout
    assert "policies.keys.query: not a query parameter name" in done.stderr + done.stdout


# -- keys made through the admin API ---------------------------------------------------------------

ADMIN_ENV = {"ISEKAI_ADMIN_USERNAME": "root", "ISEKAI_ADMIN_PASSWORD": "api-keys-password-1"}


def managed_yaml(upstream_port: int, store: str, workers: int = 2, pepper: str = PEPPER) -> str:
    return f"""
workers: {workers}
security: {{api_key_pepper: "{pepper}"}}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "api-keys-secret-api-keys-secret-0123"}}
store: {{url: "{store}"}}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
policies:
  keys: {{type: api_key}}
consumers:
  - name: filed
    keys: [{{id: f1, key: "{ACME_KEY}"}}]
routes:
  - {{name: keyed, match: {{path: /k}}, upstream: app, policies: [keys]}}
"""


class AdminClient:
    """A logged-in admin API client of one gateway: (status, body, headers) per call."""

    def __init__(self, gw) -> None:
        found = gw.wait_for_log(r"admin API on http://(\S+):(\d+)", timeout=20)
        assert found, gw.output()
        self.host, self.port = found.group(1), int(found.group(2))
        status, body, _ = self.call(
            "POST",
            "/api/auth/login",
            {
                "username": ADMIN_ENV["ISEKAI_ADMIN_USERNAME"],
                "password": ADMIN_ENV["ISEKAI_ADMIN_PASSWORD"],
            },
            token=None,
        )
        assert status == 200, body
        self.token = body["data"]["token"]

    def call(self, method: str, path: str, body=None, token: str | None | bool = True):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        headers = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if token is True:
            token = self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            data = None if body is None else json.dumps(body)
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return (
                response.status,
                json.loads(raw),
                {k.lower(): v for k, v in response.getheaders()},
            )
        finally:
            conn.close()


def start_managed(
    tmp_path, upstream_port: int, *, workers: int = 2, name: str = "gw.yaml", store: str = ""
):
    from tests.support.gateway import Gateway

    path = tmp_path / name
    store = store or f"sqlite:///{tmp_path / 'store.db'}"
    path.write_text(managed_yaml(upstream_port, store, workers))
    return Gateway(path, env=ADMIN_ENV, startup_timeout=30)


@pytest.fixture
def managed(tmp_path, upstream):
    gw = start_managed(tmp_path, upstream.port)
    try:
        admin = AdminClient(gw)
        status, body, _ = admin.call("POST", "/api/consumers", {"name": "acme", "tier": "gold"})
        assert status == 201, body
        yield gw, admin
    finally:
        gw.stop()


def eventually(predicate, timeout: float = 5.0) -> bool:
    from tests.support.gateway import wait_for

    return wait_for(predicate, timeout=timeout, interval=0.02)


def status_with(port: int, key: str) -> int:
    return call(port, "/k", {"X-API-Key": key})[0]


def make_key(admin: AdminClient, consumer: str = "acme", **body) -> dict:
    status, answer, headers = admin.call("POST", f"/api/consumers/{consumer}/keys", body)
    assert status == 201, answer
    assert headers["cache-control"] == "no-store"
    return answer["data"]


def test_api_keys_made_through_the_api_work_and_are_stored_hashed(managed, tmp_path):
    gw, admin = managed
    made = make_key(admin, id="ci", expires_in="1h")
    key = made["key"]
    assert key.startswith("isk_") and len(key) == 47
    assert made["prefix"] == key[:8]
    assert made["id"] == "ci" and made["expired"] is False
    assert eventually(lambda: status_with(gw.port, key) == 200)
    status, _, body = call(gw.port, "/k", {"X-API-Key": key})
    assert upstream_saw(body)[1]["x-consumer-id"] == ["acme"]
    # listed without the key
    status, listed, _ = admin.call("GET", "/api/consumers/acme/keys")
    assert status == 200
    assert [k["id"] for k in listed["data"]] == ["ci"]
    assert "key" not in listed["data"][0] and "hash" not in listed["data"][0]
    assert key not in json.dumps(listed)
    # the consumer item holds the hash, never the key
    status, item, _ = admin.call("GET", "/api/consumers/acme")
    assert status == 200
    assert key not in json.dumps(item)
    # nor does the database file (with its WAL)
    from isekai.config.api_key_policy import key_hash

    raw = b"".join(p.read_bytes() for p in tmp_path.glob("store.db*"))
    assert key.encode() not in raw
    assert key[8:].encode() not in raw
    assert key_hash(PEPPER, key).encode() in raw


def test_api_keys_admin_errors(managed):
    gw, admin = managed
    # a consumer from the file: its keys are read-only here
    status, body, _ = admin.call("POST", "/api/consumers/filed/keys", {})
    assert status == 409 and body["error"]["code"] == "read_only"
    assert "defined in the config file" in body["message"]
    status, body, _ = admin.call("DELETE", "/api/consumers/filed/keys/f1")
    assert status == 409 and body["error"]["code"] == "read_only"
    status, body, _ = admin.call("GET", "/api/consumers/filed/keys")
    assert status == 200 and body["data"][0]["id"] == "f1" and body["data"][0]["source"] == "file"
    # unknown consumer / key
    assert admin.call("POST", "/api/consumers/nobody/keys", {})[0] == 404
    assert admin.call("GET", "/api/consumers/nobody/keys")[0] == 404
    assert admin.call("GET", "/api/consumers/nobody/usage")[0] == 404
    assert admin.call("DELETE", "/api/consumers/acme/keys/none")[0] == 404
    status, body, _ = admin.call("POST", "/api/consumers/acme/keys", {"rotate": "none"})
    assert status == 422 and "no key 'none' to rotate" in body["message"]
    assert body["error"]["path"] == "key.rotate"
    # bad bodies
    for bad, path in [
        ({"expires_in": "soon"}, "key.expires_in"),
        ({"expires_in": "1s", "expires_at": 4102444800}, "key.expires_at"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, "key.expires_at"),
        ({"expires_at": "tomorrow"}, "key.expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "key.expires_at"),
        ({"grace": "1h"}, "key.grace"),
        ({"id": "bad id"}, "key.id"),
        ({"key": "isk_mine-mine-mine"}, "key.key"),
        ({"hash": "0" * 64}, "key.hash"),
    ]:
        status, body, _ = admin.call("POST", "/api/consumers/acme/keys", bad)
        assert status == 422, (bad, body)
        assert body["error"]["path"] == path, (bad, body)
    status, body, _ = admin.call("POST", "/api/consumers/acme/keys", [1])
    assert status == 422
    # a duplicate id
    make_key(admin, id="dup")
    status, body, _ = admin.call("POST", "/api/consumers/acme/keys", {"id": "dup"})
    assert status == 409 and body["error"]["code"] == "already_exists"
    # roles: a viewer reads, an editor writes
    assert admin.call("GET", "/api/consumers/acme/keys", token=None)[0] == 401


def test_api_keys_expiry(managed):
    gw, admin = managed
    key = make_key(admin, expires_in="1s")["key"]
    assert eventually(lambda: status_with(gw.port, key) == 200, timeout=0.9)
    assert eventually(lambda: status_with(gw.port, key) == 401, timeout=3)
    status, headers, body = call(gw.port, "/k", {"X-API-Key": key})
    check_refusal(status, headers, body, "the API key is not valid")
    status, listed, _ = admin.call("GET", "/api/consumers/acme/keys")
    assert listed["data"][0]["expired"] is True


def test_api_keys_rotation_with_grace(managed):
    gw, admin = managed
    old = make_key(admin, id="old")["key"]
    assert eventually(lambda: status_with(gw.port, old) == 200)
    rotated = make_key(admin, id="new", rotate="old", grace="2s")
    new = rotated["key"]
    assert rotated["rotated"]["id"] == "old" and rotated["rotated"]["expires_at"] is not None
    assert eventually(lambda: status_with(gw.port, new) == 200)
    # both valid during the grace period
    assert status_with(gw.port, old) == 200
    assert status_with(gw.port, new) == 200
    # then the old one is refused, the new one still works
    assert eventually(lambda: status_with(gw.port, old) == 401, timeout=4)
    assert status_with(gw.port, new) == 200
    # the listing shows which one expired
    status, listed, _ = admin.call("GET", "/api/consumers/acme/keys")
    by_id = {k["id"]: k for k in listed["data"]}
    assert by_id["old"]["expired"] is True and by_id["new"]["expires_at"] is None


def test_api_keys_revocation_reaches_both_workers_within_a_second(managed):
    from tests.support.gateway import connection_owners

    gw, admin = managed
    key = make_key(admin, id="doomed")["key"]
    assert eventually(lambda: status_with(gw.port, key) == 200)
    workers = gw.workers()  # the two workers and the admin process (which serves no data)
    # keep-alive connections until each worker holds one
    by_worker: dict[int, http.client.HTTPConnection] = {}
    opened = []
    for _ in range(60):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=5)
        opened.append(conn)
        assert call(gw.port, "/k", {"X-API-Key": key}, conn=conn)[0] == 200
        owners = connection_owners(workers, gw.port)
        owner = owners.get(conn.sock.getsockname()[1])
        if owner is not None and owner not in by_worker:
            by_worker[owner] = conn
        if len(by_worker) == 2:
            break
    try:
        assert len(by_worker) == 2, "the kernel never gave the second worker a connection"
        started = time.monotonic()
        status, body, _ = admin.call("DELETE", "/api/consumers/acme/keys/doomed")
        assert status == 200, body
        refused_after: dict[int, float] = {}
        while len(refused_after) < 2 and time.monotonic() - started < 2.0:
            for pid, conn in by_worker.items():
                if pid in refused_after:
                    continue
                status, headers, reply = call(gw.port, "/k", {"X-API-Key": key}, conn=conn)
                if status == 401:
                    check_refusal(status, headers, reply, "the API key is not valid")
                    refused_after[pid] = time.monotonic() - started
            time.sleep(0.01)
        assert set(refused_after) == set(by_worker), refused_after
        assert max(refused_after.values()) <= 1.0, refused_after
    finally:
        for conn in opened:
            conn.close()


def test_api_keys_usage_is_summed_over_the_workers(managed):
    gw, admin = managed
    one = make_key(admin, id="one")["key"]
    two = make_key(admin, id="two")["key"]
    assert eventually(lambda: status_with(gw.port, two) == 200)
    before = admin.call("GET", "/api/consumers/acme/usage")[1]["data"]
    counts = {k["id"]: k["requests"] for k in before["keys"]}
    for _ in range(20):  # new connections: both workers take some
        assert status_with(gw.port, one) == 200
    for _ in range(5):
        assert status_with(gw.port, two) == 200
    status_with(gw.port, "not-a-key-0000000000")  # refusals count for no key
    status, body, _ = admin.call("GET", "/api/consumers/acme/usage")
    assert status == 200, body
    usage = body["data"]
    assert usage["consumer"] == "acme" and usage["workers_answered"] == 2
    rows = {k["id"]: k for k in usage["keys"]}
    assert rows["one"]["requests"] == counts["one"] + 20
    assert rows["two"]["requests"] == counts["two"] + 5
    assert usage["requests"] == sum(k["requests"] for k in usage["keys"])
    assert rows["one"]["last_used_at"].endswith("Z")
    assert usage["last_used_at"] == max(k["last_used_at"] for k in usage["keys"])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_api_keys_two_gateways_making_keys_at_once_all_land(
    tmp_path, upstream, require_service, backend
):
    import threading
    import uuid

    store = ""
    if backend == "postgres":  # a schema of its own on the test database
        store = f"{require_service('postgres')}?schema=isekai_keys_{uuid.uuid4().hex[:10]}"
    first = start_managed(tmp_path, upstream.port, workers=1, name="one.yaml", store=store)
    second = start_managed(tmp_path, upstream.port, workers=1, name="two.yaml", store=store)
    try:
        admins = [AdminClient(first), AdminClient(second)]
        status, body, _ = admins[0].call("POST", "/api/consumers", {"name": "shared"})
        assert status == 201, body
        made: list[tuple[int, dict]] = []
        lock = threading.Lock()

        def make(admin: AdminClient, i: int) -> None:
            status, answer, _ = admin.call("POST", "/api/consumers/shared/keys", {"id": f"k{i}"})
            with lock:
                made.append((status, answer))

        threads = [threading.Thread(target=make, args=(admins[i % 2], i)) for i in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [status for status, _ in made] == [201] * 12, made
        for admin in admins:
            status, listed, _ = admin.call("GET", "/api/consumers/shared/keys")
            assert sorted(k["id"] for k in listed["data"]) == sorted(f"k{i}" for i in range(12))
        keys = {answer["data"]["id"]: answer["data"]["key"] for _, answer in made}
        for gw in (first, second):
            for key in keys.values():
                assert eventually(lambda gw=gw, key=key: status_with(gw.port, key) == 200)
        # revoked through one gateway: refused by the other within a second
        started = time.monotonic()
        assert admins[0].call("DELETE", "/api/consumers/shared/keys/k0")[0] == 200
        assert eventually(lambda: status_with(second.port, keys["k0"]) == 401, timeout=2)
        assert time.monotonic() - started <= 1.0
        assert status_with(second.port, keys["k1"]) == 200
    finally:
        first.stop()
        second.stop()


def test_api_keys_query_parameter_with_an_encoded_name_is_taken_out_too(keyed):
    # `api%5Fkey` is the parameter `api_key`: the key is read from it, so hide_credentials
    # must take it out as well, not pass the key on to the upstream
    status, _, body = call(keyed.port, f"/q?x=1&api%5Fkey={ACME_KEY}&y=2")
    assert status == 200, body
    target, seen = upstream_saw(body)
    assert ACME_KEY not in target
    assert target == "/q?x=1&y=2"
    assert seen["x-consumer-id"] == ["acme"]


def test_api_keys_identity_header_with_underscores_is_stripped(keyed):
    # many upstream frameworks (CGI/WSGI, PHP) read X_Consumer_ID as X-Consumer-ID: a client
    # must not be able to claim an identity through the underscore spelling either
    forged = {"X_Consumer_ID": "acme", "x_who": "acme", "X-Consumer_ID": "acme"}
    status, _, body = call(keyed.port, "/open", forged)
    assert status == 200
    seen = upstream_saw(body)[1]
    assert not [name for name in seen if name.replace("_", "-") in ("x-consumer-id", "x-who")]
    status, _, body = call(keyed.port, "/k", {"X-API-Key": BETA_KEY, **forged})
    assert status == 200
    seen = upstream_saw(body)[1]
    assert seen["x-consumer-id"] == ["beta"]
    assert "x_consumer_id" not in seen and "x-consumer_id" not in seen


def raw_call(port: int, path: str, pairs: list[tuple[str, str]]) -> tuple[int, dict, bytes]:
    """One GET with header lines as given (a name may repeat)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path)
        for name, value in pairs:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def test_api_keys_key_header_sent_twice_is_refused(keyed):
    # with hide_credentials off, the upstream would get both copies and might read the one
    # the gateway never checked
    pairs = [("X-API-Key", BETA_KEY), ("x-api-key", ACME_KEY)]
    for path in ("/s", "/k"):
        status, headers, body = raw_call(keyed.port, path, pairs)
        error = check_refusal(status, headers, body, "sent more than once")
        assert error["policy"] == "api_key"
