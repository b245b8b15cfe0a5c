"""The OAuth2 authorization server through real HTTP: grants, errors, revocation,
introspection, JWKS (tokens verified by PyJWT), key rotation and concurrent refreshes."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import time

import jwt
import pytest

from isekai.admin.oauth import token_hash
from tests.unit.admin.admin_helpers import admin, run
from tests.unit.admin.oauth_helpers import (
    basic,
    client_token,
    form,
    oauth_yaml,
    refresh,
    register,
    verify_with_jwks,
)


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_client_credentials_token_verifies_against_the_jwks(tmp_path, algorithm):
    async def scenario():
        async with admin(tmp_path, oauth_yaml(algorithm)) as api:
            client = await register(api, consumer="acme")
            reply = await client_token(api, client, scope="read")
            assert reply.status == 200, reply
            assert reply.headers["Cache-Control"] == "no-store"
            body = reply.body
            assert body["token_type"] == "Bearer"
            assert body["expires_in"] == 600
            assert body["scope"] == "read"
            assert "refresh_token" not in body  # the client has no refresh_token grant
            header = jwt.get_unverified_header(body["access_token"])
            assert header["alg"] == algorithm and header["typ"] == "at+jwt" and header["kid"]
            claims = await verify_with_jwks(api, body["access_token"])
            assert claims["sub"] == claims["client_id"] == client["client_id"]
            assert claims["iss"] == "http://127.0.0.1:9080"
            assert claims["aud"] == "isekai-api"
            assert claims["scope"] == "read"
            assert claims["consumer"] == "acme"
            assert claims["exp"] - claims["iat"] == 600
            assert len(claims["jti"]) == 32
            jwks = (await api.as_role(None).get("/oauth/jwks.json")).body
            for key in jwks["keys"]:  # public halves only
                assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)
                assert key["use"] == "sig" and key["alg"] == algorithm

    run(scenario())


def test_client_secret_post_and_default_scope(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api)
            reply = await form(
                api,
                "/oauth/token",
                {
                    "grant_type": "client_credentials",
                    "client_id": client["client_id"],
                    "client_secret": client["client_secret"],
                },
            )
            assert reply.status == 200, reply
            assert reply.body["scope"] == "read write"  # every registered scope

    run(scenario())


def test_token_endpoint_refusals(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api)
            cid = client["client_id"]

            wrong = await form(
                api, "/oauth/token", {"grant_type": "client_credentials"}, basic(cid, "nope")
            )
            assert wrong.status == 401 and wrong.body["error"] == "invalid_client"
            assert wrong.headers["WWW-Authenticate"].startswith('Basic realm="isekai-oauth"')
            assert wrong.headers["Cache-Control"] == "no-store"

            unknown = await form(
                api,
                "/oauth/token",
                {"grant_type": "client_credentials"},
                basic("nosuchclient", client["client_secret"]),
            )
            assert unknown.status == 401 and unknown.body["error"] == "invalid_client"

            anonymous = await form(api, "/oauth/token", {"grant_type": "client_credentials"})
            assert anonymous.status == 401 and anonymous.body["error"] == "invalid_client"

            beyond = await client_token(api, client, scope="read admin")
            assert beyond.status == 400 and beyond.body["error"] == "invalid_scope"
            assert "admin" in beyond.body["error_description"]

            malformed = await client_token(api, client, scope='read "x"')
            assert malformed.status == 400 and malformed.body["error"] == "invalid_scope"

            grant = await form(
                api, "/oauth/token", {"grant_type": "password"}, basic(cid, client["client_secret"])
            )
            assert grant.status == 400 and grant.body["error"] == "unsupported_grant_type"

            not_allowed = await refresh(api, client, "whatever")
            assert not_allowed.status == 400
            assert not_allowed.body["error"] == "unauthorized_client"

            missing = await form(api, "/oauth/token", {}, basic(cid, client["client_secret"]))
            assert missing.status == 400 and missing.body["error"] == "invalid_request"

            both = await form(
                api,
                "/oauth/token",
                {"grant_type": "client_credentials", "client_secret": client["client_secret"]},
                basic(cid, client["client_secret"]),
            )
            assert both.status == 400 and both.body["error"] == "invalid_request"

            json_body = await api.as_role(None).post(
                "/oauth/token", {"grant_type": "client_credentials"}
            )
            assert json_body.status == 400 and json_body.body["error"] == "invalid_request"

            repeated = await api.as_role(None).request(
                "POST",
                "/oauth/token",
                data="grant_type=client_credentials&grant_type=refresh_token",
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    **basic(cid, client["client_secret"]),
                },
            )
            assert repeated.status == 400 and repeated.body["error"] == "invalid_request"

            for raw in (b"\xff\xfe=\x00", b"a=1&" * 40, b"%zz=%", os.urandom(64)):
                odd = await api.as_role(None).request(
                    "POST",
                    "/oauth/token",
                    data=raw,
                    headers={
                        "Content-Type": "application/x-www-form-urlencoded",
                        **basic(cid, client["client_secret"]),
                    },
                )
                assert odd.status in (400, 401), (raw, odd)
                assert odd.body["error"] in ("invalid_request", "unsupported_grant_type")

            for garbage in ("Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(), "x"):
                bad = await form(
                    api,
                    "/oauth/token",
                    {"grant_type": "client_credentials"},
                    {"Authorization": garbage},
                )
                assert bad.status == 401 and bad.body["error"] == "invalid_client", garbage

    run(scenario())


def test_refresh_rotates_and_reuse_revokes_the_family(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api, grant_types=["client_credentials", "refresh_token"])
            first = await client_token(api, client)
            assert first.status == 200, first
            r1 = first.body["refresh_token"]

            second = await refresh(api, client, r1, scope="read")
            assert second.status == 200, second
            assert second.body["scope"] == "read"
            r2 = second.body["refresh_token"]
            assert r2 != r1
            claims = await verify_with_jwks(api, second.body["access_token"])
            assert claims["scope"] == "read"

            # narrowing an access token does not narrow the grant
            third = await refresh(api, client, r2)
            assert third.status == 200 and third.body["scope"] == "read write"
            r3 = third.body["refresh_token"]

            wider = await refresh(api, client, r3, scope="admin")
            assert wider.status == 400 and wider.body["error"] == "invalid_scope"
            # a refused scope did not consume the token
            still = await refresh(api, client, r3)
            assert still.status == 200, still
            r4 = still.body["refresh_token"]

            reused = await refresh(api, client, r1)
            assert reused.status == 400 and reused.body["error"] == "invalid_grant"
            assert "used already" in reused.body["error_description"]
            # the family is revoked: the newest token of the grant is dead too
            after = await refresh(api, client, r4)
            assert after.status == 400 and after.body["error"] == "invalid_grant"
            assert "revoked" in after.body["error_description"]

            unknown = await refresh(api, client, "not-a-token")
            assert unknown.status == 400 and unknown.body["error"] == "invalid_grant"
            missing = await form(
                api,
                "/oauth/token",
                {"grant_type": "refresh_token"},
                basic(client["client_id"], client["client_secret"]),
            )
            assert missing.status == 400 and missing.body["error"] == "invalid_request"

            # another client cannot use (nor burn) this client's refresh token
            other = await register(api, grant_types=["client_credentials", "refresh_token"])
            fresh = (await client_token(api, client)).body["refresh_token"]
            stolen = await refresh(api, other, fresh)
            assert stolen.status == 400 and stolen.body["error"] == "invalid_grant"
            assert (await refresh(api, client, fresh)).status == 200

    run(scenario())


def test_expired_refresh_token_is_refused(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api, grant_types=["client_credentials", "refresh_token"])
            reply = await client_token(api, client)
            given = reply.body["refresh_token"]
            store = api.ctx.store
            stored = await store.get_refresh_token(token_hash(given))
            # a refresh token of this client whose lifetime has run out
            aged = dataclasses.replace(
                stored, token_hash=token_hash("aged-token"), expires_at=time.time() - 1
            )
            await store.add_refresh_token(aged)
            expired = await refresh(api, client, "aged-token")
            assert expired.status == 400 and expired.body["error"] == "invalid_grant"
            assert "expired" in expired.body["error_description"]

    run(scenario())


def test_concurrent_refreshes_of_one_token_have_exactly_one_winner(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api, grant_types=["client_credentials", "refresh_token"])
            for _ in range(3):
                given = (await client_token(api, client)).body["refresh_token"]
                replies = await asyncio.gather(*(refresh(api, client, given) for _ in range(8)))
                statuses = sorted(r.status for r in replies)
                assert statuses == [200] + [400] * 7, replies
                assert all(r.body["error"] == "invalid_grant" for r in replies if r.status == 400)

    run(scenario())


def test_revocation_and_introspection(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(
                api, grant_types=["client_credentials", "refresh_token"], consumer="acme"
            )
            auth = basic(client["client_id"], client["client_secret"])
            issued = (await client_token(api, client, scope="write")).body
            access, refresh_token = issued["access_token"], issued["refresh_token"]

            seen = await form(api, "/oauth/introspect", {"token": access}, auth)
            assert seen.status == 200, seen
            body = seen.body
            assert body["active"] is True and body["token_type"] == "Bearer"
            assert body["client_id"] == body["sub"] == client["client_id"]
            assert body["scope"] == "write" and body["aud"] == "isekai-api"
            assert body["iss"] == "http://127.0.0.1:9080" and body["consumer"] == "acme"
            assert body["exp"] > body["iat"]

            # a resource server (another client) may introspect access tokens
            rs = await register(api, name="resource-server")
            rs_auth = basic(rs["client_id"], rs["client_secret"])
            by_rs = await form(api, "/oauth/introspect", {"token": access}, rs_auth)
            assert by_rs.body["active"] is True
            # but not another client's refresh tokens
            rt_by_rs = await form(
                api,
                "/oauth/introspect",
                {"token": refresh_token},
                rs_auth,
            )
            assert rt_by_rs.body == {"active": False}

            rt = await form(api, "/oauth/introspect", {"token": refresh_token}, auth)
            assert rt.body["active"] is True and rt.body["token_type"] == "refresh_token"

            for garbage in ("x", "a.b.c", "e30.e30.e30", "." * 3, "ä" * 50, "x" * 9000):
                none = await form(api, "/oauth/introspect", {"token": garbage}, auth)
                assert none.status == 200 and none.body == {"active": False}, garbage

            no_auth = await form(api, "/oauth/introspect", {"token": access})
            assert no_auth.status == 401 and no_auth.body["error"] == "invalid_client"

            # someone else's revocation is accepted (200) and does nothing
            other = await form(api, "/oauth/revoke", {"token": access}, rs_auth)
            assert other.status == 200
            assert (await form(api, "/oauth/introspect", {"token": access}, auth)).body["active"]

            revoked = await form(
                api, "/oauth/revoke", {"token": access, "token_type_hint": "access_token"}, auth
            )
            assert revoked.status == 200
            gone = await form(api, "/oauth/introspect", {"token": access}, auth)
            assert gone.body == {"active": False}
            # the JWT itself still verifies: a policy that only checks signatures accepts it
            # until it expires (short access tokens; use introspection for revocation)
            await verify_with_jwks(api, access)

            unknown = await form(api, "/oauth/revoke", {"token": "never-issued"}, auth)
            assert unknown.status == 200

            rt_revoked = await form(api, "/oauth/revoke", {"token": refresh_token}, auth)
            assert rt_revoked.status == 200
            dead = await refresh(api, client, refresh_token)
            assert dead.status == 400 and dead.body["error"] == "invalid_grant"
            assert (await form(api, "/oauth/introspect", {"token": refresh_token}, auth)).body == {
                "active": False
            }

            missing = await form(api, "/oauth/revoke", {}, auth)
            assert missing.status == 400 and missing.body["error"] == "invalid_request"

            # a deleted client's tokens are no longer active
            token2 = (await client_token(api, client)).body["access_token"]
            assert (await api.delete(f"/api/oauth/clients/{client['client_id']}")).status == 200
            after = await form(
                api,
                "/oauth/introspect",
                {"token": token2},
                rs_auth,
            )
            assert after.body == {"active": False}

    run(scenario())


def test_key_rotation_keeps_old_tokens_verifiable(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api)
            old = (await client_token(api, client)).body["access_token"]
            old_kid = jwt.get_unverified_header(old)["kid"]

            viewer = await api.as_role("viewer").post("/api/oauth/keys/rotate")
            assert viewer.status == 403
            editor = await api.as_role("editor").post("/api/oauth/keys/rotate")
            assert editor.status == 403
            rotated = await api.post("/api/oauth/keys/rotate")
            assert rotated.status == 201, rotated
            new_kid = rotated.data["kid"]
            assert new_kid != old_kid and rotated.data["state"] == "active"

            new = (await client_token(api, client)).body["access_token"]
            assert jwt.get_unverified_header(new)["kid"] == new_kid
            await verify_with_jwks(api, new)
            await verify_with_jwks(api, old)  # the retired key is still published
            auth = basic(client["client_id"], client["client_secret"])
            assert (await form(api, "/oauth/introspect", {"token": old}, auth)).body["active"]

            keys = (await api.as_role("viewer").get("/api/oauth/keys")).data
            states = {k["kid"]: k for k in keys}
            assert states[old_kid]["state"] == "retired"
            assert states[old_kid]["published_until"] is not None
            assert states[new_kid]["state"] == "active"
            jwks = (await api.as_role(None).get("/oauth/jwks.json")).body
            assert [k["kid"] for k in jwks["keys"]] == [new_kid, old_kid]

    run(scenario())


def test_metadata_documents(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            anonymous = api.as_role(None)
            for path in (
                "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration",
            ):
                reply = await anonymous.get(path)
                assert reply.status == 200, reply
                body = reply.body
                base = "http://127.0.0.1:9080"
                assert body["issuer"] == base
                assert body["jwks_uri"] == f"{base}/oauth/jwks.json"
                assert body["token_endpoint"] == f"{base}/oauth/token"
                assert body["revocation_endpoint"] == f"{base}/oauth/revoke"
                assert body["introspection_endpoint"] == f"{base}/oauth/introspect"
                assert body["grant_types_supported"] == ["client_credentials", "refresh_token"]
                assert "client_secret_basic" in body["token_endpoint_auth_methods_supported"]

    run(scenario())


def test_default_issuer_is_the_admin_listener(tmp_path):
    yaml_text = oauth_yaml().replace('    issuer: "http://127.0.0.1:9080"\n', "")

    async def scenario():
        async with admin(tmp_path, yaml_text) as api:
            body = (await api.as_role(None).get("/.well-known/oauth-authorization-server")).body
            assert body["issuer"] == api.base  # the bound port, since admin.bind has port 0
            client = await register(api)
            token = (await client_token(api, client)).body["access_token"]
            assert jwt.decode(token, options={"verify_signature": False})["iss"] == api.base

    run(scenario())


def test_everything_is_404_while_the_server_is_off(tmp_path):
    async def scenario():
        async with admin(tmp_path) as api:
            for method, path in (
                ("POST", "/oauth/token"),
                ("POST", "/oauth/revoke"),
                ("POST", "/oauth/introspect"),
                ("GET", "/oauth/jwks.json"),
                ("GET", "/.well-known/oauth-authorization-server"),
                ("GET", "/api/oauth/clients"),
                ("POST", "/api/oauth/keys/rotate"),
            ):
                reply = await api.request(method, path)
                assert reply.status == 404, (path, reply)
                assert "admin.oauth.enabled" in reply.body["message"]

    run(scenario())


def test_two_gateways_on_one_database_share_keys_clients_and_refresh_tokens(tmp_path):
    """Two admin apps, each with its own store connection to one SQLite file."""

    async def scenario():
        from isekai.store import open_store

        url = f"sqlite:///{tmp_path}/shared.db"
        async with open_store(url) as store_a, open_store(url) as store_b:
            async with (
                admin(tmp_path, oauth_yaml("ES256"), store=store_a) as a,
                admin(tmp_path, oauth_yaml("ES256"), store=store_b) as b,
            ):
                jwks_a, jwks_b = await asyncio.gather(
                    a.as_role(None).get("/oauth/jwks.json"), b.as_role(None).get("/oauth/jwks.json")
                )
                assert jwks_a.body == jwks_b.body and len(jwks_a.body["keys"]) == 1

                client = await register(a, grant_types=["client_credentials", "refresh_token"])
                issued = await client_token(b, client)  # registered at a, served by b
                assert issued.status == 200, issued
                await verify_with_jwks(a, issued.body["access_token"])

                given = issued.body["refresh_token"]
                replies = await asyncio.gather(
                    *(refresh(gateway, client, given) for gateway in (a, b, a, b))
                )
                assert sorted(r.status for r in replies) == [200, 400, 400, 400], replies

    run(scenario())


def test_introspection_never_fails_on_garbage(tmp_path):
    import random

    alphabet = "abcXYZ019-_.=+/~ \t{}\"'%\\" + "é€\u2028"

    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api)
            auth = basic(client["client_id"], client["client_secret"])
            real = (await client_token(api, client)).body["access_token"]
            rng = random.Random(20261130)
            samples = [
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 200))) for _ in range(60)
            ]
            head, payload, signature = real.split(".")
            samples += [
                f"{head}.{payload}.{signature[::-1]}",
                f"{head}.{payload}.",
                f"{head}..{signature}",
                f"e30.{payload}.{signature}",
                "eyJhbGciOiJub25lIn0." + payload + ".",
                base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"x"}').decode() + f".{payload}.x",
            ]
            for sample in samples:
                for path in ("/oauth/introspect", "/oauth/revoke"):
                    reply = await form(api, path, {"token": sample}, auth)
                    assert reply.status in (200, 400), (path, sample, reply)
                    if path == "/oauth/introspect" and reply.status == 200:
                        assert reply.body == {"active": False}, sample
            assert (await form(api, "/oauth/introspect", {"token": real}, auth)).body["active"]

    run(scenario())


def test_key_passphrase_encrypts_the_stored_key(tmp_path):
    passphrase = "p" * 24
    with_passphrase = oauth_yaml("ES256") + f'    key_passphrase: "{passphrase}"\n'
    wrong_passphrase = oauth_yaml("ES256") + f'    key_passphrase: "{"q" * 24}"\n'

    async def scenario():
        from isekai.store import open_store

        url = f"sqlite:///{tmp_path}/shared.db"
        async with open_store(url) as store:
            async with admin(tmp_path, with_passphrase, store=store) as api:
                client = await register(api)
                issued = await client_token(api, client)
                assert issued.status == 200, issued
                await verify_with_jwks(api, issued.body["access_token"])
            (stored,) = await store.list_signing_keys()
            assert stored.private_key.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")

            for yaml_text in (wrong_passphrase, oauth_yaml("ES256")):
                async with admin(tmp_path, yaml_text, store=store) as other:
                    refused = await client_token(other, client)
                    assert refused.status == 503, refused
                    assert refused.body["error"] == "temporarily_unavailable"
                    assert passphrase not in refused.raw.decode()
                    jwks = await other.as_role(None).get("/oauth/jwks.json")
                    assert jwks.status == 200 and jwks.body["keys"][0]["kid"] == stored.kid

    run(scenario())
