"""A policy's secrets (an hmac or jwt ``secret``, an introspection ``client_secret``) never
appear in admin GET answers, whether the policy is in the file or made through the API; an
``${VAR}`` reference is shown as written, since it is no secret."""

from __future__ import annotations

import json

from tests.unit.admin.admin_helpers import BASE_YAML, admin, run

FILE_SECRET = "file-literal-secret-0123456789-abcdef"
API_SECRET = "api-literal-secret-0123456789"
CLIENT_SECRET = "introspection-client-secret-42"
YAML = (
    BASE_YAML
    + f"""policies:
  signed_file: {{type: hmac, secret: "{FILE_SECRET}"}}
  signed_env: {{type: hmac, secret: "${{REVIEW_HMAC_SECRET}}"}}
  jwt_file: {{type: jwt, keys: [{{secret: "{FILE_SECRET}", algorithms: [HS256], kid: a}}]}}
"""
)


def test_policy_secrets_are_not_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("REVIEW_HMAC_SECRET", "env-secret-value-0123456789")

    async def scenario():
        async with admin(tmp_path, YAML, role="editor") as api:
            made = await api.post(
                "/api/policies", {"name": "signed_api", "type": "hmac", "secret": API_SECRET}
            )
            assert made.status == 201, made
            intro = {
                "name": "intro",
                "type": "oauth2_introspection",
                "introspection_url": "https://auth.example.com/introspect",
                "client_id": "gw",
                "client_secret": CLIENT_SECRET,
            }
            made = await api.post("/api/policies", intro)
            assert made.status == 201, made
            viewer = api.as_role("viewer")
            shown = []
            for path in (
                "/api/policies",
                "/api/policies/signed_file",
                "/api/policies/signed_api",
                "/api/policies/intro",
                "/api/policies/jwt_file",
                "/api/policies/signed_env",
            ):
                reply = await viewer.get(path)
                assert reply.status == 200, reply
                shown.append(reply.data)
            text = json.dumps(shown)
            for secret in (FILE_SECRET, API_SECRET, CLIENT_SECRET, "env-secret-value"):
                assert secret not in text
            assert shown[1]["spec"]["secret"] == "[redacted]"
            assert shown[3]["spec"]["client_secret"] == "[redacted]"
            assert shown[3]["spec"]["client_id"] == "gw"
            assert shown[4]["spec"]["keys"][0]["secret"] == "[redacted]"
            assert shown[4]["spec"]["keys"][0]["kid"] == "a"
            assert shown[5]["spec"]["secret"] == "${REVIEW_HMAC_SECRET}"
            # a PATCH that leaves the secret alone keeps it
            patched = await api.patch("/api/policies/signed_api", {"skew": "1m"})
            assert patched.status == 200, patched
            stored = await api.ctx.store.get_item("policy", "signed_api")
            assert stored.doc["secret"] == API_SECRET

    run(scenario())


def test_a_view_put_back_keeps_the_secret(tmp_path):
    async def scenario():
        async with admin(tmp_path, BASE_YAML, role="editor") as api:
            body = {"name": "signed", "type": "hmac", "secret": API_SECRET}
            assert (await api.post("/api/policies", body)).status == 201
            view = (await api.get("/api/policies/signed")).data["spec"]
            assert view["secret"] == "[redacted]"
            reply = await api.put("/api/policies/signed", {**view, "skew": "2m"})
            assert reply.status == 200, reply
            stored = await api.ctx.store.get_item("policy", "signed")
            assert stored.doc["secret"] == API_SECRET and stored.doc["skew"] == "2m"

    run(scenario())
