"""Admin API hardening, through real sockets: login limits, the password policy, token
revocation (also on a second admin process sharing the store), users and the last admin, API
routes that would shadow file routes, and the audit trail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from admin_helpers import BASE_YAML, PASSWORD, ROUNDS, ROUTE, SECRET, admin, run

from isekai.admin.audit import REDACTED, redact
from isekai.admin.auth import check_password_rules

LIMITED_YAML = BASE_YAML.replace(
    "jwt_expiry: 1h}",
    "jwt_expiry: 1h, login_limits: {per_user: 5, per_ip: 1000, window: 1h}}",
)
WRONG = "not the password"


def with_limits(per_user: int, per_ip: int, window: str) -> str:
    limits = f"login_limits: {{per_user: {per_user}, per_ip: {per_ip}, window: {window}}}"
    return BASE_YAML.replace("jwt_expiry: 1h}", f"jwt_expiry: 1h, {limits}}}")


async def login(api, username: str, password: str = PASSWORD):
    return await api.post("/api/auth/login", {"username": username, "password": password})


# -- login limits ------------------------------------------------------------------------------


def test_brute_force_is_stopped_after_the_limit_even_for_the_right_password(tmp_path):
    async def scenario():
        async with admin(tmp_path, with_limits(5, 1000, "1h"), role=None) as api:
            statuses = []
            for _ in range(200):
                reply = await login(api, "editor", WRONG)
                statuses.append(reply.status)
                if reply.status == 429:
                    assert reply.error["code"] == "too_many_attempts"
                    retry = int(reply.headers["Retry-After"])
                    assert 1 <= retry <= 3600 and reply.error["retry_after"] == retry
            assert statuses[:5] == [401] * 5 and set(statuses[5:]) == {429}
            locked = await login(api, "editor")  # the right password, while locked
            assert locked.status == 429 and "token" not in locked.raw.decode()
            assert (await login(api, "viewer")).status == 200  # other users are not locked

    run(scenario())


def test_the_lock_ends_with_the_window(tmp_path):
    async def scenario():
        async with admin(tmp_path, with_limits(2, 1000, "2s"), role=None) as api:
            assert (await login(api, "editor", WRONG)).status == 401
            assert (await login(api, "editor", WRONG)).status == 401
            locked = await login(api, "editor")
            assert locked.status == 429 and 1 <= int(locked.headers["Retry-After"]) <= 2
            for _ in range(60):  # bounded: the window is 2 s
                await asyncio.sleep(0.1)
                reply = await login(api, "editor")
                if reply.status == 200:
                    break
                assert reply.status == 429
            assert reply.status == 200

    run(scenario())


def test_a_successful_login_clears_the_username_count(tmp_path):
    async def scenario():
        async with admin(tmp_path, with_limits(2, 1000, "1h"), role=None) as api:
            assert (await login(api, "editor", WRONG)).status == 401
            assert (await login(api, "editor")).status == 200
            assert (await login(api, "editor", WRONG)).status == 401
            assert (await login(api, "editor", WRONG)).status == 401
            assert (await login(api, "editor", WRONG)).status == 429
            assert (await login(api, "editor")).status == 429

    run(scenario())


def test_login_limit_per_client_address_covers_every_username(tmp_path):
    async def scenario():
        async with admin(tmp_path, with_limits(100, 3, "1h"), role=None) as api:
            for name in ("a1", "b2", "c3"):
                assert (await login(api, name, WRONG)).status == 401
            reply = await login(api, "viewer")
            assert reply.status == 429 and "Retry-After" in reply.headers

    run(scenario())


def _same_answer(one, two) -> None:
    assert one.status == two.status
    assert one.body == two.body
    drop = {"x-request-id", "date"}
    assert {k.lower(): v for k, v in one.headers.items() if k.lower() not in drop} == {
        k.lower(): v for k, v in two.headers.items() if k.lower() not in drop
    }


def test_unknown_user_and_wrong_password_are_indistinguishable(tmp_path):
    async def scenario():
        async with admin(tmp_path, with_limits(2, 1000, "1h"), role=None) as api:
            wrong = [await login(api, "editor", WRONG) for _ in range(3)]
            unknown = [await login(api, "nobody", WRONG) for _ in range(3)]
            for one, two in zip(wrong, unknown, strict=True):
                if one.status == 429:  # the seconds left may differ by one
                    one.headers.pop("Retry-After"), two.headers.pop("Retry-After")
                    one.body["error"].pop("retry_after"), two.body["error"].pop("retry_after")
                    assert one.body["error"] == two.body["error"]
                    assert re.sub(r"\d+", "N", one.body["message"]) == re.sub(
                        r"\d+", "N", two.body["message"]
                    )
                    continue
                _same_answer(one, two)
            assert [r.status for r in wrong] == [401, 401, 429]

    run(scenario())


# -- password policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "password, reason",
    [
        ("12345678", "at least 12"),
        ("password1234", "most common"),
        ("PassWord1234", "most common"),
        ("!!dragon2024!", "common password"),
        ("qwertyuiopasdf", "keyboard"),
        ("123456789012", "run"),
        ("aaaaaaaaaaaaaaaa", "different characters"),
        ("carol-is-great-2024", "username"),
        ("x" * 73, "at most 72 bytes"),
    ],
)
def test_password_policy_refuses_weak_passwords_with_422(tmp_path, password, reason):
    async def scenario():
        async with admin(tmp_path) as api:
            body = {"username": "carol", "password": password, "role": "viewer"}
            reply = await api.post("/api/users", body)
            if not 12 <= len(password) <= 72:  # the published schema says so first
                assert reply.status == 422 and reply.error["path"] == "user.password"
                return
            assert reply.status == 422, reply
            assert reply.error["path"] == "user.password"
            assert reason in reply.body["message"]
            await api.post("/api/users", {**body, "password": "purple tulip garden"})
            reply = await api.put("/api/users/carol", {"password": password})
            assert reply.status == 422 and reply.error["path"] == "user.password"

    run(scenario())
    with pytest.raises(ValueError, match=reason):
        check_password_rules(password, "carol")


# -- revocation --------------------------------------------------------------------------------


async def _token(api, username: str, password: str = PASSWORD) -> str:
    reply = await login(api, username, password)
    assert reply.status == 200, reply
    return reply.data["token"]


def test_tokens_are_revoked_by_password_change_role_change_delete_and_logout(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            # password change
            token = await _token(api, "viewer")
            assert (await api.get("/api/routes", token=token)).status == 200
            assert (
                await api.put("/api/users/viewer", {"password": "new secret phrase 9"})
            ).status == 200
            reply = await api.get("/api/routes", token=token)
            assert reply.status == 401 and "revoked" in reply.body["message"]
            assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
            token = await _token(api, "viewer", "new secret phrase 9")
            assert (await api.get("/api/routes", token=token)).status == 200
            # role change
            assert (await api.put("/api/users/viewer", {"role": "editor"})).status == 200
            assert (await api.get("/api/routes", token=token)).status == 401
            token = await _token(api, "viewer", "new secret phrase 9")
            # logout ends every token of the user, the one used and the others
            other = await _token(api, "viewer", "new secret phrase 9")
            reply = await api.post("/api/auth/logout", token=token)
            assert reply.status == 200, reply
            assert (await api.get("/api/routes", token=token)).status == 401
            assert (await api.get("/api/routes", token=other)).status == 401
            # delete
            token = await _token(api, "viewer", "new secret phrase 9")
            assert (await api.delete("/api/users/viewer")).status == 200
            reply = await api.get("/api/routes", token=token)
            assert reply.status == 401
            assert (await api.delete("/api/users/viewer")).status == 404

    run(scenario())


@contextlib.asynccontextmanager
async def second_admin_process(tmp_path) -> AsyncIterator[str]:
    """``python -m isekai.admin`` on the same SQLite file and secret: another process."""
    config = tmp_path / "second.yaml"
    config.write_text(
        "routes: []\n"
        f"store: {{url: 'sqlite:///{tmp_path}/admin.db'}}\n"
        f'admin: {{bind: "127.0.0.1:0", auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}}}\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "isekai.admin",
        "-c",
        str(config),
        "--bcrypt-rounds",
        str(ROUNDS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        found = re.search(rb"admin API on (http://\S+)", line)
        assert found is not None, line
        yield found.group(1).decode()
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


async def _status(base: str, path: str, token: str) -> int:
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.get(base + path, headers=headers) as response:
            return response.status


def test_revocation_reaches_a_second_admin_process_sharing_the_store(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api, second_admin_process(tmp_path) as other:
            token = await _token(api, "editor")
            assert await _status(other, "/api/routes", token) == 200
            assert (
                await api.put("/api/users/editor", {"password": "fresh secret words"})
            ).status == 200
            # the very next request on the other process is refused: the user is read from
            # the store on every request, so there is no propagation delay at all
            assert await _status(other, "/api/routes", token) == 401
            token = await _token(api, "editor", "fresh secret words")
            assert await _status(other, "/api/routes", token) == 200
            assert (await api.post("/api/auth/logout", token=token)).status == 200
            assert await _status(other, "/api/routes", token) == 401
            # login counts are shared too: failures on both processes add up
            async with aiohttp.ClientSession() as session:
                statuses = []
                for i in range(8):
                    base = other if i % 2 else api.base
                    body = json.dumps({"username": "viewer", "password": WRONG})
                    headers = {"Content-Type": "application/json"}
                    async with session.post(
                        base + "/api/auth/login", data=body, headers=headers
                    ) as response:
                        statuses.append(response.status)
            assert statuses == [401] * 5 + [429] * 3

    run(scenario())


# -- users and the last admin ------------------------------------------------------------------


def test_users_list_and_delete_and_rbac(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.get("/api/users")
            assert reply.status == 200
            assert [u["username"] for u in reply.data] == ["admin", "editor", "viewer"]
            assert "password" not in reply.raw.decode() and "$2" not in reply.raw.decode()
            for role in ("viewer", "editor"):
                other = api.as_role(role)
                assert (await other.get("/api/users")).status == 403
                assert (await other.delete("/api/users/viewer")).status == 403
                assert (await other.get("/api/audit")).status == 403
            assert (await api.as_role(None).get("/api/users")).status == 401
            assert (await api.delete("/api/users/ghost")).status == 404
            assert (await api.delete("/api/users/viewer")).status == 200
            assert [u["username"] for u in (await api.get("/api/users")).data] == [
                "admin",
                "editor",
            ]

    run(scenario())


def test_the_last_admin_cannot_be_demoted_or_deleted(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            reply = await api.put("/api/users/admin", {"role": "editor"})
            assert reply.status == 409 and reply.error["code"] == "last_admin"
            reply = await api.delete("/api/users/admin")
            assert reply.status == 409 and reply.error["code"] == "last_admin"
            assert (await api.ctx.store.get_user("admin"))["role"] == "admin"
            # with a second admin, either may go, but never both at once
            body = {"username": "root", "password": "tall oak long phrase", "role": "admin"}
            assert (await api.post("/api/users", body)).status == 201
            root = await _token(api, "root", "tall oak long phrase")
            admin_token = await _token(api, "admin")
            replies = await asyncio.gather(
                api.put("/api/users/admin", {"role": "viewer"}, token=root),
                api.put("/api/users/root", {"role": "viewer"}, token=admin_token),
            )
            assert sorted(r.status for r in replies)[0] == 200, replies
            assert all(r.status in (200, 401, 409) for r in replies), replies
            admins = [u for u in await api.ctx.store.list_users() if u["role"] == "admin"]
            assert len(admins) == 1

    run(scenario())


def test_logout_without_auth_is_409(tmp_path):
    yaml_text = """
    routes: []
    admin: {bind: "127.0.0.1:0", auth: {enabled: false}}
    """

    async def scenario():
        async with admin(tmp_path, yaml_text, role=None) as api:
            reply = await api.post("/api/auth/logout")
            assert reply.status == 409 and reply.error["code"] == "auth_disabled"

    run(scenario())


# -- API routes over file routes ---------------------------------------------------------------


SHADOWING = [
    {"name": "by-host", "match": {"path": "/file", "host": "api.example.com"}, "upstream": "users"},
    {
        "name": "by-wildcard-host",
        "match": {"path": "/ping", "host": "*.example.com"},
        "respond": {},
    },
]


@pytest.mark.parametrize("route", SHADOWING, ids=[r["name"] for r in SHADOWING])
def test_an_api_route_that_would_shadow_a_file_route_is_409(tmp_path, route):
    async def scenario():
        async with admin(tmp_path, role="editor") as api:
            reply = await api.post("/api/routes", route)
            assert reply.status == 409, reply
            assert reply.error["code"] == "shadows_file_route"
            expected = "file-route" if route["name"] == "by-host" else "ping"
            assert reply.error["route"] == expected
            assert repr(expected) in reply.body["message"]
            assert await api.ctx.store.list_items("route") == []
            # a less specific route takes nothing from them, and may replace into one: 409
            fine = {"name": "fine", "match": {"path": "/{any}"}, "upstream": "users"}
            assert (await api.post("/api/routes", fine)).status == 201
            reply = await api.put("/api/routes/fine", {**route, "name": "fine"})
            assert reply.status == 409 and reply.error["route"] == expected

    run(scenario())


def test_may_shadow_yaml_true_allows_it(tmp_path):
    yaml_text = BASE_YAML.replace(
        'admin:\n  bind: "127.0.0.1:0"',
        'admin:\n  bind: "127.0.0.1:0"\n  api_routes: {may_shadow_yaml: true}',
    )
    assert "may_shadow_yaml" in yaml_text

    async def scenario():
        async with admin(tmp_path, yaml_text, role="editor") as api:
            for route in SHADOWING:
                assert (await api.post("/api/routes", route)).status == 201

    run(scenario())


# -- audit -------------------------------------------------------------------------------------


def test_every_admin_write_is_audited_with_its_actor(tmp_path, caplog):
    caplog.set_level("INFO", logger="isekai.admin")

    async def scenario():
        async with admin(tmp_path) as api:
            editor = api.as_role("editor")
            assert (await editor.post("/api/routes", ROUTE)).status == 201
            changed = {**ROUTE, "match": {"path": "/api-route/v2"}}
            assert (await editor.put("/api/routes/api-route", changed)).status == 200
            patched = await editor.patch("/api/routes/api-route", {"timeout": "5s"})
            assert patched.status == 200
            assert (await editor.delete("/api/routes/api-route")).status == 200
            upstream = {"name": "orders", "targets": ["127.0.0.1:9002"]}
            assert (await editor.post("/api/upstreams", upstream)).status == 201
            assert (await editor.delete("/api/upstreams/orders")).status == 200
            policy = {"name": "tag", "type": "headers", "request": {"set": {"X-Api-Key": "k1"}}}
            assert (await editor.post("/api/policies", policy)).status == 201
            assert (await editor.delete("/api/policies/tag")).status == 200
            body = {"username": "carol", "password": "purple tulip garden", "role": "viewer"}
            assert (await api.post("/api/users", body)).status == 201
            assert (await api.put("/api/users/carol", {"role": "editor"})).status == 200
            token = await _token(api, "carol", "purple tulip garden")
            assert (await api.post("/api/auth/logout", token=token)).status == 200
            assert (await api.delete("/api/users/carol")).status == 200
            assert (await login(api, "carol", WRONG)).status == 401

            page = (await api.get("/api/audit?limit=1000")).data
            seen = [(r["actor"], r["action"], r["kind"], r["name"]) for r in page["items"]]
            assert seen[::-1] == [
                ("editor", "created", "route", "api-route"),
                ("editor", "replaced", "route", "api-route"),
                ("editor", "patched", "route", "api-route"),
                ("editor", "deleted", "route", "api-route"),
                ("editor", "created", "upstream", "orders"),
                ("editor", "deleted", "upstream", "orders"),
                ("editor", "created", "policy", "tag"),
                ("editor", "deleted", "policy", "tag"),
                ("admin", "created", "user", "carol"),
                ("admin", "replaced", "user", "carol"),
                (None, "login", "user", "carol"),
                ("carol", "logout", "user", "carol"),
                ("admin", "deleted", "user", "carol"),
                (None, "login_failed", "user", "carol"),
            ]
            records = {(r["action"], r["kind"]): r for r in page["items"]}
            replaced = records["replaced", "route"]
            assert replaced["before"]["match"] == {"path": "/api-route"}
            assert replaced["after"]["match"] == {"path": "/api-route/v2"}
            assert replaced["client_ip"] == "127.0.0.1" and replaced["request_id"]
            assert records["created", "policy"]["after"]["request"]["set"]["X-Api-Key"] == REDACTED
            user = records["replaced", "user"]
            assert user["before"] == {"username": "carol", "role": "viewer"}
            assert user["after"]["role"] == "editor"
            assert "$2" not in json.dumps(page) and "purple tulip" not in json.dumps(page)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", replaced["time"])

    run(scenario())
    assert "admin change by editor: route 'api-route' created" in caplog.text
    assert "admin change by admin: user 'carol' deleted" in caplog.text


def test_audit_filters_pages_and_bad_parameters(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            started = time.time()
            for i in range(4):
                route = {**ROUTE, "name": f"r{i}", "match": {"path": f"/r{i}"}}
                who = api if i % 2 else api.as_role("editor")
                assert (await who.post("/api/routes", route)).status == 201
            page = (await api.get("/api/audit?actor=editor&kind=route")).data
            assert [r["name"] for r in page["items"]] == ["r2", "r0"] and page["total"] == 2
            page = (await api.get("/api/audit?name=r3")).data
            assert [r["actor"] for r in page["items"]] == ["admin"]
            page = (await api.get("/api/audit?limit=2")).data
            assert [r["name"] for r in page["items"]] == ["r3", "r2"]
            assert page["next_offset"] == 2 and page["total"] == 4
            page = (await api.get("/api/audit?limit=2&offset=2")).data
            assert [r["name"] for r in page["items"]] == ["r1", "r0"]
            assert page["next_offset"] is None
            assert (await api.get(f"/api/audit?since={started - 60:.3f}")).data["total"] == 4
            assert (await api.get(f"/api/audit?since={time.time() + 60:.3f}")).data["total"] == 0
            for query in ("limit=0", "limit=x", "since=yesterday", "color=red", "kind="):
                reply = await api.get(f"/api/audit?{query}")
                assert reply.status == 400, (query, reply)
                assert reply.error["code"] == "bad_request"

    run(scenario())


def test_redact_hides_secret_named_values_at_any_depth():
    doc = {
        "type": "jwt",
        "keys": [{"secret": "s", "kid": "a"}, {"jwks_url": "https://x"}],
        "client_secret": "c",
        "headers": {"X-API-Key": "k", "X-Other": "o"},
        "password_hash": "$2b$",
        "hash_on": "client_ip",
        "nested": {"token": None, "api_key": "z"},
    }
    assert redact(doc) == {
        "type": "jwt",
        "keys": [{"secret": REDACTED, "kid": "a"}, {"jwks_url": "https://x"}],
        "client_secret": REDACTED,
        "headers": {"X-API-Key": REDACTED, "X-Other": "o"},
        "password_hash": REDACTED,
        "hash_on": "client_ip",
        "nested": {"token": None, "api_key": REDACTED},
    }
