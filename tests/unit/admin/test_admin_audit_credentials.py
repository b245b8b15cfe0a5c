"""Every credential write through the admin API leaves an audit record naming its actor,
with no secret in it: API keys made and revoked, OAuth clients registered, their secrets
rotated and deleted, signing keys rotated."""

from __future__ import annotations

import json

from tests.unit.admin.admin_helpers import BASE_YAML, admin, run
from tests.unit.admin.oauth_helpers import oauth_yaml

PEPPER = "unit-admin-pepper-0123456789"
WITH_PEPPER = BASE_YAML + f'security: {{api_key_pepper: "{PEPPER}"}}\n'


async def _audit(api, kind: str) -> list[dict]:
    page = (await api.as_role("admin").get(f"/api/audit?kind={kind}&limit=100")).data
    return list(reversed(page["items"] if isinstance(page, dict) and "items" in page else page))


def test_api_key_writes_are_audited_without_the_key(tmp_path):
    async def scenario():
        async with admin(tmp_path, WITH_PEPPER, role="editor") as api:
            assert (await api.post("/api/consumers", {"name": "acme"})).status == 201
            made = await api.post("/api/consumers/acme/keys", {"id": "k1"})
            assert made.status == 201, made
            rotated = await api.post("/api/consumers/acme/keys", {"id": "k2", "rotate": "k1"})
            assert rotated.status == 201, rotated
            assert (await api.delete("/api/consumers/acme/keys/k1")).status == 200
            records = await _audit(api, "api_key")
            assert [(r["action"], r["name"], r["actor"]) for r in records] == [
                ("created", "acme/k1", "editor"),
                ("created", "acme/k2", "editor"),
                ("revoked", "acme/k1", "editor"),
            ]
            text = json.dumps(records)
            for secret in (made.data["key"], rotated.data["key"]):
                assert secret not in text
            stored = await api.ctx.store.get_item("consumer", "acme")
            for key in stored.doc["keys"]:
                assert key["hash"] not in text

    run(scenario())


def test_oauth_client_writes_are_audited_without_the_secret(tmp_path):
    async def scenario():
        async with admin(tmp_path, oauth_yaml(), role="editor") as api:
            made = await api.post("/api/oauth/clients", {"name": "svc", "scopes": ["read"]})
            assert made.status == 201, made
            cid = made.data["client_id"]
            again = await api.post(f"/api/oauth/clients/{cid}/secret", {})
            assert again.status == 200, again
            assert (await api.as_role("admin").post("/api/oauth/keys/rotate", {})).status == 201
            assert (await api.delete(f"/api/oauth/clients/{cid}")).status == 200
            clients = await _audit(api, "oauth_client")
            assert [(r["action"], r["name"], r["actor"]) for r in clients] == [
                ("created", cid, "editor"),
                ("secret_rotated", cid, "editor"),
                ("deleted", cid, "editor"),
            ]
            keys = await _audit(api, "oauth_key")
            assert [(r["action"], r["actor"]) for r in keys] == [("rotated", "admin")]
            text = json.dumps(clients + keys)
            for secret in (made.data["client_secret"], again.data["client_secret"]):
                assert secret not in text

    run(scenario())


def test_audit_log_line_of_a_failed_login_does_not_claim_auth_is_off(caplog):
    import logging

    from isekai.admin import audit
    from isekai.store.base import AuditRecord

    caplog.set_level(logging.INFO, logger="isekai.admin")
    audit.announce(AuditRecord(time=0.0, actor=None, action="login_failed", kind="user", name="x"))
    audit.announce(AuditRecord(time=0.0, actor=None, action="created", kind="route", name="r"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("admin change by an unauthenticated client: user 'x' login_failed")
    assert lines[1].startswith("admin change by anonymous (auth is off): route 'r' created")
