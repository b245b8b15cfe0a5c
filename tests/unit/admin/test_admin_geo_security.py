"""geo_filter and security_headers made through the admin API: the document is checked as a
file's would be (a geo database path must be absolute there: no config file to be relative
to), and the applied config strips the country header from client requests."""

from __future__ import annotations

from admin_helpers import SECRET, admin, run

from isekai.gateway import stripped_headers
from tests.support.mmdb_writer import country_database

POLICY_YAML = f"""
upstreams:
  users: {{targets: ["127.0.0.1:9001"]}}
listeners: [{{name: public, bind: "127.0.0.1:0"}}]
routes:
  - {{name: file-route, match: {{path: /file}}, upstream: users}}
admin:
  bind: "127.0.0.1:0"
  auth: {{jwt_secret: "{SECRET}", jwt_expiry: 1h}}
"""


def test_admin_geo_filter_needs_an_absolute_database_path(tmp_path):
    database = country_database(tmp_path / "c.mmdb", {"203.0.113.0/24": "XX"})

    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            body = {"name": "no_xx", "type": "geo_filter", "database": "c.mmdb", "deny": ["xx"]}
            reply = await api.post("/api/policies", body)
            assert reply.status == 422, reply
            assert reply.error["path"] == "policy.database"
            assert "must be an absolute path" in reply.body["message"]
            reply = await api.post("/api/policies", {**body, "database": str(tmp_path / "no")})
            assert reply.status == 422 and reply.error["path"] == "policy.database"
            assert "cannot open the GeoIP database" in reply.body["message"]
            reply = await api.post(
                "/api/policies", {**body, "database": str(database), "header": "X-Geo"}
            )
            assert reply.status == 201, reply
            options = api.applied[-1].policies["no_xx"].options
            assert options.deny == ("XX",) and options.database_path == str(database)
            assert b"x-geo" in stripped_headers(api.applied[-1])

    run(scenario())


def test_admin_security_headers_values_are_checked(tmp_path):
    async def scenario():
        async with admin(tmp_path, POLICY_YAML) as api:
            body = {
                "name": "harden",
                "type": "security_headers",
                "csp": "default-src 'none'\r\nX: 1",
            }
            reply = await api.post("/api/policies", body)
            assert reply.status == 422, reply
            assert reply.error["path"] == "policy.csp"
            body["csp"] = "default-src 'self'"
            body["referrer_policy"] = ["no-referrer", "same-origin"]
            reply = await api.post("/api/policies", body)
            assert reply.status == 201, reply
            fields = dict(api.applied[-1].policies["harden"].options.fields)
            assert fields["Content-Security-Policy"] == "default-src 'self'"
            assert fields["Referrer-Policy"] == "no-referrer, same-origin"

    run(scenario())
