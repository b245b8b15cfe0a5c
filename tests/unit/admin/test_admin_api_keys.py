"""The API key endpoints on a real admin app and SQLite store: roles, the pepper rule, what
is stored and applied, rotation and revocation in the applied config, concurrent writers, and
usage summed from worker statistics."""

from __future__ import annotations

import asyncio
import json
import time

from isekai.admin.context import StatusProviders
from isekai.config.api_key_policy import key_hash
from isekai.observability.metrics import Gathered
from tests.unit.admin.admin_helpers import BASE_YAML, admin, run

PEPPER = "unit-admin-pepper-0123456789"
WITH_PEPPER = (
    BASE_YAML
    + f'security: {{api_key_pepper: "{PEPPER}"}}\n'
    + 'consumers:\n  - {name: filed, keys: [{id: f1, key: "file-key-0123456789abc"}]}\n'
)


async def _consumer(api, name: str = "acme") -> None:
    reply = await api.post("/api/consumers", {"name": name})
    assert reply.status == 201, reply


def _applied_keys(api, name: str = "acme") -> dict[str, object]:
    consumer = next(c for c in api.applied[-1].consumers if c.name == name)
    return {key.id: key for key in consumer.keys}


def test_admin_api_keys_made_stored_hashed_and_applied(tmp_path):
    async def scenario():
        async with admin(tmp_path, WITH_PEPPER, role="editor") as api:
            await _consumer(api)
            reply = await api.post("/api/consumers/acme/keys", {"id": "ci", "expires_in": "1d"})
            assert reply.status == 201, reply
            assert reply.headers["Cache-Control"] == "no-store"
            assert reply.headers["Location"] == "/api/consumers/acme/keys/ci"
            made = reply.data
            assert made["key"].startswith("isk_") and made["prefix"] == made["key"][:8]
            stored = await api.ctx.store.get_item("consumer", "acme")
            (entry,) = stored.doc["keys"]
            assert set(entry) == {"id", "hash", "prefix", "created_at", "expires_at"}
            assert entry["hash"] == key_hash(PEPPER, made["key"])
            assert made["key"] not in json.dumps(stored.doc)
            assert abs(entry["expires_at"] - time.time() - 86400) < 60
            applied = _applied_keys(api)
            assert applied["ci"].hash == entry["hash"] and applied["ci"].key is None

    run(scenario())


def test_admin_api_keys_roles(tmp_path):
    async def scenario():
        async with admin(tmp_path, WITH_PEPPER, role="editor") as api:
            await _consumer(api)
            viewer = api.as_role("viewer")
            assert (await viewer.get("/api/consumers/acme/keys")).status == 200
            assert (await viewer.post("/api/consumers/acme/keys", {})).status == 403
            assert (await viewer.delete("/api/consumers/acme/keys/x")).status == 403
            assert (await viewer.get("/api/consumers/acme/usage")).status == 200
            anonymous = api.as_role(None)
            assert (await anonymous.get("/api/consumers/acme/keys")).status == 401
            assert (await anonymous.post("/api/consumers/acme/keys", {})).status == 401

    run(scenario())


def test_admin_api_keys_need_a_pepper(tmp_path):
    async def scenario():
        async with admin(tmp_path, BASE_YAML, role="editor") as api:
            await _consumer(api)
            reply = await api.post("/api/consumers/acme/keys", {})
            assert reply.status == 409, reply
            assert reply.error["code"] == "no_pepper"
            assert "security.api_key_pepper is not set" in reply.body["message"]

    run(scenario())


def test_admin_api_keys_rotation_and_revocation_in_the_applied_config(tmp_path):
    async def scenario():
        async with admin(tmp_path, WITH_PEPPER, role="editor") as api:
            await _consumer(api)
            first = await api.post("/api/consumers/acme/keys", {"id": "a", "expires_in": 60})
            assert first.status == 201
            rotated = await api.post(
                "/api/consumers/acme/keys", {"id": "b", "rotate": "a", "grace": "10s"}
            )
            assert rotated.status == 201, rotated
            keys = _applied_keys(api)
            assert keys["a"].expires_at is not None
            assert abs(keys["a"].expires_at - time.time() - 10) < 5
            assert keys["b"].expires_at is None
            # a longer grace never extends the old key
            third = await api.post(
                "/api/consumers/acme/keys", {"id": "c", "rotate": "a", "grace": "1h"}
            )
            assert third.status == 201
            assert abs(_applied_keys(api)["a"].expires_at - keys["a"].expires_at) < 0.001
            revoked = await api.delete("/api/consumers/acme/keys/a")
            assert revoked.status == 200, revoked
            assert revoked.data["id"] == "a"
            assert set(_applied_keys(api)) == {"b", "c"}
            listed = await api.get("/api/consumers/acme/keys")
            assert [k["id"] for k in listed.data] == ["b", "c"]

    run(scenario())


def test_admin_api_keys_concurrent_writers_all_land(tmp_path):
    async def scenario():
        async with admin(tmp_path, WITH_PEPPER, role="editor") as api:
            await _consumer(api)
            replies = await asyncio.gather(
                *(api.post("/api/consumers/acme/keys", {"id": f"k{i}"}) for i in range(10))
            )
            assert [r.status for r in replies] == [201] * 10
            assert set(_applied_keys(api)) == {f"k{i}" for i in range(10)}

    run(scenario())


def test_admin_api_keys_usage_sums_the_workers(tmp_path):
    now = time.time()
    workers = [
        {"pid": 1, "extra": {"api_keys": {"usage": {"acme": {"a": [3, now - 10]}}}}},
        {"pid": 2, "extra": {"api_keys": {"usage": {"acme": {"a": [4, now - 5], "b": [1, now]}}}}},
        {"pid": 3, "extra": {}},
    ]

    async def gather() -> Gathered:
        return Gathered(workers=workers, expected=3)

    async def scenario():
        status = StatusProviders(gather=gather)
        async with admin(tmp_path, WITH_PEPPER, role="viewer", status=status) as api:
            editor = api.as_role("editor")
            await _consumer(editor)
            for key_id in ("a", "b", "unused"):
                assert (await editor.post("/api/consumers/acme/keys", {"id": key_id})).status == 201
            reply = await api.get("/api/consumers/acme/usage")
            assert reply.status == 200, reply
            usage = reply.data
            rows = {row["id"]: row for row in usage["keys"]}
            assert rows["a"]["requests"] == 7 and rows["b"]["requests"] == 1
            assert rows["unused"] == {"id": "unused", "requests": 0, "last_used_at": None}
            assert usage["requests"] == 8 and usage["workers_answered"] == 3
            assert usage["last_used_at"] == rows["b"]["last_used_at"]
            filed = await api.get("/api/consumers/filed/usage")
            assert filed.status == 200 and filed.data["keys"][0]["id"] == "f1"

    run(scenario())
