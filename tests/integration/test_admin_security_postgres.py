"""Admin hardening on PostgreSQL: two admin APIs on one database (as two gateways would be)
share token revocation, login counts and the last-admin rule. The server comes from
``require_service("postgres")``; each test works in its own schema, dropped afterwards."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from isekai.store import open_store
from tests.unit.admin.admin_helpers import PASSWORD, admin, run


@pytest.fixture
def pg_url(require_service):
    dsn = require_service("postgres")
    schema = f"isekai_test_{uuid.uuid4().hex[:12]}"
    yield f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def test_two_admin_apis_on_one_postgres_share_revocation_limits_and_the_last_admin(
    tmp_path, pg_url
):
    async def scenario():
        async with open_store(pg_url) as one_store, open_store(pg_url) as two_store:
            async with (
                admin(tmp_path / "one", store=one_store) as one,
                admin(tmp_path / "two", store=two_store) as two,
            ):
                body = {"username": "editor", "password": PASSWORD}
                reply = await one.post("/api/auth/login", body)
                assert reply.status == 200, reply
                token = reply.data["token"]
                assert (await two.get("/api/routes", token=token)).status == 200
                reply = await one.put("/api/users/editor", {"password": "brand new phrase"})
                assert reply.status == 200
                reply = await two.get("/api/routes", token=token)
                assert reply.status == 401 and "revoked" in reply.body["message"]
                # five failures spread over both gateways lock the username on both
                wrong = {"username": "viewer", "password": "not the password"}
                statuses = [
                    (await (one, two)[i % 2].post("/api/auth/login", wrong)).status
                    for i in range(7)
                ]
                assert statuses == [401] * 5 + [429] * 2
                # the last admin, demoted from both sides at once
                reply = await one.post(
                    "/api/users",
                    {"username": "root", "password": "tall oak long phrase", "role": "admin"},
                )
                assert reply.status == 201
                replies = await asyncio.gather(
                    one.put("/api/users/admin", {"role": "viewer"}, token=one.token_for("root")),
                    two.delete("/api/users/root"),
                )
                assert all(r.status in (200, 401, 409) for r in replies), replies
                admins = [u for u in await one_store.list_users() if u["role"] == "admin"]
                assert len(admins) == 1
                # read by the admin that is left (the other one was demoted or deleted)
                survivor = two.token_for(admins[0]["username"])
                reply = await two.get("/api/audit?kind=user&limit=1000", token=survivor)
                assert reply.status == 200, reply
                audit = reply.data["items"]
                assert {"created", "replaced"} <= {r["action"] for r in audit}

    run(scenario())
