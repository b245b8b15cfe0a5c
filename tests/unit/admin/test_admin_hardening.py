"""What reaches the admin API from an attacker: every bad input is a JSON 4xx before the store,
nothing about the store leaks, and the loopback rule holds however the API is started."""

from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator

import aiohttp
import pytest

from isekai.admin.app import AdminServer
from isekai.admin.auth import hash_password, issue_token
from isekai.admin.context import AdminContext
from isekai.errors import ConfigError
from isekai.store import open_store
from tests.unit.admin.admin_helpers import PASSWORD, ROUNDS, make_config, run


@contextlib.asynccontextmanager
async def served(tmp_path) -> AsyncIterator[tuple[str, AdminContext]]:
    """The admin API as `AdminServer` starts it (its own parser limits), on a SQLite store."""
    config, text = make_config()
    store = open_store(f"sqlite:///{tmp_path}/hardening.db")
    await store.open()

    async def apply(new, changes):
        return None

    ctx = AdminContext(
        store=store, config=config, config_text=text, apply=apply, bcrypt_rounds=ROUNDS
    )
    await store.create_user("admin", hash_password(PASSWORD, ROUNDS), "admin")
    await ctx.load()
    server = AdminServer(ctx, "127.0.0.1", 0)
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}", ctx
    finally:
        await server.stop()
        await store.close()


async def call(base, method, path, *, body=None, data=None, headers=None, token=None):
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body)
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    async with aiohttp.ClientSession() as session:
        async with session.request(method, base + path, data=data, headers=sent) as response:
            raw = await response.read()
            return response.status, response.headers.get("Content-Type", ""), raw


def envelope(status, content_type, raw) -> dict:
    assert content_type.startswith("application/json"), (status, raw[:200])
    body = json.loads(raw)
    assert body["success"] is False
    return body


def test_admin_hardening_huge_authorization_header_gets_the_json_envelope(tmp_path):
    async def scenario():
        async with served(tmp_path) as (base, _):
            reply = await call(
                base, "GET", "/api/routes", headers={"Authorization": "Bearer " + "x" * 100_000}
            )
            assert reply[0] == 431
            assert envelope(*reply)["error"]["code"] == "header_too_large"

    run(scenario())


@pytest.mark.parametrize("path", ["/api/routes/a%0Ab", "/api/routes/a%00b", "/api/routes/%1b[31m"])
def test_admin_hardening_control_characters_in_the_path_are_400(tmp_path, path, caplog):
    async def scenario():
        async with served(tmp_path) as (base, ctx):
            token = issue_token(ctx, "admin", "admin")[0]
            for method in ("GET", "DELETE"):
                reply = await call(base, method, path, token=token)
                assert reply[0] == 400
                assert "control characters" in envelope(*reply)["message"]

    with caplog.at_level(logging.INFO):
        run(scenario())
    assert not [r for r in caplog.records if "\n" in r.getMessage() or "\x00" in r.getMessage()]


@pytest.mark.parametrize("username", ["a\u0000b", "admin\nINFO forged", "\x1b[2J"])
def test_admin_hardening_login_with_control_characters_is_400_before_the_store(tmp_path, username):
    async def scenario():
        async with served(tmp_path) as (base, ctx):
            await ctx.store.close()  # any store access would now be a 503
            reply = await call(
                base, "POST", "/api/auth/login", body={"username": username, "password": "x" * 9}
            )
            await ctx.store.open()
            assert reply[0] == 400, reply
            assert str(tmp_path) not in reply[2].decode()

    run(scenario())


@pytest.mark.parametrize(
    "path, body",
    [
        ("/api/routes", '{"name": "big", "match": {"path": "/big"}, "respond": {"json": 1e400}}'),
        ("/api/upstreams", '{"name": "u", "targets": ["127.0.0.1:1"], "read_timeout": 1e400}'),
        ("/api/routes", '{"name": "n\\u0000", "match": {"path": "/n"}, "respond": {}}'),
    ],
)
def test_admin_hardening_out_of_range_numbers_and_nul_are_400(tmp_path, path, body):
    async def scenario():
        async with served(tmp_path) as (base, ctx):
            token = issue_token(ctx, "admin", "admin")[0]
            reply = await call(base, "POST", path, data=body, token=token)
            assert reply[0] == 400, reply
            assert envelope(*reply)["error"]["code"] == "bad_request"
            assert await ctx.store.list_items("route") == []

    run(scenario())


def test_admin_hardening_auth_off_refused_on_a_public_host_however_started(tmp_path):
    config, text = make_config('admin: {bind: "127.0.0.1:0", auth: {enabled: false}}\nroutes: []\n')
    ctx = AdminContext(store=None, config=config, config_text=text, apply=None)
    for host in ("0.0.0.0", "", "::", "192.0.2.1"):
        with pytest.raises(ConfigError, match="loopback"):
            AdminServer(ctx, host, 0)
    AdminServer(ctx, "127.0.0.1", 0)  # loopback: allowed

    path = tmp_path / "gw.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            admin: {{bind: "127.0.0.1:0", auth: {{enabled: false}}}}
            store: {{url: "sqlite:///{tmp_path}/a.db"}}
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "isekai.admin", "-c", str(path), "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "loopback" in result.stderr
    assert "admin API on" not in result.stdout


@pytest.mark.parametrize(
    "path, body, secret",
    [
        ("/api/users", {"username": "eve", "password": "S" * 1_000_000, "role": "viewer"}, "S"),
        ("/api/users", {"username": "eve", "password": "short", "role": "viewer"}, "short"),
        ("/api/auth/login", {"username": "admin", "password": "P" * 5000}, "P"),
    ],
)
def test_admin_hardening_refused_passwords_are_never_echoed(tmp_path, path, body, secret):
    async def scenario():
        async with served(tmp_path) as (base, ctx):
            token = issue_token(ctx, "admin", "admin")[0]
            status, _, raw = await call(base, "POST", path, body=body, token=token)
            assert status == 422, raw[:300]
            text = raw.decode()
            assert len(text) < 2000
            assert secret * 5 not in text and f"'{secret}'" not in text
            assert "password" in json.loads(text)["error"]["path"]

    run(scenario())


def test_admin_hardening_long_values_are_shown_as_a_short_preview(tmp_path):
    async def scenario():
        async with served(tmp_path) as (base, ctx):
            token = issue_token(ctx, "admin", "admin")[0]
            body = {"name": "x", "match": {"path": "/x y" + "a" * 50_000}, "respond": {}}
            status, _, raw = await call(base, "POST", "/api/routes", body=body, token=token)
            assert status == 422
            assert len(raw) < 2000

    run(scenario())
