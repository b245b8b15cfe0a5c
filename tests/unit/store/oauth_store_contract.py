"""The OAuth2 part of the store contract, for every backend (``backend.url``: a fresh database).

Atomicity is tested with several ``Store`` instances on one database (as several gateways
would hold) and with separate processes: one signing key however many start at once, one
winner among concurrent consumers of a refresh token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import time

import pytest

from isekai.store import AlreadyExists, NotFound, VersionMismatch, open_store
from isekai.store.oauth import OAuthClient, RefreshToken, SigningKey
from tests.unit.store.store_contract import async_test


def client(client_id: str = "c1", **changes) -> OAuthClient:
    now = time.time()
    made = OAuthClient(
        client_id=client_id,
        name="billing",
        secret_hash="sha256$00$11",
        scopes=("read", "write"),
        grant_types=("client_credentials", "refresh_token"),
        consumer="acme",
        access_token_ttl=None,
        version=1,
        created_at=now,
        updated_at=now,
    )
    return dataclasses.replace(made, **changes)


def key(kid: str, algorithm: str = "ES256", created_at: float | None = None) -> SigningKey:
    return SigningKey(
        kid,
        algorithm,
        f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n",
        {"kty": "EC", "kid": kid, "alg": algorithm},
        time.time() if created_at is None else created_at,
    )


def refresh(token_hash: str, family: str = "f1", client_id: str = "c1", **changes) -> RefreshToken:
    now = time.time()
    made = RefreshToken(token_hash, family, client_id, "read write", now, now + 3600)
    return dataclasses.replace(made, **changes)


def _signing_kid_from_another_process(url: str, queue) -> None:
    # a gateway starting: open the store, ask for the signing key (made if there is none)
    async def main() -> str:
        from isekai.admin.oauth_keys import KeyRing

        async with open_store(url) as store:
            active = await KeyRing(store).active("ES256", None)
            return active.kid

    queue.put(asyncio.run(main()))


class OAuthStoreContract:
    """Shared OAuth store tests; subclasses supply the ``backend`` fixture."""

    @async_test
    async def test_clients_are_created_read_listed_rotated_and_deleted(self, backend):
        async with open_store(backend.url) as store:
            await store.create_oauth_client(client("c1"))
            await store.create_oauth_client(client("c2", consumer=None, access_token_ttl=60.0))
            with pytest.raises(AlreadyExists):
                await store.create_oauth_client(client("c1"))
            got = await store.get_oauth_client("c2")
            assert got.consumer is None and got.access_token_ttl == 60.0
            assert got.scopes == ("read", "write")
            assert [c.client_id for c in await store.list_oauth_clients()] == ["c1", "c2"]
            assert await store.get_oauth_client("nope") is None

            with pytest.raises(VersionMismatch):
                await store.set_oauth_client_secret("c1", "sha256$aa$bb", if_version=5)
            updated = await store.set_oauth_client_secret("c1", "sha256$aa$bb", if_version=1)
            assert updated.version == 2 and updated.secret_hash == "sha256$aa$bb"
            with pytest.raises(NotFound):
                await store.set_oauth_client_secret("nope", "x")

            await store.add_refresh_token(refresh("h1", client_id="c1"))
            with pytest.raises(VersionMismatch):
                await store.delete_oauth_client("c1", if_version=1)
            await store.delete_oauth_client("c1", if_version=2)
            assert await store.get_oauth_client("c1") is None
            assert await store.get_refresh_token("h1") is None  # went with its client
            with pytest.raises(NotFound):
                await store.delete_oauth_client("c1")

    @async_test
    async def test_signing_keys_are_ensured_once_and_rotated(self, backend):
        async with open_store(backend.url) as store:
            first = await store.ensure_signing_key(key("k1"))
            assert first.kid == "k1"
            again = await store.ensure_signing_key(key("k2"))
            assert again.kid == "k1"  # one exists: the candidate is dropped
            rsa = await store.ensure_signing_key(key("r1", "RS256"))
            assert rsa.kid == "r1"  # one per algorithm

            until = time.time() + 3600
            await store.rotate_signing_key(key("k3", created_at=time.time() + 1), until)
            keys = {k.kid: k for k in await store.list_signing_keys()}
            assert set(keys) == {"k1", "r1", "k3"}
            assert keys["k1"].retired_at is not None and keys["k1"].verify_until == until
            assert keys["k3"].retired_at is None and keys["r1"].retired_at is None
            assert (await store.ensure_signing_key(key("k4"))).kid == "k3"
            assert keys["k3"].public_jwk == {"kty": "EC", "kid": "k3", "alg": "ES256"}

            # a retired key past its publication is pruned; the others stay
            await store.rotate_signing_key(key("k5", created_at=time.time() + 2), time.time() - 1)
            await store.prune_oauth(time.time())
            assert {k.kid for k in await store.list_signing_keys()} == {"k1", "r1", "k5"}

    @async_test
    async def test_concurrent_stores_end_with_one_signing_key(self, backend):
        stores = [open_store(backend.url) for _ in range(4)]
        for store in stores:
            await store.open()
        try:
            results = await asyncio.gather(
                *(s.ensure_signing_key(key(f"k{i}")) for i, s in enumerate(stores))
            )
            assert len({r.kid for r in results}) == 1
            assert len(await stores[0].list_signing_keys()) == 1
        finally:
            for store in stores:
                await store.close()

    def test_processes_starting_together_end_with_one_signing_key(self, backend):
        async def migrate() -> None:
            async with open_store(backend.url):
                pass

        asyncio.run(migrate())
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        processes = [
            context.Process(target=_signing_kid_from_another_process, args=(backend.url, queue))
            for _ in range(3)
        ]
        for process in processes:
            process.start()
        kids = [queue.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=30)
            assert process.exitcode == 0
        assert len(set(kids)) == 1, kids

        async def stored() -> list[SigningKey]:
            async with open_store(backend.url) as store:
                return await store.list_signing_keys()

        keys = asyncio.run(stored())
        assert [k.kid for k in keys] == kids[:1]
        assert keys[0].public_jwk["kid"] == kids[0] and "d" not in keys[0].public_jwk

    @async_test
    async def test_consuming_a_refresh_token(self, backend):
        async with open_store(backend.url) as store:
            now = time.time()
            await store.add_refresh_token(refresh("h1"))
            await store.add_refresh_token(refresh("other-family", family="f2"))

            foreign = await store.consume_refresh_token("h1", "c2", refresh("x"), now)
            assert foreign.status == "unknown"
            assert (await store.get_refresh_token("h1")).consumed_at is None  # not burnt
            assert (await store.consume_refresh_token("nope", "c1", refresh("x"), now)).status == (
                "unknown"
            )

            ok = await store.consume_refresh_token("h1", "c1", refresh("h2", family="ignored"), now)
            assert ok.status == "ok" and ok.token.token_hash == "h1"
            h2 = await store.get_refresh_token("h2")
            assert h2.family == "f1" and h2.scope == "read write" and h2.consumed_at is None

            reused = await store.consume_refresh_token("h1", "c1", refresh("h3"), now)
            assert reused.status == "reused"
            assert (await store.get_refresh_token("h2")).revoked_at is not None
            assert await store.get_refresh_token("h3") is None
            assert (await store.get_refresh_token("other-family")).revoked_at is None
            revoked = await store.consume_refresh_token("h2", "c1", refresh("h4"), now)
            assert revoked.status == "revoked"

            await store.add_refresh_token(refresh("old", family="f3", expires_at=now - 1))
            expired = await store.consume_refresh_token("old", "c1", refresh("h5"), now)
            assert expired.status == "expired"

            assert await store.revoke_refresh_family("f2", now) == 1
            assert await store.revoke_refresh_family("f2", now) == 0

            assert await store.prune_oauth(now) >= 1  # the expired one
            assert await store.get_refresh_token("old") is None

    @async_test
    async def test_concurrent_consumers_of_one_refresh_token_have_one_winner(self, backend):
        stores = [open_store(backend.url) for _ in range(4)]
        for store in stores:
            await store.open()
        try:
            for round_ in range(3):
                given = f"t{round_}"
                await stores[0].add_refresh_token(refresh(given, family=f"f{round_}"))
                outcomes = await asyncio.gather(
                    *(
                        s.consume_refresh_token(given, "c1", refresh(f"{given}-{i}"), time.time())
                        for i, s in enumerate(stores)
                    )
                )
                statuses = sorted(o.status for o in outcomes)
                # the first loser finds it consumed (and revokes the family), later ones may
                # find it revoked already
                assert statuses[0] == "ok", statuses
                assert set(statuses[1:]) <= {"reused", "revoked"} and "reused" in statuses
                assert statuses.count("ok") == 1, statuses
        finally:
            for store in stores:
                await store.close()

    @async_test
    async def test_revoked_access_tokens(self, backend):
        async with open_store(backend.url) as store:
            now = time.time()
            assert not await store.is_access_token_revoked("j1")
            await store.revoke_access_token("j1", now + 60)
            await store.revoke_access_token("j1", now + 60)  # idempotent
            await store.revoke_access_token("j2", now - 1)
            assert await store.is_access_token_revoked("j1")
            await store.prune_oauth(now)
            assert await store.is_access_token_revoked("j1")
            assert not await store.is_access_token_revoked("j2")
