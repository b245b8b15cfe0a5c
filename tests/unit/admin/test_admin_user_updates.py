"""A user update changes only what its request names: a role change never writes back a
password read before another admin (maybe on another gateway) reset it, and a password
change never writes back a role read before a demotion."""

from __future__ import annotations

from isekai.admin.auth import hash_password, verify_password
from isekai.store.sqlite import SQLiteStore
from tests.unit.admin.admin_helpers import PASSWORD, ROUNDS, admin, run

NEW_PASSWORD = "a brand new long passphrase"


class InterleavedStore(SQLiteStore):
    """A real SQLite store that runs ``meanwhile`` (another writer's change) right after the
    next read of user bob, as a concurrent writer on another gateway could."""

    meanwhile = None

    async def get_user(self, username):
        user = await super().get_user(username)
        if username != "bob":
            return user
        change, self.meanwhile = self.meanwhile, None
        if change is not None:
            await change()
        return user


def test_a_role_change_keeps_a_password_reset_made_meanwhile(tmp_path):
    async def scenario():
        store = InterleavedStore(str(tmp_path / "admin.db"))
        await store.open()
        try:
            async with admin(tmp_path, store=store) as api:
                await store.create_user("bob", hash_password(PASSWORD, ROUNDS), "editor")
                reset = hash_password(NEW_PASSWORD, ROUNDS)

                async def password_reset():
                    await store.set_user("bob", reset, "editor")

                store.meanwhile = password_reset
                reply = await api.put("/api/users/bob", {"role": "viewer"})
                assert reply.status == 200, reply
                bob = await store.get_user("bob")
                assert bob["role"] == "viewer"
                assert verify_password(NEW_PASSWORD, bob["password_hash"])
                assert not verify_password(PASSWORD, bob["password_hash"])
        finally:
            await store.close()

    run(scenario())


def test_a_password_change_keeps_a_demotion_made_meanwhile(tmp_path):
    async def scenario():
        store = InterleavedStore(str(tmp_path / "admin.db"))
        await store.open()
        try:
            async with admin(tmp_path, store=store) as api:
                old_hash = hash_password(PASSWORD, ROUNDS)
                await store.create_user("bob", old_hash, "admin")

                async def demotion():
                    await store.set_user("bob", old_hash, "viewer")

                store.meanwhile = demotion
                reply = await api.put("/api/users/bob", {"password": NEW_PASSWORD})
                assert reply.status == 200, reply
                bob = await store.get_user("bob")
                assert bob["role"] == "viewer"
                assert verify_password(NEW_PASSWORD, bob["password_hash"])
        finally:
            await store.close()

    run(scenario())
