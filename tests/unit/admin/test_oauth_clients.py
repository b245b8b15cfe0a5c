"""Client registration through the admin API: RBAC, validation, ETag/If-Match, secrets shown
once and stored hashed, secret rotation."""

from __future__ import annotations

import pytest

from isekai.admin.oauth import token_hash, verify_secret
from isekai.config.loader import load_config_text
from isekai.errors import ConfigError
from tests.unit.admin.admin_helpers import admin, run
from tests.unit.admin.oauth_helpers import client_token, oauth_yaml, register


def test_registration_needs_editor_and_reading_needs_viewer(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            body = {"name": "svc", "scopes": ["read"]}
            assert (await api.as_role(None).post("/api/oauth/clients", body)).status == 401
            assert (await api.as_role("viewer").post("/api/oauth/clients", body)).status == 403
            made = await api.as_role("editor").post("/api/oauth/clients", body)
            assert made.status == 201, made
            cid = made.data["client_id"]
            assert made.headers["ETag"] == '"1"'
            assert made.headers["Location"] == f"/api/oauth/clients/{cid}"
            assert made.headers["Cache-Control"] == "no-store"
            secret = made.data["client_secret"]
            assert len(secret) >= 43

            listed = await api.as_role("viewer").get("/api/oauth/clients")
            assert listed.status == 200
            assert [c["client_id"] for c in listed.data] == [cid]
            assert "client_secret" not in listed.data[0]
            one = await api.as_role("viewer").get(f"/api/oauth/clients/{cid}")
            assert one.status == 200 and one.headers["ETag"] == '"1"'
            assert "client_secret" not in one.data
            assert one.data["grant_types"] == ["client_credentials"]

            # only the hash is stored
            stored = await api.ctx.store.get_oauth_client(cid)
            assert secret not in stored.secret_hash
            assert stored.secret_hash.startswith("sha256$")
            assert verify_secret(secret, stored.secret_hash)

            assert (await api.as_role("viewer").delete(f"/api/oauth/clients/{cid}")).status == 403
            assert (await api.as_role(None).get("/api/oauth/clients")).status == 401
            gone = await api.as_role("editor").delete(f"/api/oauth/clients/{cid}")
            assert gone.status == 200
            assert (await api.get(f"/api/oauth/clients/{cid}")).status == 404
            assert (await api.delete(f"/api/oauth/clients/{cid}")).status == 404

    run(scenario())


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({}, "body.name"),
        ({"name": ""}, "body.name"),
        ({"name": "a\nb"}, "body.name"),
        ({"name": "x", "scopes": ["a b"]}, "body.scopes[0]"),
        ({"name": "x", "scopes": ['quote"d']}, "body.scopes[0]"),
        ({"name": "x", "scopes": ["a", "a"]}, "body.scopes"),
        ({"name": "x", "grant_types": ["password"]}, "body.grant_types[0]"),
        ({"name": "x", "grant_types": []}, "body.grant_types"),
        ({"name": "x", "consumer": "bad name!"}, "body.consumer"),
        ({"name": "x", "access_token_ttl": 0}, "body.access_token_ttl"),
        ({"name": "x", "access_token_ttl": "2d"}, "body.access_token_ttl"),
        ({"name": "x", "access_token_ttl": "soon"}, "body.access_token_ttl"),
        ({"name": "x", "secret": "mine"}, "body.secret"),
    ],
)
def test_registration_refuses_bad_bodies(tmp_path, body, path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            reply = await api.post("/api/oauth/clients", body)
            assert reply.status == 422, reply
            assert reply.error["path"] == path, reply
            assert await api.ctx.store.list_oauth_clients() == []

    run(scenario())


def test_client_ttl_and_secret_rotation(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api, access_token_ttl="90s")
            assert client["access_token_ttl"] == 90
            reply = await client_token(api, client)
            assert reply.status == 200 and reply.body["expires_in"] == 90

            cid = client["client_id"]
            stale = await api.post(
                f"/api/oauth/clients/{cid}/secret", None, headers={"If-Match": '"7"'}
            )
            assert stale.status == 412 and stale.headers["ETag"] == '"1"'
            bad = await api.post(
                f"/api/oauth/clients/{cid}/secret", None, headers={"If-Match": "x"}
            )
            assert bad.status == 400 and "If-Match must be" in bad.body["message"]
            viewer = await api.as_role("viewer").post(f"/api/oauth/clients/{cid}/secret")
            assert viewer.status == 403
            rotated = await api.post(
                f"/api/oauth/clients/{cid}/secret", None, headers={"If-Match": '"1"'}
            )
            assert rotated.status == 200, rotated
            assert rotated.headers["ETag"] == '"2"'
            new_secret = rotated.data["client_secret"]
            assert new_secret != client["client_secret"]

            old = await client_token(api, client)
            assert old.status == 401 and old.body["error"] == "invalid_client"
            new = await client_token(api, {**client, "client_secret": new_secret})
            assert new.status == 200

            missing = await api.post("/api/oauth/clients/nosuch/secret")
            assert missing.status == 404
            mismatch = await api.delete(f"/api/oauth/clients/{cid}", headers={"If-Match": '"1"'})
            assert mismatch.status == 412
            assert (
                await api.delete(f"/api/oauth/clients/{cid}", headers={"If-Match": '"2"'})
            ).status == 200

    run(scenario())


def test_deleting_a_client_ends_its_refresh_tokens(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml()) as api:
            client = await register(api, grant_types=["client_credentials", "refresh_token"])
            issued = (await client_token(api, client)).body
            assert "refresh_token" in issued
            await api.delete(f"/api/oauth/clients/{client['client_id']}")
            assert (
                await api.ctx.store.get_refresh_token(token_hash(issued["refresh_token"])) is None
            )

    run(scenario())


@pytest.mark.parametrize(
    ("oauth", "message"),
    [
        ("issuer: ftp://x", "admin.oauth.issuer: expected an http:// or https:// URL"),
        ("issuer: http://x/?a=1", "admin.oauth.issuer: expected an http:// or https:// URL"),
        ("access_token_ttl: 2d", "admin.oauth.access_token_ttl: must be at most 1d"),
        ("refresh_token_ttl: 400d", "admin.oauth.refresh_token_ttl: must be at most 365d"),
        ("signing_algorithm: HS256", "admin.oauth.signing_algorithm: algorithm 'HS256'"),
        ('audience: "two words"', "admin.oauth.audience: expected 1-512 visible ASCII"),
        ("key_passphrase: short", "admin.oauth.key_passphrase: must be at least 16"),
        ("enabled: maybe", "admin.oauth.enabled"),
        ("issuer_url: http://x", "admin.oauth.issuer_url: unknown key 'issuer_url'"),
    ],
)
def test_config_errors_name_file_line_and_path(oauth, message):
    text = f"admin:\n  bind: 127.0.0.1:0\n  oauth:\n    {oauth}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, "gw.yaml")
    shown = str(caught.value)
    assert shown.startswith("gw.yaml:4: "), shown
    assert message in shown, shown


def test_config_defaults():
    config = load_config_text("admin:\n  oauth: {enabled: true, signing_algorithm: es256}\n", "g")
    oauth = config.admin.oauth
    assert oauth.enabled and oauth.issuer is None and oauth.audience is None
    assert oauth.access_token_ttl == 3600 and oauth.refresh_token_ttl == 30 * 86400
    assert oauth.signing_algorithm == "ES256"
    assert load_config_text("{}", "g").admin.oauth.enabled is False
