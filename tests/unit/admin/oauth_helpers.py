"""Helpers for the OAuth2 authorization server tests: the admin app with ``admin.oauth`` on,
a registered client, and form posts to the token endpoints through a real socket."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote_plus, urlencode

import jwt

from tests.unit.admin.admin_helpers import SECRET, Api, Reply

OAUTH_YAML = f"""
upstreams:
  users: {{targets: ["127.0.0.1:9001"]}}
routes:
  - name: ping
    match: {{path: /ping}}
    respond: {{body: pong}}
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}
  oauth:
    enabled: true
    issuer: "http://127.0.0.1:9080"
    audience: "isekai-api"
    access_token_ttl: 10m
    refresh_token_ttl: 1d
    signing_algorithm: %(algorithm)s
"""


def oauth_yaml(algorithm: str = "RS256") -> str:
    return OAUTH_YAML % {"algorithm": algorithm}


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


async def register(api: Api, **body: Any) -> dict[str, Any]:
    """Register a client as admin; its view with ``client_secret``."""
    doc = {"name": "billing", "scopes": ["read", "write"], **body}
    reply = await api.post("/api/oauth/clients", doc)
    assert reply.status == 201, reply
    data: dict[str, Any] = reply.data
    return data


async def form(
    api: Api, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
) -> Reply:
    """A form post without the admin token."""
    sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return await api.as_role(None).request("POST", path, data=urlencode(fields), headers=sent)


async def client_token(api: Api, client: dict[str, Any], **fields: str) -> Reply:
    """``grant_type=client_credentials`` with client_secret_basic."""
    return await form(
        api,
        "/oauth/token",
        {"grant_type": "client_credentials", **fields},
        basic(client["client_id"], client["client_secret"]),
    )


async def refresh(api: Api, client: dict[str, Any], token: str, **fields: str) -> Reply:
    return await form(
        api,
        "/oauth/token",
        {"grant_type": "refresh_token", "refresh_token": token, **fields},
        basic(client["client_id"], client["client_secret"]),
    )


async def verify_with_jwks(api: Api, token: str) -> dict[str, Any]:
    """The token's claims, verified by PyJWT against the served JWKS (audience isekai-api)."""
    reply = await api.as_role(None).get("/oauth/jwks.json")
    assert reply.status == 200, reply
    kid = jwt.get_unverified_header(token)["kid"]
    keys = {k["kid"]: k for k in reply.body["keys"]}
    assert kid in keys, (kid, list(keys))
    key = jwt.PyJWK(keys[kid])
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=[keys[kid]["alg"]],
        audience="isekai-api",
        issuer="http://127.0.0.1:9080",
    )
    return claims
