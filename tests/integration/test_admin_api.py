"""The admin API as a real process (``python -m isekai.admin``) over real sockets.

It starts from a config file with an empty SQLite store, creates the first admin from the
environment, and is driven with plain HTTP: login, changes, ETags, persistence across a
restart, and the documentation endpoints.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CONFIG = """
upstreams:
  users: {targets: ["127.0.0.1:9001"]}
policies:
  tag: {type: headers, response: {set: {X-Served-By: isekai}}}
routes:
  - name: ping
    match: {path: /ping}
    respond: {body: pong}
admin:
  bind: "127.0.0.1:0"
  auth: {jwt_secret: "integration-secret-integration-secret"}
store:
  url: "sqlite:///STORE"
"""
ADMIN_ENV = {"ISEKAI_ADMIN_USERNAME": "root", "ISEKAI_ADMIN_PASSWORD": "integration password"}


class AdminProcess:
    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "isekai.admin", "-c", str(config), "--bcrypt-rounds", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
        self.log: list[str] = []
        ready = threading.Event()
        self.url = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line)
                found = re.search(r"admin API on (http://\S+)", line)
                if found and not self.url:
                    self.url = found.group(1)
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not ready.wait(20) or not self.url:
            self.stop()
            raise RuntimeError("admin API did not start:\n" + "".join(self.log))

    def call(self, method: str, path: str, body=None, token=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if body is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, method: str, path: str, body=None, token=None, headers=None):
        status, headers_, raw = self.call(method, path, body, token, headers)
        return status, headers_, json.loads(raw)

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG.replace("STORE", str(tmp_path / "admin.db")))
    return path


def test_admin_api_end_to_end(config_path):
    server = AdminProcess(config_path, ADMIN_ENV)
    try:
        assert server.json("GET", "/health")[2]["success"] is True
        assert server.json("GET", "/health/ready")[0] == 200
        assert server.json("GET", "/api/routes")[0] == 401

        status, _, body = server.json(
            "POST", "/api/auth/login", {"username": "root", "password": "integration password"}
        )
        assert status == 200, body
        token = body["data"]["token"]

        route = {"name": "orders", "match": {"path": "/orders/{id}"}, "upstream": "orders"}
        status, _, body = server.json("POST", "/api/routes", route, token)
        assert status == 422 and body["error"]["path"] == "route.upstream"

        upstream = {"name": "orders", "targets": ["127.0.0.1:9002"]}
        assert server.json("POST", "/api/upstreams", upstream, token)[0] == 201
        status, headers, body = server.json("POST", "/api/routes", route, token)
        assert status == 201 and headers["ETag"] == '"1"'

        patch = {"timeout": "5s"}
        status, headers, body = server.json(
            "PATCH", "/api/routes/orders", patch, token, {"If-Match": '"1"'}
        )
        assert status == 200 and headers["ETag"] == '"2"'
        status, _, body = server.json(
            "PUT", "/api/routes/orders", route, token, {"If-Match": '"1"'}
        )
        assert status == 412

        assert server.json("DELETE", "/api/routes/ping", None, token)[0] == 409
        assert server.json("DELETE", "/api/upstreams/orders", None, token)[0] == 422

        # policies: the same resource model, referred to by routes
        cors = {"name": "web_cors", "type": "cors", "origins": ["https://app.example.com"]}
        status, headers, body = server.json("POST", "/api/policies", cors, token)
        assert status == 201 and headers["ETag"] == '"1"', body
        bad = {"name": "bad", "type": "cors", "origins": ["*"], "credentials": True}
        status, _, body = server.json("POST", "/api/policies", bad, token)
        assert status == 422 and body["error"]["path"] == "policy.origins"
        status, headers, body = server.json(
            "PATCH", "/api/policies/web_cors", {"max_age": "10m"}, token, {"If-Match": '"1"'}
        )
        assert status == 200 and headers["ETag"] == '"2"'
        cors_route = {"name": "cors", "match": {"path": "/cors"}, "upstream": "users"}
        cors_route["policies"] = ["tag", "web_cors"]
        assert server.json("POST", "/api/routes", cors_route, token)[0] == 201
        status, _, body = server.json("DELETE", "/api/policies/web_cors", None, token)
        assert status == 422 and body["error"]["item"]["name"] == "cors"
        assert server.json("DELETE", "/api/policies/tag", None, token)[0] == 409
        listed = server.json("GET", "/api/policies", None, token)[2]["data"]
        assert {item["name"]: item["source"] for item in listed} == {
            "tag": "file",
            "web_cors": "api",
        }

        status, _, body = server.json(
            "POST",
            "/api/users",
            {"username": "reader", "password": "quiet harbor lamp", "role": "viewer"},
            token,
        )
        assert status == 201
        status, _, body = server.json(
            "POST", "/api/auth/login", {"username": "reader", "password": "quiet harbor lamp"}
        )
        viewer = body["data"]["token"]
        assert server.json("GET", "/api/status", None, viewer)[2]["data"]["routes"] == 3
        assert server.json("DELETE", "/api/routes/orders", None, viewer)[0] == 403
        assert server.json("GET", "/api/policies/web_cors", None, viewer)[0] == 200
        assert server.json("DELETE", "/api/policies/web_cors", None, viewer)[0] == 403

        status, headers, raw = server.call("GET", "/docs")
        assert status == 200 and b"/docs/static/swagger-ui-bundle.js" in raw
        assert server.call("GET", "/docs/static/swagger-ui-bundle.js")[0] == 200
        assert json.loads(server.call("GET", "/openapi.json")[2])["openapi"] == "3.1.0"
    finally:
        assert server.stop() == 0

    # a restart keeps the stored items, the users and (with a configured secret) the tokens
    server = AdminProcess(config_path, {})
    try:
        status, _, body = server.json("GET", "/api/routes/orders", None, token)
        assert status == 200, body
        assert body["data"]["version"] == 2 and body["data"]["spec"]["timeout"] == "5s"
        assert server.json("GET", "/api/status", None, token)[2]["data"]["routes"] == 3
        status, _, body = server.json("GET", "/api/policies/web_cors", None, token)
        assert status == 200 and body["data"]["spec"]["max_age"] == "10m"
        assert body["data"]["version"] == 2
    finally:
        assert server.stop() == 0
    assert "no users" not in "".join(server.log)


def test_admin_api_without_users_warns(config_path):
    server = AdminProcess(config_path, {"ISEKAI_ADMIN_USERNAME": "", "ISEKAI_ADMIN_PASSWORD": ""})
    try:
        status, _, _ = server.json("POST", "/api/auth/login", {"username": "a", "password": "b"})
        assert status == 401
    finally:
        server.stop()
    assert "the admin API has no users" in "".join(server.log)
