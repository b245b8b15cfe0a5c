"""Consumers through the admin API: sources, validation, ETags, roles, read-only keys, and the
running config (load, other writers' changes, the whole-config message for workers)."""

from __future__ import annotations

import pytest
from admin_helpers import SECRET, admin, run

from isekai.config.consumers import Consumer, ConsumerKey
from isekai.config.reload import config_from_message
from isekai.control import change_message

HASH = "0f" * 32
CONSUMER_YAML = f"""
consumers:
  - {{name: acme, tier: premium, tags: [partner],
     keys: [{{id: k1, key: "acme-secret-key-0123456789", prefix: acme-sec}}]}}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
routes:
  - {{name: hello, match: {{path: /hello}}, respond: {{status: 200, body: hi}}}}
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}
"""
GLOBEX = {"name": "globex", "tier": "free", "tags": ["trial"]}
STORED_KEY = {
    "id": "k9",
    "hash": HASH,
    "prefix": "isk_0f0f",
    "created_at": 1700000000.0,
    "expires_at": None,
}
SHOWN_KEY = {"id": "k9", "prefix": "isk_0f0f", "created_at": 1700000000.0, "expires_at": None}


def test_consumers_crud_with_etags(tmp_path):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            reply = await api.post("/api/consumers", GLOBEX)
            assert reply.status == 201, reply
            assert reply.headers["ETag"] == '"1"'
            assert reply.headers["Location"] == "/api/consumers/globex"
            assert reply.data["spec"] == GLOBEX and reply.data["source"] == "api"
            assert (await api.ctx.store.get_item("consumer", "globex")).doc == GLOBEX
            consumers = api.applied[-1].consumers
            assert [c.name for c in consumers] == ["acme", "globex"]
            assert consumers[1] == Consumer("globex", "free", ("trial",))
            listed = {item["name"]: item for item in (await api.get("/api/consumers")).data}
            assert listed["acme"]["source"] == "file" and listed["acme"]["version"] is None
            assert listed["globex"]["version"] == 1
            reply = await api.get("/api/consumers/globex")
            assert reply.status == 200 and reply.headers["ETag"] == '"1"'
            assert (await api.get("/api/consumers/nope")).status == 404
            reply = await api.post("/api/consumers", GLOBEX)
            assert reply.status == 409 and reply.error["code"] == "already_exists"

            changed = {"tier": "premium"}
            reply = await api.put("/api/consumers/globex", changed, headers={"If-Match": '"1"'})
            assert reply.status == 200 and reply.headers["ETag"] == '"2"'
            assert reply.data["spec"] == {"name": "globex", "tier": "premium"}
            assert api.applied[-1].consumers[1] == Consumer("globex", "premium")
            reply = await api.put("/api/consumers/globex", GLOBEX, headers={"If-Match": '"1"'})
            assert reply.status == 412 and reply.error["current_version"] == 2
            assert reply.headers["ETag"] == '"2"'
            reply = await api.patch("/api/consumers/globex", {"tags": ["b2b"], "tier": None})
            assert reply.status == 200 and reply.headers["ETag"] == '"3"'
            assert reply.data["spec"] == {"name": "globex", "tags": ["b2b"]}
            reply = await api.delete("/api/consumers/globex", headers={"If-Match": '"2"'})
            assert reply.status == 412
            # nothing in the config names a consumer: a delete is always allowed
            reply = await api.delete("/api/consumers/globex", headers={"If-Match": '"3"'})
            assert reply.status == 200
            assert reply.body == {"success": True, "message": "consumer 'globex' deleted"}
            assert [c.name for c in api.applied[-1].consumers] == ["acme"]
            assert (await api.delete("/api/consumers/globex")).status == 404

    run(scenario())


def test_consumers_file_consumer_is_read_only_and_its_key_is_not_shown(tmp_path):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            reply = await api.get("/api/consumers/acme")
            assert reply.status == 200 and "ETag" not in reply.headers
            assert reply.data["spec"] == {
                "name": "acme",
                "tier": "premium",
                "tags": ["partner"],
                "keys": [
                    {"id": "k1", "prefix": "acme-sec", "created_at": None, "expires_at": None}
                ],
            }
            assert "acme-secret-key" not in reply.raw.decode()
            for method in ("PUT", "PATCH", "DELETE"):
                reply = await api.request(method, "/api/consumers/acme", json_body={"tier": "x"})
                assert reply.status == 409, (method, reply)
                assert reply.error["code"] == "read_only"
            reply = await api.post("/api/consumers", {"name": "acme"})
            assert reply.status == 409 and reply.error["source"] == "file"

    run(scenario())


@pytest.mark.parametrize(
    ("body", "path", "says"),
    [
        ({"name": "bad name"}, "consumer.name", "name"),
        ({"name": "-x"}, "consumer.name", "name"),
        ({"name": "ok", "tier": "pre mium"}, "consumer.tier", "tier"),
        ({"name": "ok", "tier": 5}, "consumer.tier", ""),
        ({"name": "ok", "tags": ["a", "a"]}, "consumer.tags[1]", "twice"),
        ({"name": "ok", "tags": ["good", "no good"]}, "consumer.tags[1]", ""),
        ({"name": "ok", "tags": "partner"}, "consumer.tags", ""),
        ({"name": "ok", "colour": "red"}, "consumer.colour", "unknown key"),
        ({"tier": "free"}, "consumer.name", "name"),
    ],
)
def test_consumers_bad_documents_are_refused_with_their_path(tmp_path, body, path, says):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            reply = await api.post("/api/consumers", body)
            assert reply.status == 422, reply
            assert reply.error["path"] == path, reply.error
            assert says in reply.body["message"]
            assert await api.ctx.store.list_items("consumer") == []

    run(scenario())


def test_consumers_keys_are_read_only_through_the_api(tmp_path):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            keys = [{"id": "mine", "key": "a-key-i-chose-myself-1234"}]
            reply = await api.post("/api/consumers", {**GLOBEX, "keys": keys})
            assert reply.status == 422 and reply.error["path"] == "consumer.keys"
            assert "/api/consumers/{name}/keys" in reply.body["message"]
            assert "a-key-i-chose" not in reply.raw.decode()
            assert await api.ctx.store.get_item("consumer", "globex") is None
            # keys made elsewhere (the keys endpoints) are kept by a replace, and never shown
            await api.ctx.store.create_item("consumer", "globex", {**GLOBEX, "keys": [STORED_KEY]})
            async with api.ctx.lock, api.ctx.store.exclusive():
                await api.ctx.catch_up()
            reply = await api.get("/api/consumers/globex")
            assert reply.data["spec"]["keys"] == [SHOWN_KEY]
            assert HASH not in reply.raw.decode()
            listed = (await api.get("/api/consumers")).raw.decode()
            assert HASH not in listed and "acme-secret-key" not in listed
            for method in ("PUT", "PATCH"):
                reply = await api.request(
                    method, "/api/consumers/globex", json_body={"keys": [SHOWN_KEY]}
                )
                assert reply.status == 422 and reply.error["path"] == "consumer.keys"
            reply = await api.put("/api/consumers/globex", {"tier": "premium"})
            assert reply.status == 200 and reply.data["spec"]["keys"] == [SHOWN_KEY]
            stored = await api.ctx.store.get_item("consumer", "globex")
            assert stored.doc == {"name": "globex", "tier": "premium", "keys": [STORED_KEY]}
            reply = await api.patch("/api/consumers/globex", {"tags": ["x"]})
            assert reply.status == 200 and HASH not in reply.raw.decode()
            stored = await api.ctx.store.get_item("consumer", "globex")
            assert stored.doc["keys"] == [STORED_KEY] and stored.doc["tags"] == ["x"]
            consumer = api.applied[-1].consumers[-1]
            assert consumer.keys == (ConsumerKey("k9", None, HASH, "isk_0f0f", 1700000000.0),)

    run(scenario())


def test_consumers_roles(tmp_path):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            assert (await api.post("/api/consumers", GLOBEX)).status == 201
            viewer = api.as_role("viewer")
            assert (await viewer.get("/api/consumers")).status == 200
            assert (await viewer.get("/api/consumers/globex")).status == 200
            assert (await viewer.post("/api/consumers", {"name": "x"})).status == 403
            assert (await viewer.put("/api/consumers/globex", {"tier": "a"})).status == 403
            assert (await viewer.patch("/api/consumers/globex", {"tier": "a"})).status == 403
            assert (await viewer.delete("/api/consumers/globex")).status == 403
            editor = api.as_role("editor")
            assert (await editor.put("/api/consumers/globex", {"tier": "a"})).status == 200
            assert (await editor.delete("/api/consumers/globex")).status == 200
            assert (await api.as_role(None).get("/api/consumers")).status == 401

    run(scenario())


def test_consumers_stored_ones_are_loaded_and_bad_ones_left_out(tmp_path):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            store = api.ctx.store
            await store.create_item("consumer", "good", {"name": "good", "tier": "gold"})
            await store.create_item("consumer", "bad", {"name": "bad", "tier": "not ok"})
            # another gateway's file may lack `acme`: ours has it, ours wins
            await store.create_item("consumer", "acme", {"name": "acme", "tier": "free"})
            config = await api.ctx.load()
            assert [c.name for c in config.consumers] == ["acme", "good"]
            assert config.consumers[0].tier == "premium"
            skipped = {(item.kind, item.name): item.reason for item in api.ctx.skipped}
            assert set(skipped) == {("consumer", "bad"), ("consumer", "acme")}
            assert "consumers[" in skipped["consumer", "bad"]
            assert "read-only" in skipped["consumer", "acme"]
            # what a worker starting afresh gets: the stored consumers that validate
            docs = await api.ctx.stored_consumers()
            assert docs == [{"name": "good", "tier": "gold"}]
            message = change_message(api.ctx.config_text, "gw.yaml", [], {}, {}, docs)
            rebuilt = config_from_message(message)
            assert [c.name for c in rebuilt.consumers] == ["acme", "good"]

    run(scenario())


def test_consumers_other_writers_changes_are_applied(tmp_path):
    async def scenario():
        async with admin(tmp_path, CONSUMER_YAML) as api:
            store, ctx = api.ctx.store, api.ctx
            await store.create_item("consumer", "c1", {"name": "c1"})
            await store.create_item("consumer", "c2", {"name": "c2", "tags": ["t"]})
            async with ctx.lock, store.exclusive():
                changes = await ctx.catch_up()
            assert sorted((c.kind, c.name) for c in changes) == [
                ("consumer", "c1"),
                ("consumer", "c2"),
            ]
            assert [c.name for c in ctx.current.consumers] == ["acme", "c1", "c2"]
            assert api.applied[-1].consumers == ctx.current.consumers
            await store.replace_item("consumer", "c1", {"name": "c1", "tier": "gold"})
            await store.delete_item("consumer", "c2")
            async with ctx.lock, store.exclusive():
                changes = await ctx.catch_up()
            assert sorted((c.name, c.item is None) for c in changes) == [
                ("c1", False),
                ("c2", True),
            ]
            assert [(c.name, c.tier) for c in ctx.current.consumers] == [
                ("acme", "premium"),
                ("c1", "gold"),
            ]

    run(scenario())
