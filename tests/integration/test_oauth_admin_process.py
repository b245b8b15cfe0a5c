"""The OAuth2 authorization server in real admin processes (``python -m isekai.admin``):
two of them started together on one SQLite store make one signing key, serve the same JWKS,
and accept each other's clients and refresh tokens."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jwt

from tests.integration import test_admin_api as admin_api

CONFIG = """
routes:
  - name: ping
    match: {path: /ping}
    respond: {body: pong}
admin:
  bind: "127.0.0.1:0"
  auth: {jwt_secret: "integration-secret-integration-secret"}
  oauth:
    enabled: true
    issuer: "http://127.0.0.1:9080"
    audience: isekai-api
store:
  url: "sqlite:///STORE"
"""


def _form(server, path: str, fields: dict[str, str], client_id: str, secret: str):
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return server.call(
        "POST",
        path,
        headers={
            "Authorization": f"Basic {credentials}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        body_bytes=urllib.parse.urlencode(fields).encode(),
    )


class FormAdmin(admin_api.AdminProcess):
    """An admin process that can also be sent a raw (form-encoded) body."""

    def call(self, method, path, body=None, token=None, headers=None, body_bytes=None):
        if body_bytes is None:
            return super().call(method, path, body, token, headers)
        request = urllib.request.Request(self.url + path, data=body_bytes, method=method)
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()


def test_two_admin_processes_share_one_signing_key_and_their_grants(tmp_path):
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.replace("STORE", str(tmp_path / "shared.db")))
    with ThreadPoolExecutor(2) as pool:
        starting = [pool.submit(FormAdmin, config, admin_api.ADMIN_ENV) for _ in range(2)]
        a, b = (future.result() for future in starting)
    try:
        # both fetch the JWKS at once: the first key is made by one of them only
        with ThreadPoolExecutor(2) as pool:
            jwks = list(pool.map(lambda s: s.json("GET", "/oauth/jwks.json")[2], (a, b)))
        assert jwks[0] == jwks[1] and len(jwks[0]["keys"]) == 1, jwks

        status, _, login = a.json(
            "POST", "/api/auth/login", {"username": "root", "password": "integration password"}
        )
        assert status == 200, login
        token = login["data"]["token"]
        status, _, made = a.json(
            "POST",
            "/api/oauth/clients",
            {
                "name": "svc",
                "scopes": ["read"],
                "grant_types": ["client_credentials", "refresh_token"],
            },
            token=token,
        )
        assert status == 201, made
        client_id, secret = made["data"]["client_id"], made["data"]["client_secret"]

        status, headers, raw = _form(
            b, "/oauth/token", {"grant_type": "client_credentials"}, client_id, secret
        )
        assert status == 200, raw
        assert headers["Cache-Control"] == "no-store"
        issued = json.loads(raw)
        key = jwt.PyJWK(jwks[0]["keys"][0])
        claims = jwt.decode(
            issued["access_token"],
            key.key,
            algorithms=["RS256"],
            audience="isekai-api",
            issuer="http://127.0.0.1:9080",
        )
        assert claims["client_id"] == client_id and claims["scope"] == "read"

        given = issued["refresh_token"]
        with ThreadPoolExecutor(4) as pool:
            replies = list(
                pool.map(
                    lambda s: _form(
                        s,
                        "/oauth/token",
                        {"grant_type": "refresh_token", "refresh_token": given},
                        client_id,
                        secret,
                    ),
                    (a, b, a, b),
                )
            )
        assert sorted(r[0] for r in replies) == [200, 400, 400, 400], replies

        status, _, raw = _form(
            a, "/oauth/introspect", {"token": issued["access_token"]}, client_id, secret
        )
        assert status == 200 and json.loads(raw)["active"] is True
    finally:
        for server in (a, b):
            server.stop()
