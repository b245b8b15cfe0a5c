"""Helpers for the admin API tests: a real SQLite store in tmp_path and the app on a real socket.

Tests are plain functions that call ``run(scenario())``; inside, ``async with admin(...)``
starts the app on 127.0.0.1 (aiohttp TestServer, port 0) and yields an `Api` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from isekai.admin.app import create_app
from isekai.admin.auth import hash_password, issue_token
from isekai.admin.context import AdminContext, StatusProviders
from isekai.config.loader import load_config_text
from isekai.config.schema import Config
from isekai.store import open_store

ROUNDS = 4  # bcrypt cost in tests: fast
PASSWORD = "correct horse battery"
SECRET = "s" * 40

BASE_YAML = f"""
upstreams:
  users: {{targets: ["127.0.0.1:9001"]}}
routes:
  - name: file-route
    match: {{path: /file}}
    upstream: users
  - name: ping
    match: {{path: /ping}}
    respond: {{body: pong}}
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}
"""


class Api:
    """A small client: ``await api.get(path)`` -> `Reply` (status, body as JSON, headers)."""

    def __init__(self, session: aiohttp.ClientSession, base: str, ctx: AdminContext) -> None:
        self.session = session
        self.base = base
        self.ctx = ctx
        self.token: str | None = None
        self.applied: list[Config] = ctx.applied  # type: ignore[attr-defined]

    def token_for(self, role: str) -> str:
        return issue_token(self.ctx, role, role)[0]

    def as_role(self, role: str | None) -> Api:
        other = Api(self.session, self.base, self.ctx)
        other.token = None if role is None else self.token_for(role)
        return other

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        bearer = token if token is not None else self.token
        if bearer is not None and "Authorization" not in sent:
            sent["Authorization"] = f"Bearer {bearer}"
        if json_body is not None:
            data = json.dumps(json_body)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=sent
        ) as response:
            raw = await response.read()
            return Reply(response.status, raw, response.headers.copy())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("POST", path, json_body=body, **kw)

    async def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("PUT", path, json_body=body, **kw)

    async def patch(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return await self.request("PATCH", path, json_body=body, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.request("DELETE", path, **kw)


class Reply:
    def __init__(self, status: int, raw: bytes, headers: Any) -> None:
        self.status = status
        self.raw = raw
        self.headers = headers

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def data(self) -> Any:
        return self.body.get("data")

    @property
    def error(self) -> dict[str, Any]:
        return self.body.get("error") or {}

    def __repr__(self) -> str:
        return f"<Reply {self.status} {self.raw[:300]!r}>"


def make_config(yaml_text: str = BASE_YAML) -> tuple[Config, str]:
    text = textwrap.dedent(yaml_text)
    return load_config_text(text, "gw.yaml"), text


@contextlib.asynccontextmanager
async def admin(
    tmp_path: Any,
    yaml_text: str = BASE_YAML,
    *,
    role: str | None = "admin",
    status: StatusProviders | None = None,
    apply: Callable[[Config], Any] | None = None,
    store: Any = None,
) -> AsyncIterator[Api]:
    """The admin app on 127.0.0.1 with users admin, editor and viewer (password PASSWORD)."""
    config, text = make_config(yaml_text)
    own_store = store is None
    if own_store:
        store = open_store(f"sqlite:///{tmp_path}/admin.db")
        await store.open()
    applied: list[Config] = []

    async def record(new: Config, changes: Any = None) -> None:
        applied.append(new)
        if apply is not None:
            result = apply(new)
            if asyncio.iscoroutine(result):
                await result

    ctx = AdminContext(
        store=store,
        config=config,
        config_text=text,
        apply=record,
        status=status or StatusProviders(),
        bcrypt_rounds=ROUNDS,
    )
    ctx.applied = applied  # type: ignore[attr-defined]
    for name in ("admin", "editor", "viewer"):
        if await store.get_user(name) is None:
            await store.create_user(name, hash_password(PASSWORD, ROUNDS), name)
    await ctx.load()
    server = TestServer(create_app(ctx), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{server.port}", ctx)
            if role is not None:
                api.token = api.token_for(role)
            yield api
    finally:
        await server.close()
        if own_store:
            await store.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


ROUTE = {"name": "api-route", "match": {"path": "/api-route"}, "upstream": "users"}
UPSTREAM = {"name": "orders", "targets": ["127.0.0.1:9002"]}
