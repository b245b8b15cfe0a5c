"""The admin API wired into the running gateway: API changes reach the data plane (1 and 2
workers) without dropping connections, survive restarts, reach every instance sharing one
PostgreSQL database, and every proxied request lands in the request log."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.gateway import REPO, Gateway, wait_for
from tests.support.upstream import payload_digest

ADMIN_ENV = {"ISEKAI_ADMIN_USERNAME": "root", "ISEKAI_ADMIN_PASSWORD": "control-plane-password"}


def gateway_yaml(upstream_port: int, store_url: str, workers: int = 1) -> str:
    return f"""
workers: {workers}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "control-plane-secret-control-plane-secret"}}
  request_logs: {{enabled: true}}
store: {{url: "{store_url}"}}
upstreams:
  app: {{targets: ["127.0.0.1:{upstream_port}"]}}
routes:
  - {{name: file-route, match: {{path: /file}}, respond: {{body: from-file}}}}
"""


class Admin:
    """A logged-in client of one gateway's admin API."""

    def __init__(self, gw: Gateway) -> None:
        found = gw.wait_for_log(r"admin API on http://(\S+):(\d+)", timeout=20)
        assert found, gw.output()
        self.base = f"http://{found.group(1)}:{found.group(2)}"
        status, body = self.call(
            "POST",
            "/api/auth/login",
            {
                "username": ADMIN_ENV["ISEKAI_ADMIN_USERNAME"],
                "password": ADMIN_ENV["ISEKAI_ADMIN_PASSWORD"],
            },
            auth=False,
        )
        assert status == 200, body
        self.token = body["data"]["token"]

    def call(self, method: str, path: str, body=None, auth: bool = True):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def start(tmp_path, text: str, name: str = "gateway.yaml") -> Gateway:
    path = tmp_path / name
    path.write_text(text)
    return Gateway(path, env=ADMIN_ENV, startup_timeout=30)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


API_ROUTE = {
    "name": "api-route",
    "match": {"path": "/api/*"},
    "upstream": "app",
    "strip_prefix": "/api",
}


@pytest.mark.parametrize("workers", [1, 2])
def test_control_plane_api_route_serves_within_a_second_during_a_download(
    tmp_path, upstream, workers
):
    gw = start(tmp_path, gateway_yaml(upstream.port, f"sqlite:///{tmp_path}/s.db", workers))
    try:
        admin = Admin(gw)
        size = 8 * 1024 * 1024
        digest = hashlib.sha256()
        received = [0]
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        admin.call(
            "POST",
            "/api/routes",
            {
                "name": "dl",
                "match": {"path": "/dl/*"},
                "upstream": "app",
                "strip_prefix": "/dl",
            },
        )
        assert wait_for(lambda: get(gw.port, "/dl/status/200")[0] == 200, timeout=2)
        sock.sendall(b"GET /dl/bytes/%d HTTP/1.1\r\nHost: t\r\n\r\n" % size)

        def slow_reader() -> None:
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            rest = data.partition(b"\r\n\r\n")[2]
            digest.update(rest)
            received[0] += len(rest)
            deadline = time.monotonic() + 30
            while received[0] < size and time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                digest.update(chunk)
                received[0] += len(chunk)
                time.sleep(0.003)

        reader = threading.Thread(target=slow_reader)
        reader.start()
        time.sleep(0.3)
        assert get(gw.port, "/api/echo")[0] == 404
        status, body = admin.call("POST", "/api/routes", API_ROUTE)
        assert status == 201, body
        # promptly (polled, bounded for a loaded machine), while the slow download goes on
        assert wait_for(lambda: get(gw.port, "/api/echo?x=1")[0] == 200, timeout=5.0)
        assert json.loads(get(gw.port, "/api/echo?x=1")[1])["target"] == "/echo?x=1"
        assert received[0] < size, "the download finished too early to prove anything"
        reader.join(40)
        sock.close()
        assert received[0] == size
        assert digest.hexdigest() == payload_digest(size)
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize(
    "workers, backend", [(1, "sqlite"), (2, "sqlite"), (1, "postgres"), (2, "postgres")]
)
def test_control_plane_api_routes_survive_restart_and_yaml_stays_read_only(
    tmp_path, upstream, workers, backend, require_service
):
    url = f"sqlite:///{tmp_path}/s.db" if backend == "sqlite" else _postgres_url(require_service)
    text = gateway_yaml(upstream.port, url, workers)
    gw = start(tmp_path, text)
    try:
        admin = Admin(gw)
        assert admin.call("POST", "/api/routes", API_ROUTE)[0] == 201
        assert admin.call("DELETE", "/api/routes/file-route")[0] == 409
    finally:
        assert gw.stop() == 0
    gw = start(tmp_path, text)
    try:
        assert get(gw.port, "/api/status/200")[0] == 200  # served from the store at start
        assert get(gw.port, "/file") == (200, b"from-file")
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
@pytest.mark.parametrize("workers", [1, 2])
def test_control_plane_request_logs_record_proxied_requests(
    tmp_path, upstream, workers, store, request
):
    if store == "postgres":
        url = _postgres_url(request.getfixturevalue("require_service"))
    else:
        url = f"sqlite:///{tmp_path}/s.db"
    gw = start(tmp_path, gateway_yaml(upstream.port, url, workers))
    try:
        admin = Admin(gw)
        assert admin.call("POST", "/api/routes", API_ROUTE)[0] == 201
        assert wait_for(lambda: get(gw.port, "/api/status/200")[0] == 200, timeout=2)
        for i in range(5):
            assert get(gw.port, f"/api/status/201?i={i}")[0] == 201
        assert get(gw.port, "/missing")[0] == 404

        def logged() -> dict:
            return admin.call("GET", "/api/logs?route=api-route&status=201")[1]["data"]

        assert wait_for(lambda: logged()["total"] == 5, timeout=5), logged()
        row = logged()["items"][0]
        assert row["method"] == "GET" and row["path"] == "/api/status/201"
        assert row["upstream"] == "app" and row["client_ip"] == "127.0.0.1"
        assert row["request_id"] and row["latency_ms"] >= 0
        status, body = admin.call("GET", "/api/logs?status_class=4")
        assert status == 200 and body["data"]["total"] >= 1
    finally:
        assert gw.stop() == 0


def _postgres_url(require_service) -> str:
    """A schema of its own on the test database (the store creates it)."""
    dsn = require_service("postgres")
    return f"{dsn}?schema=isekai_cp_{uuid.uuid4().hex[:10]}"


def test_control_plane_two_instances_on_one_postgres_database(tmp_path, upstream, require_service):
    url = _postgres_url(require_service)
    first = start(tmp_path, gateway_yaml(upstream.port, url), "a.yaml")
    second = None
    try:
        second = start(tmp_path, gateway_yaml(upstream.port, url), "b.yaml")
        admin = Admin(first)
        assert get(second.port, "/api/status/200")[0] == 404
        assert admin.call("POST", "/api/routes", API_ROUTE)[0] == 201
        assert wait_for(lambda: get(second.port, "/api/status/200")[0] == 200, timeout=2)
        assert get(first.port, "/api/status/200")[0] == 200
        other = Admin(second)
        assert other.call("DELETE", "/api/routes/api-route")[0] in (200, 204)
        assert wait_for(lambda: get(first.port, "/api/status/200")[0] == 404, timeout=2)
    finally:
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_control_plane_admin_port_taken_is_a_clear_startup_error(tmp_path, upstream, workers):
    import subprocess
    import sys

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    text = gateway_yaml(upstream.port, f"sqlite:///{tmp_path}/s.db", workers).replace(
        'bind: "127.0.0.1:0"\n  auth', f'bind: "127.0.0.1:{port}"\n  auth'
    )
    path = tmp_path / "taken.yaml"
    path.write_text(text)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "isekai", "run", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(tmp_path),
            env={**os.environ, **ADMIN_ENV, "PYTHONPATH": str(REPO)},
        )
    finally:
        taken.close()
    assert proc.returncode == 1
    assert f"cannot start the admin API on 127.0.0.1:{port}" in proc.stderr + proc.stdout
