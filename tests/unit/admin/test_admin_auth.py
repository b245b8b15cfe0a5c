"""Login, tokens, the role matrix, users, and the first admin."""

from __future__ import annotations

import time

import jwt
import pytest
from admin_helpers import PASSWORD, ROUNDS, ROUTE, SECRET, admin, run

from isekai.admin.auth import (
    ISSUER,
    check_password_rules,
    check_username,
    ensure_initial_admin,
    hash_password,
    issue_token,
    verify_password,
)
from isekai.store import open_store

# (method, path, body) per kind of endpoint
READS = [
    ("GET", "/api/status", None),
    ("GET", "/api/routes", None),
    ("GET", "/api/routes/ping", None),
    ("GET", "/api/upstreams", None),
    ("GET", "/api/load-balancer/status", None),
    ("GET", "/api/circuit-breaker/status", None),
    ("GET", "/api/websocket/stats", None),
    ("GET", "/api/logs", None),
    ("GET", "/api/auth/me", None),
]
WRITES = [
    ("POST", "/api/routes", ROUTE),
    ("POST", "/api/upstreams", {"name": "orders", "targets": ["127.0.0.1:1"]}),
]
USERS = [
    ("POST", "/api/users", {"username": "new", "password": PASSWORD, "role": "viewer"}),
    ("GET", "/api/users/viewer", None),
    ("PUT", "/api/users/viewer", {"role": "viewer"}),
]
PUBLIC = ["/health", "/health/ready", "/openapi.json", "/docs", "/docs/openapi-3.0.json"]
ALLOWED = {
    "viewer": {"read"},
    "editor": {"read", "write"},
    "admin": {"read", "write", "users"},
}


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
@pytest.mark.parametrize("group", ["read", "write", "users"])
def test_rbac_matrix(tmp_path, role, group):
    calls = {"read": READS, "write": WRITES, "users": USERS}[group]

    async def scenario():
        async with admin(tmp_path, role=role) as api:
            for method, path, body in calls:
                reply = await api.request(method, path, json_body=body)
                if group in ALLOWED[role]:
                    assert reply.status in (200, 201), (method, path, reply)
                    assert reply.body["success"] is True
                else:
                    assert reply.status == 403, (method, path, reply)
                    assert reply.error["code"] == "forbidden"

    run(scenario())


@pytest.mark.parametrize("group", ["read", "write", "users"])
def test_rbac_without_a_token_is_401_with_a_bearer_challenge(tmp_path, group):
    calls = {"read": READS, "write": WRITES, "users": USERS}[group]

    async def scenario():
        async with admin(tmp_path, role=None) as api:
            for method, path, body in calls:
                reply = await api.request(method, path, json_body=body)
                assert reply.status == 401, (method, path, reply)
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
                assert reply.error["code"] == "unauthorized"
            assert await api.ctx.store.list_items("route") == []

    run(scenario())


def _token(claims: dict, secret: str = SECRET, algorithm: str = "HS256") -> str:
    now = int(time.time())
    base = {
        "sub": "admin",
        "role": "admin",
        "ver": 0,
        "iat": now,
        "exp": now + 60,
        "iss": ISSUER,
    }
    return jwt.encode({**base, **claims}, secret, algorithm=algorithm)


# Tokens are made when a test runs, not at import: a long suite would see them expire.
BAD_TOKENS = {
    "expired": (lambda: _token({"exp": int(time.time()) - 10}), "has expired"),
    "garbage": ("not.a.token", "not valid"),
    "wrong secret": (lambda: _token({}, secret="x" * 40), "not valid"),
    "alg none": (
        lambda: jwt.encode({"sub": "admin", "role": "admin"}, None, algorithm="none"),
        "not valid",
    ),
    "other algorithm": (lambda: _token({}, secret="s" * 64, algorithm="HS512"), "not valid"),
    "no exp": (lambda: _token({"exp": None}), "not valid"),
    "wrong issuer": (lambda: _token({"iss": "someone"}), "not valid"),
    "unknown user": (lambda: _token({"sub": "ghost"}), "does not exist"),
}


@pytest.mark.parametrize("case", BAD_TOKENS, ids=list(BAD_TOKENS))
def test_auth_bad_tokens_are_401_invalid_token(tmp_path, case):
    make, message = BAD_TOKENS[case]
    token = make() if callable(make) else make
    if case == "no exp":
        payload = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
        payload.pop("exp", None)
        token = jwt.encode(payload, SECRET, algorithm="HS256")

    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.get("/api/routes", token=token)
            assert reply.status == 401
            assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
            assert message in reply.body["message"]

    run(scenario())


@pytest.mark.parametrize("header", ["Basic YWRtaW46eA==", "Bearer", "Bearer    ", "token abc"])
def test_auth_malformed_authorization_header_is_401(tmp_path, header):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.get("/api/routes", headers={"Authorization": header})
            assert reply.status == 401
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")

    run(scenario())


def test_auth_role_is_read_from_the_store_on_every_request(tmp_path):
    async def scenario():
        async with admin(tmp_path, role="editor") as api:
            assert (await api.post("/api/routes", ROUTE)).status == 201
            stored = await api.ctx.store.get_user("editor")
            await api.ctx.store.set_user("editor", stored["password_hash"], "viewer")
            reply = await api.post("/api/routes", {**ROUTE, "name": "second"})
            assert reply.status == 401  # a role change revokes the tokens made before
            token = issue_token(api.ctx, "editor", "viewer", stored["token_version"] + 1)[0]
            reply = await api.post("/api/routes", {**ROUTE, "name": "second"}, token=token)
            assert reply.status == 403

    run(scenario())


@pytest.mark.parametrize("path", PUBLIC)
def test_auth_public_endpoints_need_no_token(tmp_path, path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.get(path)
            assert reply.status == 200, reply

    run(scenario())


def test_auth_disabled_on_loopback_opens_everything(tmp_path):
    yaml_text = """
    routes: []
    admin: {bind: "127.0.0.1:0", auth: {enabled: false}}
    """

    async def scenario():
        async with admin(tmp_path, yaml_text, role=None) as api:
            reply = await api.post("/api/routes", {**ROUTE, "respond": {}, "upstream": None})
            assert reply.status == 201, reply
            assert (await api.get("/api/users/admin")).status == 200
            me = await api.get("/api/auth/me")
            assert me.data == {"username": None, "role": "admin", "auth": False}

    run(scenario())


def test_login_returns_a_jwt_with_sub_role_and_exp(tmp_path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.post("/api/auth/login", {"username": "editor", "password": PASSWORD})
            assert reply.status == 200, reply
            assert reply.headers["Cache-Control"] == "no-store"
            data = reply.data
            assert data["token_type"] == "Bearer"
            assert data["user"] == {"username": "editor", "role": "editor"}
            assert 3590 <= data["expires_in"] <= 3600
            claims = jwt.decode(data["token"], SECRET, algorithms=["HS256"], issuer=ISSUER)
            assert claims["sub"] == "editor" and claims["role"] == "editor"
            assert claims["exp"] - claims["iat"] == 3600
            me = await api.get("/api/auth/me", token=data["token"])
            assert me.data == {"username": "editor", "role": "editor", "auth": True}

    run(scenario())


@pytest.mark.parametrize(
    "body",
    [
        {"username": "editor", "password": "wrong password"},
        {"username": "nobody", "password": PASSWORD},
        {"username": "editor", "password": "x" * 200},
    ],
)
def test_login_wrong_credentials_is_401(tmp_path, body):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            reply = await api.post("/api/auth/login", body)
            assert reply.status == 401
            assert reply.body["message"] == "wrong username or password"
            assert "token" not in reply.raw.decode()

    run(scenario())


def test_login_malformed_bodies(tmp_path):
    async def scenario():
        async with admin(tmp_path, role=None) as api:
            assert (await api.post("/api/auth/login", {"username": "x"})).status == 422
            reply = await api.post("/api/auth/login", {"username": 1, "password": "x"})
            assert reply.status == 422 and reply.error["path"] == "body.username"
            reply = await api.request(
                "POST", "/api/auth/login", data="{", headers={"Content-Type": "application/json"}
            )
            assert reply.status == 400
            reply = await api.request("POST", "/api/auth/login", data="username=x")
            assert reply.status == 415

    run(scenario())


def test_users_create_get_update(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            body = {"username": "carol", "password": "purple tulip garden", "role": "viewer"}
            reply = await api.post("/api/users", body)
            assert reply.status == 201, reply
            assert reply.data["username"] == "carol" and reply.data["role"] == "viewer"
            assert "password" not in reply.raw.decode()
            assert (await api.post("/api/users", body)).status == 409
            stored = await api.ctx.store.get_user("carol")
            assert stored["password_hash"].startswith("$2")
            assert verify_password("purple tulip garden", stored["password_hash"])
            reply = await api.get("/api/users/carol")
            assert reply.data["role"] == "viewer" and "password_hash" not in reply.raw.decode()
            reply = await api.put("/api/users/carol", {"role": "editor"})
            assert reply.status == 200 and reply.data["role"] == "editor"
            login = await api.post(
                "/api/auth/login", {"username": "carol", "password": "purple tulip garden"}
            )
            assert login.data["user"]["role"] == "editor"
            reply = await api.put("/api/users/carol", {"password": "new password!"})
            assert reply.status == 200
            login = await api.post(
                "/api/auth/login", {"username": "carol", "password": "new password!"}
            )
            assert login.status == 200
            assert (await api.get("/api/users/nobody")).status == 404
            assert (await api.put("/api/users/nobody", {"role": "viewer"})).status == 404
            body = {"role": "viewer", "password": "quiet river stone"}
            reply = await api.put("/api/users/dave", body)
            assert reply.status == 201

    run(scenario())


@pytest.mark.parametrize(
    "body, path",
    [
        ({"username": "bad name", "password": "long enough pw", "role": "viewer"}, "user.username"),
        ({"username": "eve", "password": "short", "role": "viewer"}, "user.password"),
        ({"username": "eve", "password": "long enough pw", "role": "root"}, "user.role"),
        ({"username": "eve", "password": "é" * 40, "role": "viewer"}, "user.password"),
        ({"username": "eve", "role": "viewer"}, "user.password"),
    ],
)
def test_users_invalid_is_422(tmp_path, body, path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.post("/api/users", body)
            assert reply.status == 422, reply
            assert reply.error["path"] == path

    run(scenario())


def test_password_hashes_are_salted_bcrypt():
    first, second = hash_password(PASSWORD, ROUNDS), hash_password(PASSWORD, ROUNDS)
    assert first != second and first.startswith("$2b$04$")
    assert verify_password(PASSWORD, first) and not verify_password("nope", first)
    assert not verify_password(PASSWORD, "not a hash")


def test_password_and_username_rules():
    with pytest.raises(ValueError, match="at least 12"):
        check_password_rules("short")
    with pytest.raises(ValueError, match="at most 72 bytes"):
        check_password_rules("x" * 73)
    check_password_rules("xy z!" * 14 + "xy")
    for bad in ("", "-x", "a b", "x" * 65, "a\n"):
        with pytest.raises(ValueError):
            check_username(bad)
    check_username("ops@example.com")


def test_ensure_initial_admin(tmp_path, caplog):
    async def scenario():
        store = open_store(f"sqlite:///{tmp_path}/first.db")
        await store.open()
        try:
            assert await ensure_initial_admin(store, {}, rounds=ROUNDS) is None
            assert "has no users" in caplog.text
            with pytest.raises(ValueError):
                env = {"ISEKAI_ADMIN_USERNAME": "root", "ISEKAI_ADMIN_PASSWORD": "short"}
                await ensure_initial_admin(store, env, rounds=ROUNDS)
            env = {"ISEKAI_ADMIN_USERNAME": "root", "ISEKAI_ADMIN_PASSWORD": "a long secret"}
            assert await ensure_initial_admin(store, env, rounds=ROUNDS) == "root"
            user = await store.get_user("root")
            assert user["role"] == "admin"
            assert verify_password("a long secret", user["password_hash"])
            other = {"ISEKAI_ADMIN_USERNAME": "second", "ISEKAI_ADMIN_PASSWORD": "another one"}
            assert await ensure_initial_admin(store, other, rounds=ROUNDS) is None
            assert await store.count_users() == 1
        finally:
            await store.close()

    caplog.set_level("INFO")
    run(scenario())


def test_auth_random_secret_per_context_when_none_is_configured(tmp_path, caplog):
    yaml_text = """
    routes: []
    admin: {bind: "127.0.0.1:0"}
    """

    async def scenario():
        async with admin(tmp_path, yaml_text) as api:
            assert len(api.ctx.jwt_secret) >= 32
            assert (await api.get("/api/routes")).status == 200
            token = _token({}, secret=api.ctx.jwt_secret)
            assert (await api.get("/api/routes", token=token)).status == 200
        async with admin(tmp_path, yaml_text, role=None) as other:
            assert (await other.get("/api/routes", token=token)).status == 401

    run(scenario())
    assert "will not be valid after a restart" in caplog.text
